"""The sinks in a child process of the receiver (the default; `[receive] sinks = "thread"` keeps
them in the receiver's own process).

Why: the sinks' work per event (reading the log, JSON, their own SQLite or network I/O) is Python
that would otherwise hold the ingest's interpreter lock. In a child process a slow, busy or
crashing sink can never take CPU from ingest, and the two use two cores. Nothing is lost by the
split: the event log in DATA/carecard.sqlite is the hand-over (carecard.host.storage.sqlite), the child
runs carecard.host.sinks.SinkSet unchanged on it, and the sinks' cursors live in that database.

Parent <-> child protocol, one line each way per message (the child's stdin and stdout):

    parent -> child   {"data_dir": ..., "sinks": [...] | null, "log_format": ..., "log_level": ...,
                       "log_file": ... | null, "store": "sqlite" or a PostgreSQL URL}
                      n SEQ            events up to SEQ are committed (SinkSet.notify)
                      i SEQ            the same, and the ingest has nothing more collecting
                                       (SinkSet.notify(idle=True): lingering batches go now)
                      stop SECONDS     drain for at most SECONDS, stop, exit 0
    child -> parent   ready NAMES_JSON | error MESSAGE
                      s STATS_JSON     SinkSet.stats() plus "at" (Unix time) and "prunable"
                                       (SinkSet.prunable_seq()), on every change of a cursor
                                       (checked every few ms) and at least every second
                      stopped

Started and supervised as every child of the receiver (childproc): it stops by itself, draining,
when its stdin closes (the parent died), with one log line; if it dies, the parent logs it and
starts another one after a second: sinks resume from their cursors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

from carecard.host.receiver.childproc import ChildProcess, ChildProcessError, ParentPipe, child_main, parent_lines

log = logging.getLogger("carecard.receiver.sinks")

STATS_POLL_S = 0.002
STATS_HEARTBEAT_S = 1.0


class SinkProcessError(ChildProcessError):
    """The sink process could not start (bad sink configuration, ...); one line."""


class SinkProcess(ChildProcess):
    """The parent's handle on the sink process (a supervised childproc.ChildProcess); the same
    surface the receiver uses of SinkSet: start(), notify(seq), stop(drain_timeout), stats(), names."""

    what = "sink process"
    module = "carecard.host.receiver.sinkproc"

    def __init__(self, sinks_config: list[dict[str, Any]] | None, data_dir: Path, *,
                 log_format: str = "text", log_level: str = "info", log_file: Path | None = None,
                 store: str = "sqlite"):
        super().__init__({"data_dir": str(data_dir), "sinks": sinks_config, "log_format": log_format,
                          "log_level": log_level, "log_file": str(log_file) if log_file else None,
                          "store": store})
        self.names: list[str] = []
        self._stats: dict[str, dict[str, Any]] = {}
        self._prunable = 0
        self._pending: int | None = None
        self._pending_idle = False
        self._flush_scheduled = False
        self.on_stats: Callable[[dict[str, dict[str, Any]], float], None] | None = None

    async def start(self) -> None:
        try:
            await super().start()
        except ChildProcessError as exc:
            raise SinkProcessError(str(exc)) from None

    def _on_ready(self, payload: str) -> None:
        self.names = json.loads(payload)

    def _on_spawned(self) -> None:
        if self._pending is not None:
            self._schedule_flush()

    def on_line(self, line: bytes) -> None:
        if line.startswith(b"s "):
            try:
                stats = json.loads(line[2:])
            except ValueError:
                return
            at = stats.pop("at", time.time())
            prunable = stats.pop("prunable", 0)
            if isinstance(prunable, int) and prunable > self._prunable:
                self._prunable = prunable
            self._stats = stats
            if self.on_stats is not None:
                self.on_stats(stats, at)

    def notify(self, last_seq: int | None = None, *, idle: bool = False) -> None:
        """Events up to `last_seq` are committed (`idle`: and nothing more is collecting). Never
        blocks (a pipe write, coalesced: the last call says whether the ingest is idle)."""
        if last_seq is not None:
            self._pending = max(self._pending or 0, last_seq)
        elif self._pending is None:
            self._pending = 0
        self._pending_idle = idle
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_notify)

    def _flush_notify(self) -> None:
        self._flush_scheduled = False
        if self._pending is not None:
            self.send(f"{'i' if self._pending_idle else 'n'} {self._pending}\n")

    def prunable_seq(self) -> int:
        """What every sink has delivered and persisted, as the sink process last reported it
        (SinkSet.prunable_seq; 0 before its first report). Persisted cursors never go back, so a
        value reported by an earlier sink process stays safe."""
        return self._prunable

    def stats(self) -> dict[str, dict[str, Any]]:
        if not self.up:
            return {name: dict(self._stats.get(name, {}), state="process down") for name in self.names}
        return self._stats


# --- the child -----------------------------------------------------------------------------------

async def _child(config: dict[str, Any]) -> int:
    from carecard.host.storage import event_log_for
    from carecard.host.receiver.runtime import tune_gc
    from carecard.host.sinks import ConfigError, SinkSet

    out = ParentPipe(sys.stdout)
    data_dir = Path(config["data_dir"])
    try:
        eventlog = event_log_for(config.get("store", "sqlite"), data_dir)
        sinks = SinkSet.from_config(config.get("sinks"), data_dir, eventlog, config.get("store", "sqlite"))
    except ConfigError as exc:
        out.send(f"error {exc}\n")
        return 2
    except Exception as exc:
        out.send(f"error sinks: {exc}\n")
        return 2
    await sinks.start()
    tune_gc(freeze=True)
    out.send(f"ready {json.dumps(sinks.names)}\n")

    reader = await parent_lines()
    done = asyncio.Event()
    drain_timeout = 5.0
    orphaned = False

    async def commands() -> None:
        nonlocal drain_timeout, orphaned
        while True:
            line = await reader.readline()
            if not line:  # the parent is gone: drain and stop
                orphaned = True
                break
            if line.startswith((b"n ", b"i ")):
                try:
                    sinks.notify(int(line[2:]), idle=line.startswith(b"i "))
                except ValueError:
                    sinks.notify()
            elif line.startswith(b"stop"):
                try:
                    drain_timeout = float(line.split()[1])
                except (IndexError, ValueError):
                    pass
                break
        done.set()

    async def report() -> None:
        last_cursors: Any = None
        last_sent = 0.0
        while True:
            await asyncio.sleep(STATS_POLL_S)
            stats = sinks.stats()
            prunable = sinks.prunable_seq()
            cursors = ({name: s.get("cursor") for name, s in stats.items()}, prunable)
            now = time.time()
            if cursors != last_cursors or now - last_sent >= STATS_HEARTBEAT_S:
                last_cursors, last_sent = cursors, now
                out.send("s " + json.dumps({**stats, "at": now, "prunable": prunable}, default=str) + "\n")

    tasks = [asyncio.create_task(commands()), asyncio.create_task(report())]
    await done.wait()
    await sinks.stop(drain_timeout=drain_timeout)
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats = sinks.stats()
    out.send("s " + json.dumps({**stats, "at": time.time(), "prunable": sinks.prunable_seq()},
                               default=str) + "\n" + "stopped\n")
    eventlog.close()
    if orphaned:
        log.warning("the receiver is gone (its pipe closed): sinks drained and stopped, sink process "
                    "exiting; delivered up to %s", {name: s.get("cursor") for name, s in stats.items()})
    return 0


def main() -> int:
    return child_main(_child)


if __name__ == "__main__":
    sys.exit(main())
