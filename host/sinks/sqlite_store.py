"""SQLite query store (the embedded default sink): DATA/events.sqlite.

A separate file from the ingest database, so queries and this sink never contend with the ingest
writer. Tables (each with a unique key that holds the event id, so at-least-once delivery never
creates duplicates):

    events(id, device, kind, t, time, received_at, body,         every event: body = the JSON,
           opened, received_unix)                                or, for a frame's event, '' and
                                                                 the opened frame with the exact
                                                                 receive time (the JSON is made
                                                                 from them when read:
                                                                 carecard.host.export)
    positions(event_id, idx, device, source, t, time_estimated,   one row per position:
              lat, lon, lat_e7, lon_e7, alt_m, hdop, sats, fix,   `position` and `sos` messages
              speed_ms, course)                                   with a fix, and every track point
    alerts(id PK, device, alert, t, time, details)               alerts, details as JSON

`t` is Unix seconds (REAL) used for time-range queries:
- events: the card's time when its clock was synced, else the host's received_at;
- positions: the time of the fix: message time minus fix_age_s for `position`/`sos`, the point's
  own time for track points. A `position`/`sos` whose fix age is unknown (spec.FIELDS: the fix is
  older than the field can say, or there is none) has no known time and is no point of the track:
  it has no row here (its event keeps it, with fix_age_s null). When the card's clock was not
  synced, the time is estimated from received_at minus the seconds-since-boot difference
  (time_estimated = 1).
Indexes: UNIQUE (device, t, id) on events and (device, t, event_id, idx) on positions, which
serve the per-device time-range queries and make a re-delivered event a no-op (its t is computed
from the event itself, so the same event always has the same key); (kind, t) and (t) on events;
(device, t) on alerts. Why not a key on the id alone: every frame then cost the store two random
B-tree inserts per table (the id index and the device index), and a batch's commit wrote both
indexes' pages; this layout (2, in PRAGMA user_version) has one per table. A store of another
layout is refused with the fix (open_query_store).

Each batch (up to 10,000 events by default) is one transaction with synchronous=FULL, written with
multi-row INSERTs: when deliver() returns, the batch is on disk (the runner advances its cursor
only then). A frame's event is stored from its message (LogEntry.message): its columns and
positions straight from the decoded fields, and the opened frame instead of the JSON, so the
store never makes, parses or writes the JSON of the frames it stores (about 420 bytes each).
Other events (alerts) keep their JSON, the event log's own text.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Mapping

from carecard.host.storage import LogEntry
from carecard.host.storage.sqlite.sql import insert_rows, register_identity_adapters
from carecard.host.events import ALERT_KIND, DATA_BUILDERS, NO_FIX, EventError, data_picker, event_json
from carecard.host.timefmt import iso_utc, parse_iso_utc
from carecard.host.paths import events_db_path
from carecard.host.sinks.base import Sink, SinkError, SinkTable

log = logging.getLogger("carecard.host.sinks")

# The layout written by this version (PRAGMA user_version of the store); 0 is the first one.
STORE_LAYOUT = 2

_EVENTS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
        id TEXT NOT NULL,
        device TEXT NOT NULL,
        kind TEXT NOT NULL,
        t REAL NOT NULL,
        time TEXT,
        received_at TEXT NOT NULL,
        body TEXT NOT NULL,
        opened BLOB,
        received_unix REAL
    )"""
_POSITIONS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
        event_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        device TEXT NOT NULL,
        source TEXT NOT NULL,
        t REAL NOT NULL,
        time_estimated INTEGER NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        lat_e7 INTEGER NOT NULL,
        lon_e7 INTEGER NOT NULL,
        alt_m INTEGER,
        hdop REAL,
        sats INTEGER,
        fix TEXT,
        speed_ms REAL,
        course REAL
    )"""

STORE_SCHEMA = (
    _EVENTS_TABLE.format(name="events"),
    "CREATE UNIQUE INDEX IF NOT EXISTS events_device_t ON events (device, t, id)",
    "CREATE INDEX IF NOT EXISTS events_kind_t ON events (kind, t)",
    "CREATE INDEX IF NOT EXISTS events_t ON events (t)",
    _POSITIONS_TABLE.format(name="positions"),
    "CREATE UNIQUE INDEX IF NOT EXISTS positions_device_t ON positions (device, t, event_id, idx)",
    """CREATE TABLE IF NOT EXISTS alerts (
        id TEXT PRIMARY KEY,
        device TEXT NOT NULL,
        alert TEXT NOT NULL,
        t REAL NOT NULL,
        time TEXT NOT NULL,
        details TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alerts_device_t ON alerts (device, t)",
)

