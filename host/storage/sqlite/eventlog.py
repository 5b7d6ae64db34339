"""The event log in SQLite: every event, in order, in the ingest database (DATA/carecard.sqlite).

Writer side (the ingest's store, which owns the database in WAL mode): `ensure_schema(conn)` once,
then, INSIDE the batch's transaction, `append_frames(conn, rows)` for its frames, so a frame is
never acked without its event (persist before ack); events that are not frames' (alerts) go in
with `append(conn, events)`. Each event gets a monotonically increasing integer `seq` (SQLite
AUTOINCREMENT: never reused, even after pruning). The log does not look ids up: each event is
appended once by its writer. A frame's row is also the frame's archive, unique on (device,
counter), so a retransmitted frame can never log a second event. (An index on the event id would
cost the ingest a random B-tree insert per frame and a dirty page per frame at every commit.)

Reader side (the sinks, the alert engine): a `SQLiteEventLog(path)` (storage.EventLogReader) with
its own connection, used only for short autocommit reads and for the cursors.

Cursors live in a small table `sink_cursor` in the same database, written through the reader's
cursor connection in one-row, one-statement transactions (BEGIN IMMEDIATE, a few microseconds
holding the write lock, at most a few times a second per reader, with synchronous=NORMAL: no
fsync of their own). Why the same database rather than cursor files: the cursor and the log it
points into move together (a restored, replaced or moved data folder never pairs a cursor with
another log), and with WAL the writer is never blocked by readers; the only contention is those
tiny cursor commits, which the ingest writer absorbs through its busy_timeout. A cursor commit
lost to a power failure (synchronous=NORMAL) only moves the cursor back: events are delivered
again (at-least-once), never lost.

The ingest writer must open its write transactions with BEGIN IMMEDIATE (or keep
isolation_level so that its first statement is a write) and set a busy_timeout, so that a cursor
commit in flight makes it wait a few microseconds instead of failing with SQLITE_BUSY.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from carecard.host.events import REGISTRY_KIND, event_json
from carecard.host.storage import FRAME_COLUMNS, FRAME_ROW, EventLogError, EventLogReader, LogEntry, log_entries
from carecard.host.storage.sqlite.sql import insert_rows, register_identity_adapters, transaction

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 5.0


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS event_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        appended_at REAL NOT NULL,
        body TEXT NOT NULL,
        opened BLOB,
        received_at REAL,
        device INTEGER,
        counter INTEGER,
        tag BLOB,
        type TEXT,
        device_time INTEGER,
        transport TEXT,
        frame BLOB
    )""",
    """CREATE TABLE IF NOT EXISTS sink_cursor (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        updated_at REAL NOT NULL
    )""",
)
_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS event_log_frame ON event_log (device, counter) WHERE device IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS event_log_prunable ON event_log (seq) WHERE device IS NULL",
    f"CREATE VIEW IF NOT EXISTS frames AS SELECT {', '.join(FRAME_COLUMNS)} FROM event_log "
    "WHERE device IS NOT NULL",
)

# Appends are plain multi-row INSERTs: a few statements per batch instead of one per event.
# A `registry` event's row names its kind in `type`: pruning keeps it (the alert engine may read
# it after every sink delivered it; it is one row per registry change).
_INSERT_ROWS = "INSERT INTO event_log (event_id, appended_at, body, opened, received_at, type) VALUES "
_ROW_WIDTH = 6
# A frame's row: no event id or JSON of its own (readers make both from the opened frame), the
# append time (?1) shared by the statement.
_INSERT_FRAMES = (f"INSERT INTO event_log (event_id, body, appended_at, {', '.join(FRAME_ROW)}) VALUES ")
_FRAME_GROUP = "('', '', ?1, " + ", ".join("{%d}" % i for i in range(len(FRAME_ROW))) + ")"
_FRAME_WIDTH = len(FRAME_ROW)
_LAST_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'event_log'"


