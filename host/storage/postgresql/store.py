"""The storage interfaces on PostgreSQL (psycopg 3, pooled connections): for several receivers
sharing one database.

What one process's memory cannot promise, the database does: a frame is stored once (the unique
(device, counter) index of the event log); command seqs and downlink counter reservations are
changed under row locks (`FOR UPDATE`, `UPDATE ... RETURNING`, GREATEST), so two receivers never
hand out the same one; the event log's seqs come from one locked row (meta.event_log_seq), so
they follow commit order and a reader's cursor never passes an event still being committed.

Writes are batched: a commit's frames go in with COPY, its other rows with one executemany (a
pipeline: one round trip). Each public method takes a connection from the pool; `prepare` keeps
its connection (and transaction) until `finish` or `abort`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from carecard.host import downlink_lifecycle as lifecycle
from carecard.host.downlink_lifecycle import CHANGE_COLUMNS, OPEN_STATES, CommandRecord
from carecard.host.events import REGISTRY_KIND, event_json, registry_event
from carecard.host.storage import (
    ALERT_STATES,
    FRAME_ROW,
    AlertAction,
    AlertRecord,
    AlertStateError,
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
    EventLogError,
    EventLogReader,
    IngestStore,
    LogEntry,
    StoreError,
    UnknownAlertError,
    UnknownDeviceError,
    log_entries,
    not_registered,
    registry_changes,
    REMOVED_DETAIL,
    is_postgresql_url,
)
from carecard.host.storage.rows import (
    check_fence,
    engine_settings_from_rows,
    engine_settings_rows,
    ALERT_COLUMNS,
    COMMAND_COLUMNS,
    action_from_row,
    alert_from_row,
    alert_to_row,
    command_from_row,
    oldest_first,
)
from carecard.host.storage.postgresql.schema import MIGRATION_LOCK, MIGRATIONS, SCHEMA_VERSION
from carecard.host.storage.sqlite.alerts import check_request, refusal_for

log = logging.getLogger("carecard.storage.postgresql")

U32_MAX = 0xFFFFFFFF  # the largest downlink counter
POOL_SIZE = 4
CONNECT_TIMEOUT_S = 10.0

_OPEN = tuple(OPEN_STATES)
_UPDATE_COMMAND = ("UPDATE commands SET " + ", ".join(f"{column} = %s" for column in CHANGE_COLUMNS[:-1])
                   + " WHERE id = %s AND state = ANY(%s)")
_DEVICE_STATS = (
    "INSERT INTO devices AS d (device, name, created_at, updated_at, last_seen, last_counter, last_source, "
    "frames_stored) VALUES (%(device)s, '', %(seen)s, %(seen)s, %(seen)s, %(counter)s, %(source)s, %(added)s) "
    "ON CONFLICT (device) DO UPDATE SET last_seen = GREATEST(COALESCE(d.last_seen, 0), excluded.last_seen), "
    "last_counter = GREATEST(COALESCE(d.last_counter, -1), excluded.last_counter), "
    "last_source = excluded.last_source, frames_stored = d.frames_stored + excluded.frames_stored"
)
_RESERVE = (
    "INSERT INTO devices AS d (device, name, created_at, updated_at, downlink_reserved) "
    "VALUES (%s, '', %s, %s, %s) "
    "ON CONFLICT (device) DO UPDATE SET downlink_reserved = GREATEST(d.downlink_reserved, excluded.downlink_reserved)"
)
# A new block of downlink counters from %(first)s on: taken only if nobody has reserved that far.
_CLAIM = (
    "INSERT INTO devices AS d (device, name, created_at, updated_at, downlink_reserved) "
    "VALUES (%s, '', %s, %s, %s) "
    "ON CONFLICT (device) DO UPDATE SET downlink_reserved = excluded.downlink_reserved "
    "WHERE d.downlink_reserved < %s RETURNING device"
)
_FRAME_COPY = f"COPY event_log (seq, event_id, body, appended_at, {', '.join(FRAME_ROW)}) FROM STDIN"
_TAKE_SEQS = "UPDATE meta SET value = value + %s WHERE name = 'event_log_seq' RETURNING value"
_BUMP_GENERATION = "UPDATE meta SET value = value + 1 WHERE name = 'registry_generation'"
_ACTION_COLUMNS = ("id, alert_id, device, action, by_whom, reason, source, requested_at, outcome, "
                   "detail, handled_at")
_UPSERT_ALERT = (f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS)}) VALUES "
                 f"({', '.join(['%s'] * len(ALERT_COLUMNS))}) ON CONFLICT (id) DO UPDATE SET "
                 + ", ".join(f"{c} = excluded.{c}" for c in ALERT_COLUMNS[1:]))


def display_name(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


def migrate(conn: psycopg.Connection, where: str) -> int:
    """Apply the migrations this database has not had (under the migration lock); return the
    schema version. Raises StoreError for a database of a newer carecard."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                     "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        applied = int(row[0]) if row else 0
        if applied > SCHEMA_VERSION:
            raise StoreError(f"database {where} has schema version {applied}; this version of carecard "
                             f"knows up to {SCHEMA_VERSION}: upgrade carecard")
        for version, description, statements in MIGRATIONS:
            if version <= applied:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)", (version, description, time.time()))
            log.info("database %s: applied schema migration %d (%s)", where, version, description)
    return SCHEMA_VERSION


