"""The embedded SQLite implementation of the storage interfaces (carecard.host.storage): the ingest
store (store.py) and the event log (eventlog.py) in DATA/carecard.sqlite, and SQL helpers (sql.py)."""

from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.storage.sqlite.store import SQLiteStore

__all__ = ["SQLiteEventLog", "SQLiteStore"]
