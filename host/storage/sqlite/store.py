"""The ingest store in SQLite (storage.IngestStore): the embedded default.

Layout (DATA/carecard.sqlite, WAL mode, shared with the event log's tables, eventlog.py):

    meta(name, value)                  schema_version; registry_generation (bumped by every
                                       admin change so a running receiver reloads cheaply)
    devices(device, name, iccid, phone, created_at, updated_at, last_seen, last_counter,
            last_source, frames_stored, downlink_reserved, next_command_seq, village)
    contacts(device, key, number, name)
    frames(device, counter, tag, type, device_time, received_at, transport, frame)
                                       a view of the event log's frame rows (eventlog.py):
                                       one row per frame, in arrival order (seq), unique on
                                       (device, counter)
    commands(id, device, seq, cmd, args, state, attempts, created_at, updated_at,
             first_sent_at, last_sent_at, result, detail)
    alerts, alert_actions, engine_checkpoint, engine_device
                                       the alert engine's (alerts.py)

Keys are not in the database: they live in the key file (DATA/keys.json, carecard.host.keyfile).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from carecard.host import downlink_lifecycle as lifecycle
from carecard.host.events import registry_event
from carecard.host.files import connect_readonly
from carecard.host.downlink_lifecycle import CHANGE_COLUMNS, OPEN_STATES, CommandRecord, states_sql
from carecard.host.storage import (
    AlertAction,
    AlertRecord,
    AlertStore,
    CommandQueue,
    CommitBatch,
    Contact,
    DeviceExistsError,
    DeviceRecord,
    DeviceRegistry,
    EngineCheckpoint,
    EngineCommit,
    EngineCommitResult,
    EngineSettingsStore,
    EngineStore,
    IngestStore,
    RegistryReader,
    StoreError,
    UnknownDeviceError,
    not_registered,
    registry_changes,
    REMOVED_DETAIL,
)
from carecard.host.storage.rows import COMMAND_COLUMNS, command_from_row, oldest_first
from carecard.host.storage.sqlite import alerts as alert_tables
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.storage.sqlite.sql import register_identity_adapters

log = logging.getLogger("carecard.storage.sqlite")

# The layout of the tables below and of the event log's (frames are the log's rows).
SCHEMA_VERSION = 2
BUSY_TIMEOUT_S = 10.0
U32_MAX = 0xFFFFFFFF  # the largest downlink counter


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS devices (
        device INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        iccid TEXT,
        phone TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_seen REAL,
        last_counter INTEGER,
        last_source TEXT,
        frames_stored INTEGER NOT NULL DEFAULT 0,
        downlink_reserved INTEGER NOT NULL DEFAULT 0,
        next_command_seq INTEGER NOT NULL DEFAULT 1,
        village TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS contacts (
        device INTEGER NOT NULL,
        key INTEGER NOT NULL,
        number TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (device, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS commands (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        cmd TEXT NOT NULL,
        args TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        first_sent_at REAL,
        last_sent_at REAL,
        result TEXT,
        detail TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS commands_by_state ON commands (state, device, id)",
    "CREATE INDEX IF NOT EXISTS commands_by_device ON commands (device, id)",
)

_DEVICE_STATS = (
    "INSERT INTO devices (device, name, created_at, updated_at, last_seen, last_counter, last_source, "
    "frames_stored) VALUES (?1, '', ?2, ?2, ?2, ?3, ?4, ?5) "
    "ON CONFLICT(device) DO UPDATE SET last_seen = MAX(COALESCE(last_seen, 0), ?2), "
    "last_counter = MAX(COALESCE(last_counter, -1), ?3), last_source = ?4, "
    "frames_stored = frames_stored + ?5"
)
_RESERVE = (
    "INSERT INTO devices (device, name, created_at, updated_at, downlink_reserved) "
    "VALUES (?1, '', ?3, ?3, ?2) "
    "ON CONFLICT(device) DO UPDATE SET downlink_reserved = MAX(downlink_reserved, ?2)"
)
# A command's change (CHANGE_COLUMNS, the id last); only an open command changes.
UPDATE_COMMAND = (
    "UPDATE commands SET " + ", ".join(f"{column} = ?" for column in CHANGE_COLUMNS[:-1])
    + f" WHERE id = ? AND state IN {states_sql(OPEN_STATES)}"
)


# The writer's page cache holds the index that every batch touches all over (the frames' unique
# (device, counter) index in the event log): with SQLite's default 2 MB its pages are read back
# from the file at every commit once there are a few thousand devices.
WRITER_CACHE_KIB = 65536
# Checkpoint the WAL into the database every this many pages (SQLite's default is 1000): hot
# index pages rewritten by many commits are copied once per checkpoint, not once per 4 MB.
WAL_AUTOCHECKPOINT_PAGES = 8192


def connect(path: Path, durability: str = "full") -> sqlite3.Connection:
    """A connection to the ingest database set up for writing (WAL, busy timeout)."""
    register_identity_adapters()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    return conn


def ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            conn.execute(statement)
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('registry_generation', 0)")
        elif row[0] > SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            raise StoreError(f"database {path} has schema version {row[0]}; this version of carecard "
                             f"reads up to {SCHEMA_VERSION}: upgrade carecard")
        elif row[0] < SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            raise StoreError(f"database {path} has schema version {row[0]}, a layout of carecard's "
                             "development that no release wrote: start with a new data folder")
        # a column added within schema version 2 (older carecard ignores it)
        if "village" not in {row[1] for row in conn.execute("PRAGMA table_info(devices)")}:
            conn.execute("ALTER TABLE devices ADD COLUMN village TEXT")
        SQLiteEventLog.ensure_schema(conn)
        alert_tables.ensure_schema(conn)
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreError(f"database {path} is not usable: {exc}") from None


def check_database(path: Path, *, full: bool = False, limit: int = 100) -> list[str]:
    """What SQLite's own check finds wrong in the file at `path` ([] when it is sound): `PRAGMA
    quick_check` (every page and b-tree: O(size), at start-up), or with `full` `PRAGMA
    integrity_check` (also every index against its table). Opened read-only: safe while a
    receiver runs."""
    pragma = "integrity_check" if full else "quick_check"
    path = Path(path).resolve()
    # A WAL database opened read-only needs to create its -shm file; in a folder this process
    # cannot write (a read-only copy, another user's folder) with no WAL left, nothing can be
    # writing it: open it as immutable instead of reporting the refusal as damage.
    wal = path.with_name(path.name + "-wal")
    mode = "immutable=1" if not os.access(path.parent, os.W_OK) and not wal.exists() else "mode=ro"
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?{mode}", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.DatabaseError as exc:
        return [f"cannot be opened: {exc}"]
    try:
        problems, error = _run_check(conn, f"PRAGMA {pragma}({int(limit)})")
        if error is None:
            return [] if problems == ["ok"] else problems
        # Some damage fails the check itself (and Python's sqlite3 then drops the rows it had):
        # check table by table to say where.
        try:
            tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
        except sqlite3.DatabaseError as exc:
            return [f"the schema cannot be read: {exc}"]
        for table in tables:
            found, failed = _run_check(conn, f"PRAGMA {pragma}(\"{table.replace(chr(34), chr(34) * 2)}\")")
            if failed is not None:
                problems.append(f"table {table}: {failed}")
            elif found != ["ok"]:
                problems.extend(f"table {table}: {problem}" for problem in found)
        return problems or [f"{pragma} failed: {error}"]
    finally:
        conn.close()


def _run_check(conn: sqlite3.Connection, sql: str) -> tuple[list[str], str | None]:
    rows: list[str] = []
    try:
        for row in conn.execute(sql):
            if not str(row[0]).startswith("*** in database"):
                rows.append(str(row[0]))
    except sqlite3.DatabaseError as exc:
        return rows, str(exc)
    return rows, None


def salvage_database(source: Path, target: Path) -> dict[str, tuple[int, bool]]:
    """Copy what can still be read of a damaged SQLite database `source` into a new file
    `target`: its schema, then each table's rows in rowid order, forward until a damaged page
    stops the read, then backward from the end down to it (rows between two damaged parts are
    lost). Returns {table: (rows copied, whether every row was read)}. Raises StoreError when
    the schema itself cannot be read or `target` exists."""
    if target.exists():
        raise StoreError(f"{target} exists already: move it away first")
    try:
        src = sqlite3.connect(f"{Path(source).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open {source}: {exc}") from None
    try:
        try:
            schema = src.execute("SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL "
                                 "AND name NOT LIKE 'sqlite_%' ORDER BY rowid").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the schema of {source} cannot be read ({exc}): restore a backup") from None
        out = sqlite3.connect(target, isolation_level=None)
        try:
            out.execute("BEGIN")
            tables = [(name, sql) for kind, name, sql in schema if kind == "table"]
            for _name, sql in tables:
                out.execute(sql)
            result: dict[str, tuple[int, bool]] = {}
            for name in [name for name, _sql in tables] + ["sqlite_sequence"]:
                try:
                    rows, complete = _readable_rows(src, name)
                except sqlite3.OperationalError:  # no sqlite_sequence: no AUTOINCREMENT table
                    continue
                if name == "sqlite_sequence":  # filled by the copies above: never lower it
                    for _rowid, table, seq in rows:
                        if not out.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?",
                                           (seq, table)).rowcount:
                            out.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, seq))
                elif rows:
                    marks = ", ".join("?" * (len(rows[0]) - 1))
                    out.executemany(f"INSERT INTO {_quoted(name)} VALUES ({marks})", [r[1:] for r in rows])
                result[name] = (len(rows), complete)
            for kind, _name, sql in schema:
                if kind != "table":
                    out.execute(sql)
            out.execute("COMMIT")
        except BaseException:
            out.close()
            target.unlink(missing_ok=True)
            raise
        out.close()
        return result
    finally:
        src.close()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _readable_rows(conn: sqlite3.Connection, table: str, chunk: int = 512) -> tuple[list[tuple], bool]:
    """(rowid, *columns) of every row that can be read, and whether that is all of them."""
    name = _quoted(table)
    if conn.execute("SELECT 1 FROM sqlite_schema WHERE name = ? AND sql LIKE '%WITHOUT ROWID%'",
                    (table,)).fetchone():
        try:
            return [(None, *row) for row in conn.execute(f"SELECT * FROM {name}")], True
        except sqlite3.DatabaseError:
            return [], False

    def read(sql: str, bound: int, limit: int, other: int | None = None) -> list[tuple] | None:
        try:
            args = (bound, limit) if other is None else (bound, other, limit)
            return conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError:
            return None

    forward = f"SELECT rowid, * FROM {name} WHERE rowid > ? ORDER BY rowid LIMIT ?"
    rows: list[tuple] = []
    low = -(1 << 63)
    size = chunk
    while True:
        got = read(forward, low, size)
        if got is None and size > 1:
            size = 1  # a damaged page ahead: row by row up to it
            continue
        if got is None:
            break
        if not got:
            return rows, True
        rows.extend(got)
        low = got[-1][0]
    backward = f"SELECT rowid, * FROM {name} WHERE rowid < ? AND rowid > ? ORDER BY rowid DESC LIMIT ?"
    tail: list[tuple] = []
    high = (1 << 63) - 1
    size = chunk
    while True:
        got = read(backward, high, size, low)
        if got is None and size > 1:
            size = 1
            continue
        if not got:
            break
        tail.extend(got)
        high = got[-1][0]
    rows.extend(reversed(tail))
    return rows, False


def recovery_steps(path: Path) -> str:
    """How to get a damaged ingest database back (docs/receiver.md, "A damaged database")."""
    return (f"stop the receiver, keep a copy of the data folder, put the latest backup of {path.name} "
            f"in its place (or, without one, what `carecard check --salvage` could read: "
            f"{salvage_path(path).name}), removing {path.name}-wal and {path.name}-shm, check it with "
            "`carecard check`, and start once with `carecard receive --accept-lost-history` (what is "
            "back is behind: every downlink counter must jump ahead) (docs/receiver.md, \"A damaged "
            "database\")")


def salvage_path(path: Path) -> Path:
    """Where `carecard check --salvage` writes what it could read of `path`."""
    return path.with_name(f"{path.stem}.salvaged{path.suffix}")


class SQLiteStore(IngestStore, DeviceRegistry, CommandQueue, AlertStore, EngineStore, EngineSettingsStore):
    """The embedded default. One writer connection (the ingest's writer thread or an admin
    command), one reader connection for the event loop's lookups."""

    def __init__(self, path: Path | str, durability: str = "full", *, readonly_lookups: bool = True):
        self.path = Path(path)
        self._writer = connect(self.path, durability)
        ensure_schema(self._writer, self.path)
        self._reader = connect(self.path, durability) if readonly_lookups else self._writer
        self._write_lock = threading.Lock()
        self._prune: tuple[int, int] | None = None

    # --- ingest side --------------------------------------------------------------------------

    def window_state(self, device: int, size: int) -> tuple[int, dict[int, bytes]]:
        rows = self._reader.execute(
            "SELECT counter, tag FROM frames WHERE device = ? ORDER BY counter DESC LIMIT ?",
            (device, size)).fetchall()
        if not rows:
            return -1, {}
        highest = rows[0][0]
        return highest, {counter: bytes(tag) for counter, tag in rows if counter > highest - size}

    def stored_tag(self, device: int, counter: int) -> bytes | None:
        row = self._reader.execute("SELECT tag FROM frames WHERE device = ? AND counter = ?",
                                   (device, counter)).fetchone()
        return None if row is None else bytes(row[0])

    def prepare(self, batch: CommitBatch) -> int:
        """BEGIN IMMEDIATE and every write, without the COMMIT; then `finish()` or `abort()`."""
        conn = self._writer
        self._write_lock.acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if batch.downlink_reserved:
                now = time.time()
                conn.executemany(_RESERVE, [(d, r, now) for d, r in batch.downlink_reserved.items()])
            if batch.device_stats:
                conn.executemany(_DEVICE_STATS, batch.device_stats)
            if batch.commands:
                conn.executemany(UPDATE_COMMAND, batch.commands)
            for device, contacts in batch.contacts:
                conn.execute("DELETE FROM contacts WHERE device = ?", (device,))
                conn.executemany("INSERT INTO contacts (device, key, number, name) VALUES (?, ?, ?, ?)",
                                 [(device, c.key, c.number, c.name) for c in contacts])
            self._prune = (batch.prune_upto, batch.prune_max_rows or 10_000) if batch.prune_upto else None
            # multi-row statements; a frame already stored violates the unique (device, counter)
            # index and fails the batch (the ingest never sends one: its replay windows sort them out)
            return SQLiteEventLog.append_frames(conn, batch.frames) if batch.frames else 0
        except BaseException as exc:
            self._rollback()
            self._write_lock.release()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"commit to {self.path} failed: {exc}") from None
            raise

    def finish(self) -> int:
        """Prune the event log if the batch asked for it, then COMMIT what `prepare` wrote
        (durable when this returns); the number of events pruned. Raises StoreError.

        The prune runs here, on the writer thread, not in `prepare` on the event loop: deleting
        thousands of rows is SQLite work that needs no interpreter lock."""
        pruned = 0
        try:
            if self._prune is not None:
                upto, max_rows = self._prune
                self._prune = None
                pruned = SQLiteEventLog.prune(self._writer, upto, max_rows=max_rows)
            self._writer.execute("COMMIT")
            return pruned
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"commit to {self.path} failed: {exc}") from None
        finally:
            self._write_lock.release()

    def abort(self) -> None:
        try:
            self._rollback()
        finally:
            self._write_lock.release()

    def _rollback(self) -> None:
        self._prune = None
        conn = self._writer
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def append_events(self, events: list[Mapping[str, Any]]) -> int:
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                last_seq = SQLiteEventLog.append(conn, events)
                conn.execute("COMMIT")
            except (sqlite3.Error, ValueError) as exc:
                self._rollback()
                raise StoreError(f"cannot append events to {self.path}: {exc}") from None
        return last_seq

    def devices_without_history(self, keyed: Iterable[int]) -> list[int]:
        """Devices whose replay and counter history is not in this database: a device with a key
        but no registry row (every device is added with one: `carecard devices add`), or a row
        that counts stored frames of which none is left."""
        known = {row[0] for row in self._reader.execute("SELECT device FROM devices")}
        lost = {device for device in keyed if device not in known}
        lost.update(row[0] for row in self._reader.execute(
            "SELECT device FROM devices AS d WHERE frames_stored > 0 "
            "AND NOT EXISTS (SELECT 1 FROM frames AS f WHERE f.device = d.device)"))
        return sorted(lost)

    def jump_downlink_counters(self, devices: Iterable[int], jump: int) -> list[int]:
        """Move the downlink counter reservation of every registered device, and of `devices`
        (given a row if they have none), `jump` ahead, capped at the largest u32. Returns the
        devices whose counters are now exhausted."""
        now = time.time()
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE devices SET downlink_reserved = MIN(downlink_reserved + ?, ?)",
                             (jump, U32_MAX))
                conn.executemany(_RESERVE, [(device, min(jump, U32_MAX), now) for device in devices])
                exhausted = [row[0] for row in conn.execute(
                    "SELECT device FROM devices WHERE downlink_reserved >= ? ORDER BY device", (U32_MAX,))]
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"cannot write to {self.path}: {exc}") from None
        return exhausted

    def generation(self) -> int:
        row = self._reader.execute("SELECT value FROM meta WHERE name = 'registry_generation'").fetchone()
        return int(row[0]) if row else 0

    def load_devices(self) -> dict[int, DeviceRecord]:
        return load_devices(self._reader)

    def open_commands(self) -> list[CommandRecord]:
        rows = self._reader.execute(
            f"SELECT {COMMAND_COLUMNS} FROM commands WHERE state IN {states_sql(OPEN_STATES)} ORDER BY id"
        ).fetchall()
        return [command_from_row(row) for row in rows]

    def register_devices(self, devices: Sequence[DeviceRecord], *, replace: bool = False, now: float,
                         before_commit: Callable[[], None] | None = None) -> None:
        with self.transaction() as conn:
            names = dict(conn.execute("SELECT device, name FROM devices").fetchall())
            registered = {device for device, name in names.items() if name}
            if not replace:
                for record in devices:
                    if record.device in registered:
                        raise DeviceExistsError(record.device)
            conn.executemany(
                "INSERT INTO devices (device, name, iccid, phone, village, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET name = excluded.name, "
                "iccid = excluded.iccid, phone = excluded.phone, village = excluded.village, "
                "updated_at = excluded.updated_at",
                [(d.device, d.name, d.iccid, d.phone, d.village, now, now) for d in devices])
            conn.executemany("DELETE FROM contacts WHERE device = ?", [(d.device,) for d in devices])
            conn.executemany("INSERT INTO contacts (device, key, number, name) VALUES (?, ?, ?, ?)",
                             [(d.device, c.key, c.number, c.name) for d in devices for c in d.contacts])
            SQLiteEventLog.append(conn, registry_changes(devices, [d for d, n in names.items() if not n], now))
            if before_commit is not None:
                before_commit()

    def remove_device(self, device: int, *, now: float,
                      before_commit: Callable[[], None] | None = None) -> DeviceRecord:
        with self.transaction() as conn:
            record = load_devices(conn, device).get(device)
            if record is None or not record.name:
                raise UnknownDeviceError(not_registered(device))
            conn.execute("UPDATE devices SET name = '', iccid = NULL, phone = NULL, village = NULL, updated_at = ? "
                         "WHERE device = ?", (now, device))
            conn.execute("DELETE FROM contacts WHERE device = ?", (device,))
            conn.executemany(UPDATE_COMMAND, [lifecycle.cancel(command, now, REMOVED_DETAIL)
                                              for command in list_commands(conn, device, open_only=True)])
            conn.execute("DELETE FROM engine_settings WHERE scope = ?", (str(device),))
            SQLiteEventLog.append(conn, [registry_event(device, "removed", now)])
            if before_commit is not None:
                before_commit()
        return record

    def queue_command(self, device: int, cmd: str, make_args: Callable[[int], dict[str, Any]],
                      now: float) -> CommandRecord:
        with self.transaction() as conn:
            queued = alert_tables.queue_command(conn, device, cmd, make_args, now)
        if queued is None:
            raise UnknownDeviceError(not_registered(device))
        return queued

    def cancel_command(self, device: int, seq: int, now: float) -> CommandRecord:
        with self.transaction() as conn:
            found = [command for command in list_commands(conn, device) if command.seq == seq]
            if not found:
                raise LookupError(f"device {device} has no command with seq {seq}")
            command = found[-1]
            change = lifecycle.cancel(command, now)
            conn.execute(UPDATE_COMMAND, change)
        lifecycle.apply(command, change)
        return command

    def list_commands(self, device: int | None = None, *, open_only: bool = False,
                      limit: int | None = None) -> list[CommandRecord]:
        return list_commands(self._reader, device, open_only=open_only, limit=limit)

    # --- alerts and the engine (alerts.py) ------------------------------------------------------

    def list_alerts(self, *, device: int | None = None, states: Iterable[str] | None = None,
                    kinds: Iterable[str] | None = None, since: float | None = None,
                    limit: int | None = None) -> list[AlertRecord]:
        return alert_tables.list_alerts(self._reader, device=device, states=states, kinds=kinds,
                                        since=since, limit=limit)

    def get_alert(self, alert_id: str) -> AlertRecord | None:
        return alert_tables.get_alert(self._reader, alert_id)

    def request_alert_action(self, alert_id: str, action: str, by: str, *, reason: str | None = None,
                             source: str = "cli", now: float) -> AlertAction:
        alert_tables.check_request(alert_id, action, by, reason, source)
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    request = alert_tables.request_alert_action(conn, alert_id, action, by, reason, source, now)
                except BaseException:
                    self._rollback()
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"cannot queue the request in {self.path}: {exc}") from None
        return request

    def pending_alert_actions(self, limit: int = 1000) -> list[AlertAction]:
        return alert_tables.pending_alert_actions(self._reader, limit)

    def list_alert_actions(self, alert_id: str | None = None, *,
                           limit: int | None = None) -> list[AlertAction]:
        return alert_tables.list_alert_actions(self._reader, alert_id, limit)

    def load_engine(self, name: str) -> EngineCheckpoint | None:
        return alert_tables.load_engine(self._reader, name)

    def commit_engine(self, name: str, commit: EngineCommit) -> EngineCommitResult:
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = alert_tables.commit_engine(conn, name, commit, time.time())
                conn.execute("COMMIT")
            except (sqlite3.Error, ValueError, TypeError) as exc:
                self._rollback()
                raise StoreError(f"engine {name!r}: cannot commit to {self.path}: {exc}") from None
        return result

    def load_engine_settings(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        return alert_tables.load_engine_settings(self._reader)

    def save_engine_settings(self, defaults: Mapping[str, Any] | None,
                             devices: Mapping[int, Mapping[str, Any]], now: float, *,
                             replace: bool = False) -> None:
        with self.transaction() as conn:  # bumps the registry generation
            alert_tables.save_engine_settings(conn, defaults, devices, now, replace)

    def close(self) -> None:
        for conn in {id(self._reader): self._reader, id(self._writer): self._writer}.values():
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # --- admin side (CLI commands; also usable while a receiver runs) ----------------------------

    @property
    def connection(self) -> sqlite3.Connection:
        return self._writer

    def transaction(self) -> "_Transaction":
        return _Transaction(self._writer, self._write_lock, self.path)


class SQLiteRegistryReader(RegistryReader):
    """The registry in the ingest database, read-only (it works in a read-only data folder too);
    connected at the first read."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def _read(self, read: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            if self._conn is None:
                self._conn = connect_readonly(self.path, StoreError, where=f"device registry {self.path}")
            return read(self._conn)
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot read the device registry in {self.path}: {exc}") from None

    def generation(self) -> int:
        row = self._read(lambda conn: conn.execute(
            "SELECT value FROM meta WHERE name = 'registry_generation'").fetchone())
        return int(row[0]) if row else 0

    def load_devices(self) -> dict[int, DeviceRecord]:
        return self._read(load_devices)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _Transaction:
    """`with store.transaction() as conn:` BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error,
    bumping the registry generation so a running receiver reloads."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock, path: Path):
        self.conn = conn
        self.lock = lock
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.lock.release()
            raise StoreError(f"cannot write to {self.path}: {exc}") from None
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self.conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'registry_generation'")
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error as error:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise StoreError(f"cannot write to {self.path}: {error}") from None
        finally:
            self.lock.release()


def load_devices(conn: sqlite3.Connection, device: int | None = None) -> dict[int, DeviceRecord]:
    """The registry's rows (contacts included), by device; or only `device`'s."""
    where, params = ("WHERE device = ?", (device,)) if device is not None else ("", ())
    devices: dict[int, DeviceRecord] = {}
    for row in conn.execute(
            "SELECT device, name, iccid, phone, created_at, updated_at, last_seen, last_counter, "
            f"last_source, frames_stored, downlink_reserved, village FROM devices {where} ORDER BY device", params):
        devices[row[0]] = DeviceRecord(row[0], row[1], row[2], row[3], [], *row[4:])
    for device_, key, number, name in conn.execute(
            f"SELECT device, key, number, name FROM contacts {where} ORDER BY device, key", params):
        if device_ in devices:
            devices[device_].contacts.append(Contact(key, number, name))
    return devices


def list_commands(conn: sqlite3.Connection, device: int | None = None, *,
                  open_only: bool = False, limit: int | None = None) -> list[CommandRecord]:
    where, params = [], []
    if device is not None:
        where.append("device = ?")
        params.append(device)
    if open_only:
        where.append(f"state IN {states_sql(OPEN_STATES)}")
    rows = oldest_first(lambda sql, args: conn.execute(sql, args).fetchall(),
                        f"SELECT {COMMAND_COLUMNS} FROM commands", where, params, ("id",), limit)
    return [command_from_row(row) for row in rows]