def _pool(url: str, size: int, where: str) -> ConnectionPool:
    # one direct connection first: a refused connection, a failed authentication or a missing
    # database is one clear line at once, not a pool retrying in the background
    try:
        psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT_S)).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"cannot connect to {where}: {reason}") from None
    pool = ConnectionPool(url, min_size=1, max_size=size, open=False, timeout=CONNECT_TIMEOUT_S,
                          kwargs={"autocommit": False}, name=where)
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
    except PoolTimeout:
        pool.close()
        raise StoreError(f"cannot connect to {where} within {CONNECT_TIMEOUT_S:g} s") from None
    return pool


def _take_seqs(conn: psycopg.Connection, count: int) -> int:
    """Reserve `count` seqs of the event log (locking its seq row until the commit); the last."""
    row = conn.execute(_TAKE_SEQS, (count,)).fetchone()
    assert row is not None
    return int(row[0])


def _claim_above(cur: psycopg.Cursor[Any], device: int, size: int) -> tuple[int, int]:
    """Reserve the next `size` downlink counters of `device` above its stored reservation (its
    row locked by the caller); (first, last) of the block."""
    row = cur.execute("SELECT downlink_reserved FROM devices WHERE device = %s", (device,)).fetchone()
    assert row is not None  # the claim found the row
    first = int(row[0]) + 1
    if first > U32_MAX:
        raise StoreError(f"device {device}: the downlink counter is exhausted (every counter up to "
                         f"{U32_MAX} is reserved): the card needs a new key")
    last = min(first + size - 1, U32_MAX)
    cur.execute("UPDATE devices SET downlink_reserved = %s WHERE device = %s", (last, device))
    return first, last


def _copy_frames(conn: psycopg.Connection, frames: Sequence[tuple], last: int, now: float) -> None:
    """The frames into the event log, at seqs up to `last`."""
    first = last - len(frames) + 1
    with conn.cursor() as cur, cur.copy(_FRAME_COPY) as copy:
        for i, row in enumerate(frames):
            copy.write_row((first + i, "", "", now, *row))


def _copy_new_frames(conn: psycopg.Connection, batch: CommitBatch, last: int, now: float) -> int:
    """The batch's frames that no other writer has stored (`last` seqs taken for all of them, the
    seq row locked: every other writer's frames are committed); the others leave `batch.frames`,
    those stored with other content listed in `batch.frames_refused`. The log's last seq."""
    frames = batch.frames
    rows = conn.execute(
        "SELECT e.device, e.counter, e.tag FROM event_log e JOIN unnest(%s::bigint[], %s::bigint[]) "
        "AS k(device, counter) ON e.device = k.device AND e.counter = k.counter",
        ([row[0] for row in frames], [row[1] for row in frames])).fetchall()
    stored = {(int(device), int(counter)): bytes(tag) for device, counter, tag in rows}
    kept = []
    for row in frames:
        tag = stored.get((row[0], row[1]))
        if tag is None:
            kept.append(row)
        elif tag != bytes(row[2]):
            batch.frames_refused.append((row[0], row[1]))
    unused = len(frames) - len(kept)
    last -= unused
    conn.execute("UPDATE meta SET value = %s WHERE name = 'event_log_seq'", (last,))
    frames[:] = kept
    if kept:
        _copy_frames(conn, kept, last, now)
    return last