# Columns of `positions` copied from an event's data when present (track points and sos carry
# fewer: the others are NULL).
POSITION_COLUMNS = ("lat", "lon", "lat_e7", "lon_e7", "alt_m", "hdop", "sats", "fix", "speed_ms", "course")

# Multi-row INSERT prefixes (storage.sqlite.sql.insert_rows adds the VALUES groups) and the
# width of their rows. OR IGNORE: a row whose key (event id, and index for positions) is
# already stored is skipped, which makes a re-delivered event a no-op.
_INSERT_EVENTS = ("INSERT OR IGNORE INTO events (id, device, kind, t, time, received_at, body, opened, "
                  "received_unix) VALUES ")
_EVENT_WIDTH = 9
_INSERT_POSITIONS = ("INSERT OR IGNORE INTO positions (event_id, idx, device, source, t, time_estimated, "
                     + ", ".join(POSITION_COLUMNS) + ") VALUES ")
_POSITION_WIDTH = 6 + len(POSITION_COLUMNS)
_INSERT_ALERTS = "INSERT OR IGNORE INTO alerts (id, device, alert, t, time, details) VALUES "
_ALERT_WIDTH = 6


class StoreLayoutError(RuntimeError):
    """The query store has a layout this version does not write (a newer one, or an early one)."""


def open_query_store(path: Path) -> sqlite3.Connection:
    """Open the query store, creating it; a store of another layout is refused (StoreLayoutError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    register_identity_adapters()
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # every batch touches the device indexes all over: keep them in memory, and checkpoint
        # less often than SQLite's default (1000 pages)
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA wal_autocheckpoint=8192")
        conn.execute("BEGIN IMMEDIATE")
        try:
            layout = conn.execute("PRAGMA user_version").fetchone()[0]
            if layout > STORE_LAYOUT:
                raise StoreLayoutError(f"query store {path} has layout {layout}; this version of "
                                       f"carecard writes up to {STORE_LAYOUT}: upgrade carecard")
            if layout < STORE_LAYOUT and conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone():
                raise StoreLayoutError(
                    f"query store {path} has layout {layout}, written only while carecard was being "
                    "developed, which this version does not read: move it away and give the sqlite "
                    "sink a new `name` in the configuration, so it fills a new store from the event log")
            for statement in STORE_SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {STORE_LAYOUT}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


_POSITION_KINDS = frozenset(("position", "sos", "track"))
# what a frame's position row takes from the event's data (see SQLiteSink._frame_rows)
_PICKED = POSITION_COLUMNS + ("fix_age_s",)
_POSITION_PICKERS = {kind: data_picker(kind, _PICKED) for kind in _POSITION_KINDS}


class _Times:
    """parse_iso_utc with a memo for one batch: a batch holds many events with the same
    received_at (the receiver stamps them to the millisecond) and card times (whole seconds);
    `iso` and `iso_second` the same for writing a receive time or a card time as text."""

    __slots__ = ("memo", "texts", "seconds")

    def __init__(self) -> None:
        self.memo: dict[str, float] = {}
        self.texts: dict[float, str] = {}
        self.seconds: dict[int, str] = {}

    def iso(self, received_at: float) -> str:
        text = self.texts.get(received_at)
        if text is None:
            text = self.texts[received_at] = iso_utc(received_at, millis=True)
        return text

    def iso_second(self, unix: int) -> str:
        text = self.seconds.get(unix)
        if text is None:
            text = self.seconds[unix] = iso_utc(unix)
        return text

    def __call__(self, text: Any) -> float:
        if type(text) is str:
            value = self.memo.get(text)
            if value is None:
                value = self.memo[text] = parse_iso_utc(text)
            return value
        return parse_iso_utc(text)  # raises for anything else, as before


def _fix_time(event: Mapping[str, Any], data: Mapping[str, Any], received: float) -> tuple[float, int]:
    """The position's time (Unix s) and whether it is estimated; its fix age must be known."""
    age = data["fix_age_s"]
    if data.get("clock_synced", True) and event.get("time"):
        return float(data["device_time"] - age), 0
    return received - age, 1