class SQLiteEventLog(EventLogReader):
    """Reader of the event log (and keeper of the sink cursors). Thread-safe: one connection
    guarded by a lock, meant to be used from worker threads, never from the event loop."""

    # --- writer side: static, on the ingest's own connection --------------------------------

    @staticmethod
    def ensure_schema(conn: sqlite3.Connection) -> None:
        """Create the event log and cursor tables if missing. Idempotent; call once at start-up.
        Does not commit a transaction the caller has open (and needs none)."""
        with transaction(conn):
            for statement in _SCHEMA + _INDEXES:
                conn.execute(statement)

    @staticmethod
    def append_frames(conn: sqlite3.Connection, frames: list[tuple[Any, ...]], *,
                      now: float | None = None) -> int:
        """Append one row per frame (FRAME_ROW: the archive columns, then the opened frame), in
        order, inside the caller's open transaction (never commits it), and return the log's
        last seq; with no transaction open, runs in one of its own. A frame whose (device,
        counter) is already in the log fails the statement with sqlite3.IntegrityError (the
        caller rolls back: the ingest's replay checks never send one)."""
        stamp = time.time() if now is None else now
        with transaction(conn):
            if frames:
                insert_rows(conn, _INSERT_FRAMES, _FRAME_WIDTH, [value for row in frames for value in row],
                            group=_FRAME_GROUP, shared=(stamp,))
            row = conn.execute(_LAST_SEQ).fetchone()
        return row[0] if row else 0

    @staticmethod
    def append(conn: sqlite3.Connection, events: Iterable[Mapping[str, Any]],
               *, now: float | None = None) -> int:
        """Append events that are not frames' (the alert engine's alerts: events.alert_event) in
        order inside the caller's open transaction (never commits it) and return the log's last
        seq. With no transaction open, runs in one of its own and commits. Every event given is
        appended (ids are not looked up: appending an event twice is the writer's bug)."""
        stamp = time.time() if now is None else now
        flat: list[Any] = []
        add = flat.extend
        for event in events:
            add((event["id"], stamp, event_json(event), None, None,
                 REGISTRY_KIND if event.get("kind") == REGISTRY_KIND else None))
        with transaction(conn):
            if flat:
                insert_rows(conn, _INSERT_ROWS, _ROW_WIDTH, flat)
            row = conn.execute(_LAST_SEQ).fetchone()
        return row[0] if row else 0

    @staticmethod
    def prune(conn: sqlite3.Connection, upto_seq: int, *, max_rows: int = 10_000) -> int:
        """Delete at most `max_rows` of the oldest events with seq <= upto_seq (pass
        SinkSet.prunable_seq(): what every sink has delivered), except frames' rows, which are
        the frame archive, and registry events, which the alert engine may read later. Runs in
        the caller's transaction if one is open. Returns the number of rows deleted; call again
        while it returns max_rows. (The rows it may delete are the ones
        of the partial index event_log_prunable: found without reading the frames' rows.)"""
        cursor = conn.execute(
            "DELETE FROM event_log WHERE seq IN (SELECT seq FROM event_log WHERE device IS NULL "
            "AND type IS NULL AND seq <= ? ORDER BY seq LIMIT ?)",
            (upto_seq, max_rows),
        )
        if not conn.in_transaction:
            conn.commit()
        return cursor.rowcount

    @staticmethod
    def connect_writer(path: Path | str) -> sqlite3.Connection:
        """A writer connection set up as the log needs (WAL, synchronous=FULL, busy_timeout,
        schema ensured). For tools, tests and benchmarks; the ingest may use its own set-up."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        register_identity_adapters()
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        SQLiteEventLog.ensure_schema(conn)
        return conn

    # --- reader side ------------------------------------------------------------------------

    def __init__(self, db_path: Path | str, *, create: bool = False):
        """Open the log in `db_path` for reading and cursor keeping. With create=False (the
        default) the database and its tables must exist (the ingest creates them)."""
        self.path = Path(db_path)
        if not create and not self.path.exists():
            raise EventLogError(
                f"event log {self.path} does not exist: start the receiver (carecard receive) "
                "with this data folder first, or pass the right --data"
            )
        if create:
            SQLiteEventLog.connect_writer(self.path).close()
        self._lock = threading.Lock()
        # Cursor commits wait for the ingest's write lock (busy_timeout): they get a connection
        # and a lock of their own, so reads of the log never wait behind them.
        self._cursor_lock = threading.Lock()
        self._cursor_conn: sqlite3.Connection | None = None
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            tables = {row[0] for row in self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot open event log {self.path}: {exc}") from None
        missing = {"event_log", "sink_cursor"} - tables
        if missing:
            self._conn.close()
            raise EventLogError(
                f"{self.path} has no {' or '.join(sorted(missing))} table: it is not a CareCard "
                "ingest database, or the receiver has not started on it yet"
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._cursor_lock:
            if self._cursor_conn is not None:
                self._cursor_conn.close()
                self._cursor_conn = None

    def entries_after(self, seq: int, limit: int = 1000) -> list[LogEntry]:
        """Up to `limit` log entries with seq > `seq`, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, appended_at, body, opened, received_at FROM event_log "
                "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit),
            ).fetchall()
        return log_entries(rows, str(self.path))

    def last_seq(self) -> int:
        """The seq of the newest event in the log (0 when it has never held one)."""
        with self._lock:
            row = self._conn.execute(_LAST_SEQ).fetchone()
        return int(row[0]) if row else 0

    def first_seq(self) -> int:
        """The seq of the oldest event still in the log (0 when empty)."""
        with self._lock:
            row = self._conn.execute("SELECT MIN(seq) FROM event_log WHERE seq > 0").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # --- cursors ----------------------------------------------------------------------------

    def load_cursor(self, name: str) -> int | None:
        """The last seq delivered by sink `name`, or None if it never delivered anything."""
        with self._lock:
            row = self._conn.execute("SELECT seq FROM sink_cursor WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else None

    def save_cursor(self, name: str, seq: int) -> None:
        """Persist sink `name`'s cursor in a short transaction of its own (on the cursor
        connection: it may wait for the ingest's write lock, reads of the log do not)."""
        with self._cursor_lock:
            conn = self._cursor_conn
            if conn is None:
                conn = self._cursor_conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO sink_cursor (name, seq, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
                    (name, seq, time.time()),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def cursors(self) -> dict[str, int]:
        """Every persisted cursor, by sink name."""
        with self._lock:
            return dict(self._conn.execute("SELECT name, seq FROM sink_cursor").fetchall())