def _append_events(conn: psycopg.Connection, events: Sequence[Mapping[str, Any]], now: float) -> int:
    last = _take_seqs(conn, len(events))
    first = last - len(events) + 1
    with conn.cursor() as cur:
        # a `registry` event's row names its kind in `type`: pruning keeps it (the alert engine
        # may read it after every sink delivered it)
        cur.executemany("INSERT INTO event_log (seq, event_id, appended_at, body, type) VALUES (%s, %s, %s, %s, %s)",
                        [(first + i, event["id"], now, event_json(event),
                          REGISTRY_KIND if event.get("kind") == REGISTRY_KIND else None)
                         for i, event in enumerate(events)])
    return last


def _queue(conn: psycopg.Connection, device: int, cmd: str, args_for: Callable[[int], dict[str, Any]],
           now: float) -> CommandRecord | None:
    """Queue a command under the device's next seq (its row locked); None: not registered."""
    row = conn.execute("SELECT next_command_seq FROM devices WHERE device = %s FOR UPDATE", (device,)).fetchone()
    if row is None:
        return None
    counter = int(row[0])
    seq = (counter - 1) % 0xFFFF + 1  # 1..65535, wrapping
    args = args_for(seq)
    conn.execute("UPDATE devices SET next_command_seq = %s, updated_at = %s WHERE device = %s",
                 (counter + 1, now, device))
    found = conn.execute(
        "INSERT INTO commands (device, seq, cmd, args, state, attempts, created_at, updated_at) "
        "VALUES (%s, %s, %s, %s, %s, 0, %s, %s) RETURNING id",
        (device, seq, cmd, json.dumps(args, ensure_ascii=False), lifecycle.QUEUED, now, now)).fetchone()
    assert found is not None
    return CommandRecord(int(found[0]), device, seq, cmd, dict(args), lifecycle.QUEUED, 0, now, now)


def _load_devices(read: Callable[[str, Any], list[tuple]], device: int | None = None, *,
                  lock: bool = False) -> dict[int, DeviceRecord]:
    """The registry's rows (contacts included), by device; or only `device`'s (its row locked
    with `lock`)."""
    where, params = ("WHERE device = %s", (device,)) if device is not None else ("", ())
    devices: dict[int, DeviceRecord] = {}
    for row in read("SELECT device, name, iccid, phone, created_at, updated_at, last_seen, last_counter, "
                    f"last_source, frames_stored, downlink_reserved, village FROM devices {where} ORDER BY device"
                    + (" FOR UPDATE" if lock else ""), params):
        devices[row[0]] = DeviceRecord(row[0], row[1], row[2], row[3], [], *row[4:])
    for device_, key, number, name in read(
            f"SELECT device, key, number, name FROM contacts {where} ORDER BY device, key", params):
        if device_ in devices:
            devices[device_].contacts.append(Contact(key, number, name))
    return devices