def _position_values(source: Mapping[str, Any]) -> tuple[Any, ...]:
    get = source.get
    return (get("lat"), get("lon"), get("lat_e7"), get("lon_e7"), get("alt_m"), get("hdop"),
            get("sats"), get("fix"), get("speed_ms"), get("course"))


assert POSITION_COLUMNS == ("lat", "lon", "lat_e7", "lon_e7", "alt_m", "hdop", "sats", "fix",
                            "speed_ms", "course")  # the order _position_values reads them in


def position_rows(event: Mapping[str, Any], parse: Any = parse_iso_utc) -> list[tuple[Any, ...]]:
    """Rows for `positions` from one event (none for events without a usable position).
    `parse` turns the ISO times into Unix seconds (parse_iso_utc, or a batch's memo of it)."""
    kind = event.get("kind")
    received = parse(event["received_at"])  # a malformed event fails the same way for every kind
    if kind not in _POSITION_KINDS:
        return []
    data = event.get("data") or {}
    rows = []
    if kind != "track":
        if data.get("fix") == NO_FIX or data.get("lat") is None or data.get("lon") is None \
                or data.get("fix_age_s") is None:  # no fix, or its time is not known
            return []
        t, estimated = _fix_time(event, data, received)
        rows.append((event["id"], 0, event["device"], kind, t, estimated) + _position_values(data))
    else:
        synced = bool(data.get("clock_synced", True))
        for idx, point in enumerate(data.get("points") or ()):
            if synced:
                t, estimated = float(point["device_time"]), 0
            else:
                t, estimated = received - (data["device_time"] - point["device_time"]), 1
            rows.append((event["id"], idx, event["device"], kind, t, estimated) + _position_values(point))
    return rows


def event_time(event: Mapping[str, Any], parse: Any = parse_iso_utc) -> float:
    """`t` for the events table: the card's time if known, else received_at."""
    return parse(event["time"] or event["received_at"])


def _label(entry: LogEntry) -> str:
    """How a log message names an event that could not be stored (its id when it has one)."""
    try:
        event = entry.message if entry.message is not None else entry.event
    except (ValueError, TypeError):  # not even readable as JSON
        return f"at seq {entry.seq}"
    if isinstance(event, dict):
        counter = event.get("counter")
        return repr(event.get("id") or f"{event.get('device')}-{counter}")
    return repr(event)


