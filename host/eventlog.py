"""The durable event log: every event, in order, in the ingest database; the sinks read it.

Writer side (the ingest, which owns DATA/carecard.sqlite in WAL mode): call
`EventLog.ensure_schema(conn)` once, then, INSIDE the batch's transaction,
`EventLog.append_frames(conn, rows)` for its frames, so a frame is never acked without its event
(persist before ack); events that are not frames' (the alert engine's alerts) go in with
`EventLog.append(conn, events)`. Each event gets a monotonically increasing integer `seq`
(SQLite AUTOINCREMENT: never reused, even after pruning). The log does not look ids up: each event is appended once by its writer. A frame's row
is also the frame's archive, unique on (device, counter), so a retransmitted frame can never log
a second event. (An index on the event id would cost the ingest a random B-tree insert per frame
and a dirty page per frame at every commit.) A frame's event is logged as its opened frame, not
its JSON; readers make the JSON when they need it (LogEntry).

Reader side (the sinks): an `EventLog(path)` object with its own connection, used only for short
autocommit reads (`events_after`, `last_seq`) and for the per-sink cursors.

Cursors live in a small table `sink_cursor` in the same database, written by the sink runners
through this reader connection in one-row, one-statement transactions (BEGIN IMMEDIATE, a few
microseconds holding the write lock, at most a few times a second per sink, with
synchronous=NORMAL: no fsync of their own). Why the same database rather than cursor files: the
cursor and the log it points into move together (a restored, replaced or moved data folder never
pairs a cursor with another log), a shared database keeps them together for free, and with WAL the writer is never blocked by readers; the only contention is those tiny
cursor commits, which the ingest writer absorbs through its busy_timeout. A cursor commit lost to
a power failure (synchronous=NORMAL) only moves the cursor back: events are delivered again
(at-least-once), never lost.

The ingest writer must open its write transactions with BEGIN IMMEDIATE (or keep
isolation_level so that its first statement is a write) and set a busy_timeout, so that a cursor
commit in flight makes it wait a few microseconds instead of failing with SQLITE_BUSY.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import orjson

from carecard.host.events import event_json, event_record
from carecard.protocol import ProtocolError, parse_opened

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 5.0


def _null(_value: None) -> None:
    return None


# Identity adapters for the parameter types sqlite3 binds only after an adaptation lookup: every
# bytes, None or bool parameter otherwise makes CPython 3.11's sqlite3 look up `__adapt__` on its
# PrepareProtocol type, which raises and discards an AttributeError: about 0.4 us a parameter,
# three per stored frame. An adapter found in the registry is called instead (b.__bytes__() is
# b, int(True) is 1, and None stays NULL), so what is stored is unchanged (tests/test_eventlog.py).
# (bytes.__bytes__ rather than bytes: a method call, a third of the cost of calling the type.)
# Process-wide, like every sqlite3 adapter: registered on import of this module, which every
# writer of the log imports.
def register_identity_adapters() -> None:
    sqlite3.register_adapter(bytes, bytes.__bytes__)
    sqlite3.register_adapter(bool, int)
    sqlite3.register_adapter(type(None), _null)


register_identity_adapters()

# A frame's row in the log is also the frame's archive: besides its event (the opened frame), it
# holds the frame as received, under a unique (device, counter) index, and the view `frames`
# shows those columns. One row per frame, written once: the ingest's replay checks, the archive
# and the sinks' hand-over are the same row (a separate frames table cost a second row, a second
# B-tree and pruning the event's copy). Rows of other events (device NULL: alerts) are pruned
# once every sink has delivered them; frame rows are kept (the archive).
FRAME_COLUMNS = ("device", "counter", "tag", "type", "device_time", "received_at", "transport", "frame")
# What append_frames takes per frame: FRAME_COLUMNS, then the opened frame.
FRAME_ROW = FRAME_COLUMNS + ("opened",)

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
_INSERT_ROWS = "INSERT INTO event_log (event_id, appended_at, body, opened, received_at) VALUES "
_ROW_WIDTH = 5
# A frame's row: no event id or JSON of its own (readers make both from the opened frame), the
# append time (?1) shared by the statement.
_INSERT_FRAMES = (f"INSERT INTO event_log (event_id, body, appended_at, {', '.join(FRAME_ROW)}) VALUES ")
_FRAME_GROUP = "('', '', ?1, " + ", ".join("{%d}" % i for i in range(len(FRAME_ROW))) + ")"
_FRAME_WIDTH = len(FRAME_ROW)
_LAST_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'event_log'"

# Rows per multi-row INSERT statement: the largest chunk, then powers of two for the rest, so a
# connection caches at most 8 statement texts per table. (128 rows of 9 columns = 1152 SQL
# variables, far below SQLite's limit of 32766.)
MULTI_ROW_CHUNK = 128
_CHUNKS = tuple(1 << i for i in range(MULTI_ROW_CHUNK.bit_length() - 1, -1, -1))
_statements: dict[tuple[str, int, int, str | None, int], str] = {}


def multi_row_chunks(rows: int) -> list[tuple[int, int]]:
    """(first row, row count) of each statement for `rows` rows: chunks of MULTI_ROW_CHUNK, then
    the rest in decreasing powers of two."""
    out = []
    start = 0
    for size in _CHUNKS:
        while rows - start >= size:
            out.append((start, size))
            start += size
    return out


def insert_statement(prefix: str, width: int, rows: int, group: str | None = None,
                     shared: int = 0) -> str:
    """`prefix` ("INSERT INTO t (a, b) VALUES ") followed by `rows` groups of `width` ?s; or, with
    `group`, by `rows` copies of that VALUES group, whose `{0}`..`{width-1}` become the row's own
    numbered parameters, after the `shared` ones (?1..?shared, which every group may name)."""
    key = (prefix, width, rows, group, shared)
    sql = _statements.get(key)
    if sql is None:
        if group is None:
            one = "(" + ",".join("?" * width) + ")"
            sql = prefix + ",".join([one] * rows)
        else:
            sql = prefix + ",".join(group.format(*[f"?{shared + row * width + i + 1}" for i in range(width)])
                                    for row in range(rows))
        _statements[key] = sql
    return sql


def insert_rows(conn: sqlite3.Connection, prefix: str, width: int, flat: list[Any],
                on_conflict: Any = None, *, group: str | None = None, shared: tuple[Any, ...] = ()) -> None:
    """Insert the rows laid end to end in `flat` (`width` values each, in order) with multi-row
    INSERT statements (`group` and `shared`: see insert_statement). A statement that fails with
    an IntegrityError is backed out by SQLite as a whole; `on_conflict(conn, rows)` then gets its
    rows (as tuples) to insert another way, or, without it, the error propagates."""
    execute = conn.execute
    for start, size in multi_row_chunks(len(flat) // width):
        values = flat[start * width:(start + size) * width]
        try:
            execute(insert_statement(prefix, width, size, group, len(shared)),
                    [*shared, *values] if shared else values)
        except sqlite3.IntegrityError:
            if on_conflict is None:
                raise
            on_conflict(conn, [tuple(values[i:i + width]) for i in range(0, len(values), width)])


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Inside the caller's open transaction (left open), or else in one of its own: committed at
    the end, rolled back on an error."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if own:
            conn.rollback()
        raise
    if own:
        conn.commit()


class EventLogError(RuntimeError):
    """The event log cannot be opened or read (missing file or tables, corrupt row)."""


class LogEntry:
    """One event read from the log, in order.

    `seq`; `appended_at` (host Unix time of the append, for lag in seconds); `body`, the event's
    JSON (event_json(event)); `event`, the event as a dict. A frame's event (logged as its
    opened frame by append_frames) also has `message` (the decoded message) and `received_at`, and makes its body
    and event when first asked for them (a sink that stores the message's fields never pays for
    the JSON), and `opened`, the opened frame as logged; for other events these are None."""

    __slots__ = ("seq", "appended_at", "message", "opened", "received_at", "_event", "_body")

    def __init__(self, seq: int, appended_at: float, event: dict[str, Any] | None = None,
                 body: str | None = None, *, message: dict[str, Any] | None = None,
                 opened: bytes | None = None, received_at: float | None = None):
        self.seq = seq
        self.appended_at = appended_at
        self.message = message
        self.opened = opened
        self.received_at = received_at
        self._event = event
        self._body = body

    @property
    def body(self) -> str:
        if self._body is None:
            if self.message is not None:
                self._body = event_record(self.message, self.received_at)[1]
            else:
                self._body = event_json(self._event) if self._event is not None else ""
        return self._body

    @property
    def event(self) -> dict[str, Any]:
        if self._event is None:
            self._event = parse_body(self.body)
        return self._event

    def __repr__(self) -> str:
        return f"LogEntry(seq={self.seq}, event={self.event!r})"


# Reading the log: orjson's parser (in C, about three times faster than json's scanner on these
# events) gives the same dicts json.loads does, with two exceptions handled here: what it refuses
# (NaN, infinity, a lone surrogate) goes through json, which decides; and an integer beyond 64 bits
# comes back from it as a float, so a float that large (|x| >= 2**63) sends the body through json
# too. Both readers therefore give the same event for every body.
_fast_loads = orjson.loads
_fast_dumps = orjson.dumps
_FastError = orjson.JSONDecodeError
_WIDE = float(2 ** 63)


def _maybe_widened(value: Any) -> bool:
    """Whether a parsed value holds a float of magnitude >= 2**63 (possibly a wide integer)."""
    for item in (value.values() if type(value) is dict else value):
        kind = type(item)
        if kind is float:
            if item >= _WIDE or item <= -_WIDE:
                return True
        elif (kind is dict or kind is list) and _maybe_widened(item):
            return True
    return False


def parse_body(body: str) -> Any:
    """A log body as json.loads gives it (faster). Raises ValueError or TypeError as it does."""
    try:
        value = _fast_loads(body)
    except (_FastError, TypeError):
        return json.loads(body)  # its verdict, and its error message
    # The quick proof that nothing was widened: orjson writes the value back as exactly the
    # stored text (the log's compact form). A widened integer would come back in float form, so
    # an exact match rules it out (about 1 us, against 3 us for walking every value); any
    # mismatch (other spacing, escapes, float spelling) just takes the walk below.
    try:
        if _fast_dumps(value) == body.encode():
            return value
    except (TypeError, UnicodeError, AttributeError):
        pass
    if (type(value) is dict or type(value) is list) and _maybe_widened(value):
        return json.loads(body)
    if type(value) is float and (value >= _WIDE or value <= -_WIDE):
        return json.loads(body)
    return value

class EventLog:
    """Reader of the event log (and keeper of the sink cursors). Thread-safe: one connection
    guarded by a lock, meant to be used from worker threads, never from the event loop."""

    # --- writer side: static, on the ingest's own connection --------------------------------

    @staticmethod
    def ensure_schema(conn: sqlite3.Connection) -> None:
        """Create the event log and cursor tables if missing. Idempotent; call once at start-up.
        Does not commit a transaction the caller has open (and needs none)."""
        with _transaction(conn):
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
        with _transaction(conn):
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
            add((event["id"], stamp, event_json(event), None, None))
        with _transaction(conn):
            if flat:
                insert_rows(conn, _INSERT_ROWS, _ROW_WIDTH, flat)
            row = conn.execute(_LAST_SEQ).fetchone()
        return row[0] if row else 0

    @staticmethod
    def prune(conn: sqlite3.Connection, upto_seq: int, *, max_rows: int = 10_000) -> int:
        """Delete at most `max_rows` of the oldest events with seq <= upto_seq (pass
        SinkSet.prunable_seq(): what every sink has delivered), except frames' rows, which are
        the frame archive. Runs in the caller's transaction if one is open. Returns the number of
        rows deleted; call again while it returns max_rows. (The rows it may delete are the ones
        of the partial index event_log_prunable: found without reading the frames' rows.)"""
        cursor = conn.execute(
            "DELETE FROM event_log WHERE seq IN (SELECT seq FROM event_log WHERE device IS NULL "
            "AND seq <= ? ORDER BY seq LIMIT ?)",
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
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        EventLog.ensure_schema(conn)
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
            EventLog.connect_writer(self.path).close()
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
                "ingest database, or the receiver has not called EventLog.ensure_schema yet"
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._cursor_lock:
            if self._cursor_conn is not None:
                self._cursor_conn.close()
                self._cursor_conn = None

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entries_after(self, seq: int, limit: int = 1000) -> list[LogEntry]:
        """Up to `limit` log entries with seq > `seq`, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, appended_at, body, opened, received_at FROM event_log "
                "WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit),
            ).fetchall()
        entries = []
        parse = parse_body
        add = entries.append
        for row_seq, appended_at, body, opened, received_at in rows:
            if opened is not None:
                try:  # a frame's event: its message now (so a bad row fails here, not in a sink)
                    message = parse_opened(opened)
                except ProtocolError as exc:
                    raise EventLogError(f"{self.path}: event log row seq {row_seq} is not an opened "
                                        f"frame: {exc}") from None
                if type(received_at) is not float:
                    raise EventLogError(f"{self.path}: event log row seq {row_seq} has no "
                                        "received_at for its frame")
                add(LogEntry(row_seq, appended_at, message=message, opened=bytes(opened),
                             received_at=received_at))
                continue
            try:
                event = parse(body)
            except (ValueError, TypeError) as exc:
                raise EventLogError(f"{self.path}: event log row seq {row_seq} is not JSON: "
                                    f"{exc}") from None
            add(LogEntry(row_seq, appended_at, event, body))
        return entries

    def events_after(self, seq: int, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` (seq, event) pairs with seq > `seq`, in order."""
        return [(entry.seq, entry.event) for entry in self.entries_after(seq, limit)]

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
