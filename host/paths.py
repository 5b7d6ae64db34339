"""Where the host receiver keeps its files. One definition, used by `carecard receive`, the sinks
and the query commands.

    DATA/                      (default ./data, relative to the working directory; --data DIR)
      carecard.sqlite          the ingest database (frames, devices, downlinks) and the durable
                               event log with the sinks' cursors (carecard.host.eventlog); WAL mode
      events.sqlite            the SQLite sink's query store (positions, events, alerts): a separate
                               file so queries and the sink never contend with the ingest writer
      webhook-NAME.deadletter.jsonl   events a webhook sink gave up on (see docs/events.md)
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DATA_DIR = Path("data")

INGEST_DB_NAME = "carecard.sqlite"
EVENTS_DB_NAME = "events.sqlite"


def ingest_db_path(data_dir: Path | str) -> Path:
    """The ingest database, which also holds the event log and the sink cursors."""
    return Path(data_dir) / INGEST_DB_NAME


def events_db_path(data_dir: Path | str) -> Path:
    """The SQLite sink's query store, read by `carecard track` and `carecard events`."""
    return Path(data_dir) / EVENTS_DB_NAME


def dead_letter_path(data_dir: Path | str, sink_name: str) -> Path:
    """Default dead-letter file of a webhook sink."""
    return Path(data_dir) / f"{sink_name}.deadletter.jsonl"