class PostgreSQLStore(IngestStore, DeviceRegistry, CommandQueue, AlertStore, EngineStore, EngineSettingsStore):
    """Every storage interface but the reader's, on one PostgreSQL database (URL)."""

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE):
        self.url = url
        self.path = display_name(url)  # what messages name
        self._pool = _pool(url, pool_size, self.path)
        try:
            with self._pool.connection() as conn:
                migrate(conn, self.path)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"database {self.path}: cannot apply the schema: {exc}") from None
        except BaseException:
            self._pool.close()
            raise
        self._held: psycopg.Connection | None = None
        self._prune: tuple[int, int] | None = None
        self._hold_lock = threading.Lock()

    def _read(self, sql: str, params: Any = None) -> list[tuple]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, params).fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None

    def _write(self, what: str, work: Callable[[psycopg.Connection], Any],
               passes: tuple[type[BaseException], ...] = ()) -> Any:
        """`work(conn)` in a transaction of its own: committed, or rolled back on any error
        (database errors become StoreError; `passes` and other errors propagate as they are)."""
        try:
            with self._pool.connection() as conn:
                with conn.transaction():
                    return work(conn)
        except passes:
            raise
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"{what} in {self.path} failed: {str(exc).strip()}") from None

    # --- ingest side --------------------------------------------------------------------------

    def window_state(self, device: int, size: int) -> tuple[int, dict[int, bytes]]:
        rows = self._read("SELECT counter, tag FROM event_log WHERE device = %s ORDER BY counter DESC "
                          "LIMIT %s", (device, size))
        if not rows:
            return -1, {}
        highest = int(rows[0][0])
        return highest, {int(counter): bytes(tag) for counter, tag in rows if counter > highest - size}

    def stored_tag(self, device: int, counter: int) -> bytes | None:
        rows = self._read("SELECT tag FROM event_log WHERE device = %s AND counter = %s", (device, counter))
        return bytes(rows[0][0]) if rows else None

    def prepare(self, batch: CommitBatch) -> int:
        self._hold_lock.acquire()
        try:
            conn = self._held = self._pool.getconn()
        except PoolTimeout as exc:
            self._hold_lock.release()
            raise StoreError(f"commit to {self.path} failed: {exc}") from None
        try:
            now = time.time()
            with conn.cursor() as cur:
                # rows locked in device order: two receivers' batches never deadlock
                claimed = batch.downlink_claimed
                for device, reserved in sorted(batch.downlink_reserved.items()):
                    first = claimed.get(device)
                    if first is None:
                        cur.execute(_RESERVE, (device, now, now, reserved))
                    elif cur.execute(_CLAIM, (device, now, now, reserved, first)).fetchone() is None:
                        # another receiver reserved from `first` on meanwhile (the row is locked
                        # now): a block as large above its reservation, for this batch's acks
                        batch.downlink_granted[device] = _claim_above(cur, device, reserved - first + 1)
                if batch.device_stats:
                    cur.executemany(_DEVICE_STATS, [
                        {"device": d, "seen": seen, "counter": counter, "source": source, "added": added}
                        for d, seen, counter, source, added in sorted(batch.device_stats, key=lambda r: r[0])])
                if batch.commands:
                    cur.executemany(_UPDATE_COMMAND, [(*change[:-1], change[-1], list(_OPEN))
                                                      for change in batch.commands])
                for device, contacts in batch.contacts:
                    cur.execute("DELETE FROM contacts WHERE device = %s", (device,))
                    cur.executemany("INSERT INTO contacts (device, key, number, name) VALUES (%s, %s, %s, %s)",
                                    [(device, c.key, c.number, c.name) for c in contacts])
            self._prune = (batch.prune_upto, batch.prune_max_rows or 10_000) if batch.prune_upto else None
            if not batch.frames:
                row = conn.execute("SELECT value FROM meta WHERE name = 'event_log_seq'").fetchone()
                return int(row[0]) if row else 0
            # last: the log's seq row stays locked from here to the commit
            last = _take_seqs(conn, len(batch.frames))
            conn.execute("SAVEPOINT frames")
            try:
                _copy_frames(conn, batch.frames, last, now)
            except psycopg.errors.UniqueViolation:
                # another receiver stored some of these frames meanwhile (a card's retransmission
                # reached both, or a stale replay window here): store only the others
                conn.execute("ROLLBACK TO SAVEPOINT frames")
                last = _copy_new_frames(conn, batch, last, now)
            return last
        except BaseException as exc:
            self._release(commit=False)
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"commit to {self.path} failed: {str(exc).strip()}") from None
            raise

    def finish(self) -> int:
        conn = self._held
        assert conn is not None, "finish() without prepare()"
        pruned = 0
        try:
            if self._prune is not None:
                upto, max_rows = self._prune
                pruned = conn.execute(
                    "DELETE FROM event_log WHERE seq IN (SELECT seq FROM event_log WHERE device IS NULL "
                    "AND type IS NULL AND seq <= %s ORDER BY seq LIMIT %s)", (upto, max_rows)).rowcount
        except psycopg.Error as exc:
            self._release(commit=False)
            raise StoreError(f"commit to {self.path} failed: {str(exc).strip()}") from None
        self._release(commit=True)
        return max(pruned, 0)

    def abort(self) -> None:
        if self._held is not None:
            self._release(commit=False)

    def _release(self, *, commit: bool) -> None:
        conn, self._held, self._prune = self._held, None, None
        try:
            if conn is not None:
                try:
                    if commit:
                        conn.commit()
                    else:
                        conn.rollback()
                except psycopg.Error as exc:
                    if commit:
                        raise StoreError(f"commit to {self.path} failed: {str(exc).strip()}") from None
                finally:
                    self._pool.putconn(conn)
        finally:
            self._hold_lock.release()

    def append_events(self, events: list[Mapping[str, Any]]) -> int:
        if not events:
            return self._last_seq()
        now = time.time()
        return self._write("appending events", lambda conn: _append_events(conn, events, now))

    def _last_seq(self) -> int:
        rows = self._read("SELECT value FROM meta WHERE name = 'event_log_seq'")
        return int(rows[0][0]) if rows else 0

    def devices_without_history(self, keyed: Iterable[int]) -> list[int]:
        known = {row[0] for row in self._read("SELECT device FROM devices")}
        lost = {device for device in keyed if device not in known}
        lost.update(row[0] for row in self._read(
            "SELECT device FROM devices AS d WHERE frames_stored > 0 "
            "AND NOT EXISTS (SELECT 1 FROM event_log AS f WHERE f.device = d.device)"))
        return sorted(lost)

    def jump_downlink_counters(self, devices: Iterable[int], jump: int) -> list[int]:
        now = time.time()
        listed = sorted(set(devices))

        def work(conn: psycopg.Connection) -> list[int]:
            conn.execute("UPDATE devices SET downlink_reserved = LEAST(downlink_reserved + %s, %s)",
                         (jump, U32_MAX))
            with conn.cursor() as cur:
                cur.executemany(_RESERVE, [(device, now, now, min(jump, U32_MAX)) for device in listed])
            return [row[0] for row in conn.execute(
                "SELECT device FROM devices WHERE downlink_reserved >= %s ORDER BY device", (U32_MAX,))]

        return self._write("moving the downlink counters", work)

    def generation(self) -> int:
        rows = self._read("SELECT value FROM meta WHERE name = 'registry_generation'")
        return int(rows[0][0]) if rows else 0

    def load_devices(self) -> dict[int, DeviceRecord]:
        return _load_devices(self._read)

    def open_commands(self) -> list[CommandRecord]:
        return [command_from_row(row) for row in self._read(
            f"SELECT {COMMAND_COLUMNS} FROM commands WHERE state = ANY(%s) ORDER BY id", (list(_OPEN),))]

    # --- registry and command queue -------------------------------------------------------------

    def register_devices(self, devices: Sequence[DeviceRecord], *, replace: bool = False, now: float,
                         before_commit: Callable[[], None] | None = None) -> None:
        ordered = sorted(devices, key=lambda record: record.device)

        def work(conn: psycopg.Connection) -> None:
            ids = [record.device for record in ordered]
            names = dict(conn.execute(
                "SELECT device, name FROM devices WHERE device = ANY(%s) ORDER BY device FOR UPDATE",
                (ids,)).fetchall())
            registered = {device for device, name in names.items() if name}
            if not replace:
                for record in devices:
                    if record.device in registered:
                        raise DeviceExistsError(record.device)
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO devices (device, name, iccid, phone, village, created_at, updated_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device) DO UPDATE SET name = excluded.name, "
                    "iccid = excluded.iccid, phone = excluded.phone, village = excluded.village, "
                    "updated_at = excluded.updated_at",
                    [(r.device, r.name, r.iccid, r.phone, r.village, now, now) for r in ordered])
                cur.execute("DELETE FROM contacts WHERE device = ANY(%s)", (ids,))
                cur.executemany("INSERT INTO contacts (device, key, number, name) VALUES (%s, %s, %s, %s)",
                                [(r.device, c.key, c.number, c.name) for r in ordered for c in r.contacts])
            added = registry_changes(devices, [d for d, n in names.items() if not n], now)
            if added:
                _append_events(conn, added, now)
            conn.execute(_BUMP_GENERATION)
            if before_commit is not None:
                before_commit()

        self._write("registering devices", work, passes=(DeviceExistsError,))

    def remove_device(self, device: int, *, now: float,
                      before_commit: Callable[[], None] | None = None) -> DeviceRecord:
        def work(conn: psycopg.Connection) -> DeviceRecord:
            record = _load_devices(lambda sql, params: conn.execute(sql, params).fetchall(), device,
                                   lock=True).get(device)
            if record is None or not record.name:
                raise UnknownDeviceError(not_registered(device))
            conn.execute("UPDATE devices SET name = '', iccid = NULL, phone = NULL, village = NULL, updated_at = %s "
                         "WHERE device = %s", (now, device))
            conn.execute("DELETE FROM contacts WHERE device = %s", (device,))
            rows = conn.execute(f"SELECT {COMMAND_COLUMNS} FROM commands WHERE device = %s AND state = ANY(%s) "
                                "ORDER BY id FOR UPDATE", (device, list(_OPEN))).fetchall()
            changes = [lifecycle.cancel(command_from_row(row), now, REMOVED_DETAIL) for row in rows]
            if changes:
                with conn.cursor() as cur:
                    cur.executemany(_UPDATE_COMMAND, [(*change[:-1], change[-1], list(_OPEN)) for change in changes])
            conn.execute("DELETE FROM engine_settings WHERE scope = %s", (str(device),))
            _append_events(conn, [registry_event(device, "removed", now)], now)
            conn.execute(_BUMP_GENERATION)
            if before_commit is not None:
                before_commit()
            return record

        return self._write("removing a device", work, passes=(UnknownDeviceError,))

    def queue_command(self, device: int, cmd: str, make_args: Callable[[int], dict[str, Any]],
                      now: float) -> CommandRecord:
        def work(conn: psycopg.Connection) -> CommandRecord:
            queued = _queue(conn, device, cmd, make_args, now)
            if queued is None:
                raise UnknownDeviceError(not_registered(device))
            conn.execute(_BUMP_GENERATION)
            return queued

        return self._write("queueing a command", work, passes=(UnknownDeviceError,))

    def cancel_command(self, device: int, seq: int, now: float) -> CommandRecord:
        def work(conn: psycopg.Connection) -> CommandRecord:
            row = conn.execute(f"SELECT {COMMAND_COLUMNS} FROM commands WHERE device = %s AND seq = %s "
                               "ORDER BY id DESC LIMIT 1 FOR UPDATE", (device, seq)).fetchone()
            if row is None:
                raise LookupError(f"device {device} has no command with seq {seq}")
            command = command_from_row(row)
            change = lifecycle.cancel(command, now)
            conn.execute(_UPDATE_COMMAND, (*change[:-1], change[-1], list(_OPEN)))
            conn.execute(_BUMP_GENERATION)
            lifecycle.apply(command, change)
            return command

        return self._write("cancelling a command", work, passes=(LookupError, lifecycle.CommandStateError))

    def list_commands(self, device: int | None = None, *, open_only: bool = False,
                      limit: int | None = None) -> list[CommandRecord]:
        where, params = [], []
        if device is not None:
            where.append("device = %s")
            params.append(device)
        if open_only:
            where.append("state = ANY(%s)")
            params.append(list(_OPEN))
        rows = oldest_first(self._read, f"SELECT {COMMAND_COLUMNS} FROM commands", where, params,
                            ("id",), limit)
        return [command_from_row(row) for row in rows]

    # --- alerts and the engine ------------------------------------------------------------------

    def list_alerts(self, *, device: int | None = None, states: Iterable[str] | None = None,
                    kinds: Iterable[str] | None = None, since: float | None = None,
                    limit: int | None = None) -> list[AlertRecord]:
        where: list[str] = []
        params: list[Any] = []
        if device is not None:
            where.append("device = %s")
            params.append(device)
        for column, values in (("state", states), ("kind", kinds)):
            if values is not None:
                where.append(f"{column} = ANY(%s)")
                params.append(list(values))
        if since is not None:
            where.append("opened_at >= %s")
            params.append(since)
        rows = oldest_first(self._read, f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts", where, params,
                            ("opened_at", "id"), limit)
        return [alert_from_row(row) for row in rows]

    def get_alert(self, alert_id: str) -> AlertRecord | None:
        rows = self._read(f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE id = %s", (alert_id,))
        return alert_from_row(rows[0]) if rows else None

    def request_alert_action(self, alert_id: str, action: str, by: str, *, reason: str | None = None,
                             source: str = "cli", now: float) -> AlertAction:
        check_request(alert_id, action, by, reason, source)

        def work(conn: psycopg.Connection) -> AlertAction:
            row = conn.execute(f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE id = %s FOR UPDATE",
                               (alert_id,)).fetchone()
            if row is None:
                raise UnknownAlertError(f"no alert has the id {alert_id!r}: list them with `carecard alerts`")
            alert = alert_from_row(row)
            refusal = refusal_for(alert, action)
            if refusal is not None:
                raise AlertStateError(refusal)
            found = conn.execute(
                "INSERT INTO alert_actions (alert_id, device, action, by_whom, reason, source, requested_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (alert_id, alert.device, action, by, reason, source, now)).fetchone()
            assert found is not None
            return AlertAction(int(found[0]), alert_id, alert.device, action, by, reason, source, now)

        return self._write("queueing the request", work, passes=(UnknownAlertError, AlertStateError))

    def pending_alert_actions(self, limit: int = 1000) -> list[AlertAction]:
        return [action_from_row(row) for row in self._read(
            f"SELECT {_ACTION_COLUMNS} FROM alert_actions WHERE outcome IS NULL ORDER BY id LIMIT %s",
            (int(limit),))]

    def list_alert_actions(self, alert_id: str | None = None, *,
                           limit: int | None = None) -> list[AlertAction]:
        sql = f"SELECT {_ACTION_COLUMNS} FROM alert_actions"
        params: list[Any] = []
        if alert_id is not None:
            sql += " WHERE alert_id = %s"
            params.append(alert_id)
        sql += " ORDER BY id DESC" if limit else " ORDER BY id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        rows = self._read(sql, params)
        if limit:
            rows.reverse()
        return [action_from_row(row) for row in rows]

    def load_engine(self, name: str) -> EngineCheckpoint | None:
        rows = self._read("SELECT cursor, now, saved_at FROM engine_checkpoint WHERE name = %s", (name,))
        if not rows:
            return None
        devices = {int(device): state for device, state in self._read(
            "SELECT device, state FROM engine_device WHERE name = %s ORDER BY device", (name,))}
        cursor, now, saved_at = rows[0]
        return EngineCheckpoint(int(cursor), float(now), devices, float(saved_at))

    def commit_engine(self, name: str, commit: EngineCommit) -> EngineCommitResult:
        stamp = time.time()

        def work(conn: psycopg.Connection) -> EngineCommitResult:
            result = EngineCommitResult(last_seq=0)
            # the checkpoint row locked: two workers of one name never interleave their commits
            row = conn.execute("SELECT cursor, saved_at FROM engine_checkpoint WHERE name = %s FOR UPDATE",
                               (name,)).fetchone()
            result.saved_at = check_fence(name, commit, row[1] if row else None, stamp)
            if row is not None and commit.cursor < row[0]:
                raise ValueError(f"cursor {commit.cursor} is behind the committed {row[0]}")
            for alert in commit.alerts:
                if alert.state not in ALERT_STATES:
                    raise ValueError(f"alert {alert.id}: state {alert.state!r} is not one of "
                                     f"{', '.join(ALERT_STATES)}")
            with conn.cursor() as cur:
                if commit.alerts:
                    cur.executemany(_UPSERT_ALERT, [alert_to_row(alert) for alert in commit.alerts])
                if commit.actions:
                    cur.executemany("UPDATE alert_actions SET outcome = %s, detail = %s, handled_at = %s "
                                    "WHERE id = %s", [(outcome, detail, at, action_id)
                                                      for action_id, outcome, detail, at in commit.actions])
            for device, cmd, args in commit.commands:
                # queued at the engine's clock: its time to live runs from the engine's decision
                queued = _queue(conn, device, cmd, lambda _seq, args=args: dict(args), commit.now)
                if queued is None:
                    result.skipped_commands.append((device, cmd, f"device {device} is not registered"))
                else:
                    result.commands.append(queued)
            if result.commands:
                conn.execute(_BUMP_GENERATION)
            forget = [(name, device) for device, state in commit.devices.items() if state is None]
            keep = [(name, device, state) for device, state in sorted(commit.devices.items()) if state is not None]
            with conn.cursor() as cur:
                if forget:
                    cur.executemany("DELETE FROM engine_device WHERE name = %s AND device = %s", forget)
                if keep:
                    cur.executemany("INSERT INTO engine_device (name, device, state) VALUES (%s, %s, %s) "
                                    "ON CONFLICT (name, device) DO UPDATE SET state = excluded.state", keep)
            conn.execute("INSERT INTO engine_checkpoint (name, cursor, now, saved_at) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, now = excluded.now, "
                         "saved_at = excluded.saved_at", (name, commit.cursor, commit.now, result.saved_at))
            # last: the log's seq row stays locked only from here to the commit
            if commit.events:
                result.last_seq = _append_events(conn, commit.events, stamp)
            else:
                found = conn.execute("SELECT value FROM meta WHERE name = 'event_log_seq'").fetchone()
                result.last_seq = int(found[0]) if found else 0
            return result

        try:
            return self._write(f"engine {name!r}: commit", work)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"engine {name!r}: cannot commit to {self.path}: {exc}") from None

    def load_engine_settings(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        return engine_settings_from_rows(self._read("SELECT scope, settings FROM engine_settings ORDER BY scope"))

    def save_engine_settings(self, defaults: Mapping[str, Any] | None,
                             devices: Mapping[int, Mapping[str, Any]], now: float, *,
                             replace: bool = False) -> None:
        def work(conn: psycopg.Connection) -> None:
            wanted = sorted(int(device) for device in devices)
            known = {row[0] for row in conn.execute(
                "SELECT device FROM devices WHERE device = ANY(%s) ORDER BY device FOR SHARE", (wanted,))}
            missing = [device for device in wanted if device not in known]
            if missing:
                raise UnknownDeviceError.of(missing)
            if replace:
                conn.execute("DELETE FROM engine_settings" + (" WHERE scope != 'defaults'" if defaults is None else ""))
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO engine_settings (scope, settings, updated_at) VALUES (%s, %s, %s) "
                                "ON CONFLICT (scope) DO UPDATE SET settings = excluded.settings, "
                                "updated_at = excluded.updated_at", engine_settings_rows(defaults, devices, now))
            conn.execute(_BUMP_GENERATION)

        self._write("saving the alert engine's settings", work, passes=(UnknownDeviceError,))

    def close(self) -> None:
        self._pool.close()


class PostgreSQLEventLog(EventLogReader):
    """The event log and the readers' cursors on PostgreSQL: one connection, used from worker
    threads (thread-safe: psycopg serialises a connection's use)."""

    def __init__(self, url: str):
        self.url = url
        self.path = display_name(url)
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S))
        except psycopg.Error as exc:
            raise EventLogError(f"cannot open event log {self.path}: {str(exc).strip()}") from None
        try:
            found = self._conn.execute("SELECT to_regclass('event_log'), to_regclass('sink_cursor')").fetchone()
        except psycopg.Error as exc:
            self._conn.close()
            raise EventLogError(f"cannot open event log {self.path}: {exc}") from None
        if found is None or None in found:
            self._conn.close()
            raise EventLogError(f"{self.path} has no event log: start the receiver (carecard receive "
                                "--store URL) on it first")

    def _rows(self, sql: str, params: Any = None) -> list[tuple]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise EventLogError(f"cannot read the event log in {self.path}: {str(exc).strip()}") from None

    def entries_after(self, seq: int, limit: int = 1000) -> list[LogEntry]:
        rows = self._rows("SELECT seq, appended_at, body, opened, received_at FROM event_log "
                          "WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit))
        return log_entries(rows, self.path)

    def last_seq(self) -> int:
        rows = self._rows("SELECT value FROM meta WHERE name = 'event_log_seq'")
        return int(rows[0][0]) if rows else 0

    def first_seq(self) -> int:
        rows = self._rows("SELECT MIN(seq) FROM event_log")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def load_cursor(self, name: str) -> int | None:
        rows = self._rows("SELECT seq FROM sink_cursor WHERE name = %s", (name,))
        return int(rows[0][0]) if rows else None

    def save_cursor(self, name: str, seq: int) -> None:
        self._rows("INSERT INTO sink_cursor (name, seq, updated_at) VALUES (%s, %s, %s) "
                   "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at "
                   "RETURNING seq", (name, seq, time.time()))

    def cursors(self) -> dict[str, int]:
        return {name: int(seq) for name, seq in self._rows("SELECT name, seq FROM sink_cursor")}

    def close(self) -> None:
        self._conn.close()