class SQLiteSink(Sink):
    type_name = "sqlite"
    # Large batches, gathered by waiting: a commit writes every index page the batch touched,
    # and with many devices nearly every row lands on a page of its own in the indexes keyed by
    # device or id, so the cost per event falls as a batch grows (at 1000 devices, 10,000 events
    # a commit take about 20 us of the sink's CPU per event, 5000 about 26, a few hundred far
    # more). Under load a batch waits up to a second to fill (10,000 events at 10,000 frames/s);
    # queries then see an event at most about a second late (0.1 s once the log goes quiet:
    # base.LINGER_QUIET_S). The MQTT and webhook sinks, which take alerts to people, deliver at
    # once.
    default_batch_size = 10000
    default_queue_size = 20000
    default_linger_ms = 1000.0

    def __init__(self, name: str, path: Path):
        super().__init__(name)
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self.malformed = 0

    @classmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "SQLiteSink":
        path = table.str("path")
        return cls(name, Path(path) if path else events_db_path(data_dir))

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_query_store(self.path)
        return self._conn

    def _store(self, entries: list[LogEntry]) -> None:
        """Store log entries in one transaction. An event already stored (a re-delivery) or
        repeated in the batch is stored once: every table's key holds its event id and every
        insert is OR IGNORE, so its rows are skipped by the insert itself, with no lookup first."""
        conn = self._open()
        conn.execute("BEGIN IMMEDIATE")
        try:
            parse = _Times()
            events: list[Any] = []
            positions: list[Any] = []
            alerts: list[Any] = []
            for entry in entries:
                try:
                    # everything is read before anything is added, so a malformed event leaves
                    # no partial rows
                    if entry.message is not None:
                        row, extra, is_alert = self._frame_rows(entry, parse)
                    else:
                        row, extra, is_alert = self._rows(entry.event, entry.body or None, parse)
                except (KeyError, TypeError, ValueError, AttributeError, EventError) as exc:
                    # not a schema-1 event: keep the rest of the batch flowing, count and log it
                    self.malformed += 1
                    log.error("sink %s: event %s not stored: malformed (%s: %s)", self.name,
                              _label(entry), type(exc).__name__, exc)
                    continue
                events.extend(row)
                target = alerts if is_alert else positions
                for extra_row in extra:
                    target.extend(extra_row)
            if events:
                insert_rows(conn, _INSERT_EVENTS, _EVENT_WIDTH, events)
            if positions:
                insert_rows(conn, _INSERT_POSITIONS, _POSITION_WIDTH, positions)
            if alerts:
                insert_rows(conn, _INSERT_ALERTS, _ALERT_WIDTH, alerts)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _rows(event: dict[str, Any], body: str | None,
              parse: Any = parse_iso_utc) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], bool]:
        """The events row, and the alerts row or the positions rows, of one event."""
        if body is None:
            body = event_json(event)
        t = event_time(event, parse)
        row = (event["id"], event["device"], event["kind"], t, event["time"], event["received_at"], body,
               None, None)
        if event["kind"] == ALERT_KIND:
            data = event["data"]
            details = json.dumps(data.get("details", {}), ensure_ascii=False, separators=(",", ":"))
            return row, [(event["id"], event["device"], data["alert"], t, event["time"], details)], True
        return row, position_rows(event, parse), False

    @staticmethod
    def _frame_rows(entry: LogEntry, parse: Any) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], bool]:
        """The events row and the positions rows of a frame's event, from its message: the same
        values the event's JSON would give (carecard.host.events builds both from one plan)."""
        message, received_at = entry.message, entry.received_at
        assert message is not None and received_at is not None
        kind = message["type"]
        if kind not in DATA_BUILDERS or message["direction"] != "uplink":
            raise EventError(f"{kind!r} ({message['direction']}) is not an uplink message")
        device = str(message["device"])
        event_id = f"{device}-{message['counter']}"
        synced = message["clock_synced"]
        received_text = parse.iso(received_at)
        if synced:
            device_time = message["time"]
            time_text = parse.iso_second(device_time)
            t = float(device_time)  # the time text, read back
        else:
            time_text = None
            t = parse(received_text)
        row = (event_id, device, kind, t, time_text, received_text, "", entry.opened, received_at)
        if kind not in _POSITION_KINDS:
            return row, [], False
        pick = _POSITION_PICKERS[kind]
        if pick is None:  # a track: its points, through the event's own data
            event = {"id": event_id, "kind": kind, "device": device, "time": time_text,
                     "received_at": received_text, "data": DATA_BUILDERS[kind](message, synced)}
            return row, position_rows(event, parse), False
        values = pick(message)  # POSITION_COLUMNS, then fix_age_s
        age = values[10]
        if values[7] == NO_FIX or values[0] is None or values[1] is None or age is None:
            return row, [], False  # no fix, or its time is not known (as position_rows)
        if synced:
            fix_t, estimated = float(device_time - age), 0
        else:
            fix_t, estimated = parse(received_text) - age, 1
        return row, [(event_id, 0, device, kind, fix_t, estimated) + values[:10]], False

    async def start(self) -> None:
        try:
            await self.run_io(self._open)
        except (sqlite3.Error, OSError, StoreLayoutError) as exc:
            raise SinkError(f"cannot open {self.path}: {exc}") from exc

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        await self._deliver([LogEntry(0, 0.0, event) for event in events])

    async def deliver_entries(self, entries: list[LogEntry]) -> None:
        await self._deliver(entries)

    async def _deliver(self, entries: list[LogEntry]) -> None:
        try:
            await self.run_io(self._store, entries)
        except (sqlite3.Error, OSError, StoreLayoutError) as exc:
            raise SinkError(f"cannot store in {self.path}: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        return {"malformed": self.malformed}

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        try:
            await self.run_io(self._close)
        finally:
            self.release_io()
