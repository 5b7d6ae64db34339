"""A data folder filled the real way for the command-line tests: a registered card, its key,
stored events and the SQLite sink's query store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from carecard.host.cli import main
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.events import event_from_message
from carecard.host.paths import ingest_db_path
from carecard.host.sinks import SinkSet

from eventgen import DEVICE, T0, position_message

NAME = "王奶奶"

__all__ = ["DEVICE", "NAME", "fill_data_folder"]


def fill_data_folder(data: Path) -> None:
    """`carecard devices add` DEVICE as NAME, three position events in the event log, delivered to
    the SQLite sink (events.sqlite)."""
    assert main(["devices", "add", str(DEVICE), "--name", NAME, "--generate-key",
                 "--no-check-digit", "--data", str(data)]) == 0
    writer = SQLiteEventLog.connect_writer(ingest_db_path(data))
    SQLiteEventLog.append(writer, [event_from_message(position_message(n), T0 + n * 60 + 1) for n in range(1, 4)])
    writer.close()

    log = SQLiteEventLog(ingest_db_path(data))

    async def deliver() -> None:
        sinks = SinkSet.from_config(None, data, log)
        await sinks.start()
        await sinks.stop(drain_timeout=5)

    try:
        asyncio.run(deliver())
    finally:
        log.close()
