"""JSON lines sink: one event per line, to a file (opened for appending) or to stdout (`-`).

Each batch is written with one write and flushed. fsync policy (`fsync` key): "batch" (the
default for files) fsyncs after every batch, before the runner advances the cursor, so an event
in the cursor's past is on disk even after a power failure; "never" leaves it to the OS (faster;
a power failure can lose the last few seconds of lines, which are then not re-sent). stdout is
never fsynced. A failed write is cut back to the last whole line before retrying, so a retry
never leaves a torn line behind.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from carecard.host.storage import LogEntry
from carecard.host.events import event_json
from carecard.host.sinks.base import ConfigError, Sink, SinkError, SinkTable


class JsonLinesSink(Sink):
    type_name = "jsonl"

    def __init__(self, name: str, path: str, *, fsync: str = "batch"):
        super().__init__(name)
        self.path = path
        self.fsync = fsync
        self._file: IO[bytes] | None = None

    @classmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "JsonLinesSink":
        path = table.str("path", "-")
        assert path is not None
        if not path:
            raise ConfigError(table.where, "path", "empty: give a file path or - for stdout")
        fsync = table.str("fsync", "batch", choices=("batch", "never"))
        return cls(name, path, fsync=fsync or "batch")

    def _open(self) -> None:
        if self._file is not None:
            return
        if self.path == "-":
            self._file = sys.stdout.buffer
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(target, "ab")

    def _write(self, data: bytes) -> None:
        self._open()
        out = self._file
        assert out is not None
        if out is sys.stdout.buffer:
            out.write(data)
            out.flush()
            return
        start = out.tell()
        try:
            out.write(data)
            out.flush()
            if self.fsync == "batch":
                os.fsync(out.fileno())
        except OSError:
            try:  # drop the partial batch; the whole batch is retried
                out.truncate(start)
            except OSError:
                pass
            self._close_file()
            raise

    def _close_file(self) -> None:
        out, self._file = self._file, None
        if out is not None and out is not sys.stdout.buffer:
            try:
                out.close()
            except OSError:
                pass

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        await self._deliver("".join(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
                                    for event in events).encode("utf-8"))

    async def deliver_entries(self, entries: list[LogEntry]) -> None:
        """The log's own JSON text of each event (the same compact form), not encoded again."""
        await self._deliver("".join((entry.body or event_json(entry.event)) + "\n"
                                    for entry in entries).encode("utf-8"))

    async def _deliver(self, data: bytes) -> None:
        try:
            await self.run_io(self._write, data)
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    async def close(self) -> None:
        await self.run_io(self._close_file)
        self.release_io()
