"""The alert engine's tables in SQLite (storage.AlertStore, storage.EngineStore), in the ingest
database (DATA/carecard.sqlite) beside the event log, so that one transaction holds an engine
step: its alert events, its alert rows, the requests it handled, its check-in prompts and its
cursor.

    alerts(id, device, kind, state, step, opened_at, updated_at, notified, acknowledged_by,
           acknowledged_at, closed_reason, closed_by, closed_at, prompt_id, details)
                                       one row per alert, as the engine last committed it
                                       (notified, details: JSON)
    alert_actions(id, alert_id, device, action, by_whom, reason, source, requested_at,
                  outcome, detail, handled_at)
                                       acknowledge/resolve requests in queue order; outcome
                                       NULL until the engine handled it
    engine_checkpoint(name, cursor, now, saved_at)
    engine_device(name, device, state) each device's engine state (JSON text)
    engine_settings(scope, settings, updated_at)
                                       the engine's settings: scope "defaults" or a device
                                       (decimal text), settings a table of the settings file (JSON)
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable

from carecard.host import downlink_lifecycle as lifecycle
from carecard.host.downlink_lifecycle import CommandRecord
from carecard.host.storage import (
    ALERT_ACTIONS,
    ALERT_BY_MAX,
    ALERT_REASON_MAX,
    ALERT_SOURCE_MAX,
    ALERT_STATES,
    AlertAction,
    AlertActionError,
    AlertRecord,
    AlertStateError,
    EngineCheckpoint,
    EngineCommit,
    EngineCommitResult,
    UnknownAlertError,
)
from carecard.host.storage.rows import (
    check_fence,
    engine_settings_from_rows,
    engine_settings_rows,
    ALERT_COLUMNS,
    action_from_row,
    alert_from_row,
    alert_to_row,
    oldest_first,
)
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS alerts (
        id TEXT PRIMARY KEY,
        device INTEGER NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        step TEXT NOT NULL,
        opened_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        notified TEXT NOT NULL,
        acknowledged_by TEXT,
        acknowledged_at REAL,
        closed_reason TEXT,
        closed_by TEXT,
        closed_at REAL,
        prompt_id INTEGER,
        details TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS alerts_by_opened ON alerts (opened_at, id)",
    "CREATE INDEX IF NOT EXISTS alerts_by_device ON alerts (device, opened_at)",
    "CREATE INDEX IF NOT EXISTS alerts_not_resolved ON alerts (opened_at) WHERE state != 'resolved'",
    """CREATE TABLE IF NOT EXISTS alert_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        alert_id TEXT NOT NULL,
        device INTEGER NOT NULL,
        action TEXT NOT NULL,
        by_whom TEXT NOT NULL,
        reason TEXT,
        source TEXT NOT NULL,
        requested_at REAL NOT NULL,
        outcome TEXT,
        detail TEXT,
        handled_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS alert_actions_pending ON alert_actions (id) WHERE outcome IS NULL",
    "CREATE INDEX IF NOT EXISTS alert_actions_by_alert ON alert_actions (alert_id, id)",
    """CREATE TABLE IF NOT EXISTS engine_checkpoint (
        name TEXT PRIMARY KEY,
        cursor INTEGER NOT NULL,
        now REAL NOT NULL,
        saved_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS engine_settings (
        scope TEXT PRIMARY KEY,
        settings TEXT NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS engine_device (
        name TEXT NOT NULL,
        device INTEGER NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (name, device)
    ) WITHOUT ROWID""",
)

_ACTION_COLUMNS = ("id", "alert_id", "device", "action", "by_whom", "reason", "source",
                   "requested_at", "outcome", "detail", "handled_at")
_UPSERT_ALERT = (f"INSERT OR REPLACE INTO alerts ({', '.join(ALERT_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(ALERT_COLUMNS))})")


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if missing (inside the caller's transaction)."""
    for statement in SCHEMA:
        conn.execute(statement)


def list_alerts(conn: sqlite3.Connection, *, device: int | None = None,
                states: Iterable[str] | None = None, kinds: Iterable[str] | None = None,
                since: float | None = None, limit: int | None = None) -> list[AlertRecord]:
    where: list[str] = []
    params: list[Any] = []
    if device is not None:
        where.append("device = ?")
        params.append(device)
    for column, values in (("state", states), ("kind", kinds)):
        if values is not None:
            values = list(values)
            where.append(f"{column} IN ({', '.join('?' * len(values))})" if values else "0")
            params.extend(values)
    if since is not None:
        where.append("opened_at >= ?")
        params.append(since)
    rows = oldest_first(lambda sql, args: conn.execute(sql, args).fetchall(),
                        f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts", where, params,
                        ("opened_at", "id"), limit)
    return [alert_from_row(row) for row in rows]


def get_alert(conn: sqlite3.Connection, alert_id: str) -> AlertRecord | None:
    row = conn.execute(f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    return None if row is None else alert_from_row(row)


def _text(value: Any, what: str, limit: int, alert_id: str, *, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        raise AlertActionError(f"alert {alert_id}: {what} must be {'non-empty ' if required else ''}text "
                               f"of at most {limit} characters, got {value!r:.60}")
    return value


def check_request(alert_id: Any, action: Any, by: Any, reason: Any, source: Any) -> None:
    """The checks of a request that need no database (AlertActionError)."""
    if not isinstance(alert_id, str) or not 0 < len(alert_id) <= 200:
        raise AlertActionError(f"alert id must be non-empty text of at most 200 characters, got {alert_id!r:.60}")
    if action not in ALERT_ACTIONS:
        raise AlertActionError(f"alert {alert_id}: unknown action {action!r}: one of {', '.join(ALERT_ACTIONS)}")
    _text(by, "who asks (by)", ALERT_BY_MAX, alert_id, required=True)
    _text(reason, "the reason", ALERT_REASON_MAX, alert_id, required=False)
    _text(source, "the source", ALERT_SOURCE_MAX, alert_id, required=True)


def request_alert_action(conn: sqlite3.Connection, alert_id: str, action: str, by: str,
                         reason: str | None, source: str, now: float) -> AlertAction:
    """Inside the caller's transaction: check the alert and queue the request."""
    check_request(alert_id, action, by, reason, source)
    alert = get_alert(conn, alert_id)
    if alert is None:
        raise UnknownAlertError(f"no alert has the id {alert_id!r}: list them with `carecard alerts`")
    refusal = refusal_for(alert, action)
    if refusal is not None:
        raise AlertStateError(refusal)
    cursor = conn.execute(
        "INSERT INTO alert_actions (alert_id, device, action, by_whom, reason, source, requested_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (alert_id, alert.device, action, by, reason, source, now))
    return AlertAction(int(cursor.lastrowid or 0), alert_id, alert.device, action, by, reason, source, now)


def refusal_for(alert: AlertRecord, action: str) -> str | None:
    """Why `action` cannot change `alert` now (None: it can)."""
    if alert.state == "resolved":
        how = f"by {alert.closed_by}" if alert.closed_by else f"({alert.closed_reason})"
        return f"alert {alert.id} is already resolved {how}: nothing to {action}"
    if action == "acknowledge" and alert.state == "acknowledged":
        return (f"alert {alert.id} is already acknowledged by {alert.acknowledged_by}: resolve it "
                "when it is over")
    return None


def pending_alert_actions(conn: sqlite3.Connection, limit: int) -> list[AlertAction]:
    rows = conn.execute(f"SELECT {', '.join(_ACTION_COLUMNS)} FROM alert_actions WHERE outcome IS NULL "
                        "ORDER BY id LIMIT ?", (int(limit),)).fetchall()
    return [action_from_row(row) for row in rows]


def list_alert_actions(conn: sqlite3.Connection, alert_id: str | None, limit: int | None) -> list[AlertAction]:
    sql = f"SELECT {', '.join(_ACTION_COLUMNS)} FROM alert_actions"
    params: list[Any] = []
    if alert_id is not None:
        sql += " WHERE alert_id = ?"
        params.append(alert_id)
    sql += " ORDER BY id DESC" if limit else " ORDER BY id"
    if limit:
        sql += f" LIMIT {int(limit)}"
    rows = conn.execute(sql, params).fetchall()
    if limit:
        rows.reverse()
    return [action_from_row(row) for row in rows]


def load_engine(conn: sqlite3.Connection, name: str) -> EngineCheckpoint | None:
    row = conn.execute("SELECT cursor, now, saved_at FROM engine_checkpoint WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    devices = {device: state for device, state in conn.execute(
        "SELECT device, state FROM engine_device WHERE name = ? ORDER BY device", (name,))}
    return EngineCheckpoint(int(row[0]), float(row[1]), devices, float(row[2]))


def commit_engine(conn: sqlite3.Connection, name: str, commit: EngineCommit, now: float) -> EngineCommitResult:
    """Inside the caller's transaction (BEGIN IMMEDIATE): write everything of `commit`."""
    result = EngineCommitResult(last_seq=0)
    row = conn.execute("SELECT cursor, saved_at FROM engine_checkpoint WHERE name = ?", (name,)).fetchone()
    now = result.saved_at = check_fence(name, commit, row[1] if row else None, now)
    if row is not None and commit.cursor < row[0]:
        raise ValueError(f"engine {name!r}: cursor {commit.cursor} is behind the committed {row[0]}")
    if commit.events:
        result.last_seq = SQLiteEventLog.append(conn, commit.events, now=now)
    else:
        found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'event_log'").fetchone()
        result.last_seq = int(found[0]) if found else 0
    for alert in commit.alerts:
        if alert.state not in ALERT_STATES:
            raise ValueError(f"alert {alert.id}: state {alert.state!r} is not one of {', '.join(ALERT_STATES)}")
    if commit.alerts:
        conn.executemany(_UPSERT_ALERT, [alert_to_row(alert) for alert in commit.alerts])
    if commit.actions:
        conn.executemany("UPDATE alert_actions SET outcome = ?, detail = ?, handled_at = ? WHERE id = ?",
                         [(outcome, detail, at, action_id) for action_id, outcome, detail, at in commit.actions])
    for device, cmd, args in commit.commands:
        # queued at the engine's clock: its time to live runs from the engine's decision
        queued = queue_command(conn, device, cmd, lambda _seq, args=args: dict(args), commit.now)
        if queued is None:
            result.skipped_commands.append((device, cmd, f"device {device} is not registered"))
        else:
            result.commands.append(queued)
    if result.commands:
        conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'registry_generation'")
    forget = [(name, device) for device, state in commit.devices.items() if state is None]
    keep = [(name, device, state) for device, state in commit.devices.items() if state is not None]
    if forget:
        conn.executemany("DELETE FROM engine_device WHERE name = ? AND device = ?", forget)
    if keep:
        conn.executemany("INSERT OR REPLACE INTO engine_device (name, device, state) VALUES (?, ?, ?)", keep)
    conn.execute("INSERT OR REPLACE INTO engine_checkpoint (name, cursor, now, saved_at) VALUES (?, ?, ?, ?)",
                 (name, commit.cursor, commit.now, now))
    return result


def queue_command(conn: sqlite3.Connection, device: int, cmd: str, make_args: Any,
                  now: float) -> CommandRecord | None:
    """Inside the caller's transaction: queue a command under the device's next seq (the
    store's queue_command, the engine's check-in prompts); None: the device is not registered."""
    row = conn.execute("SELECT next_command_seq FROM devices WHERE device = ?", (device,)).fetchone()
    if row is None:
        return None
    counter = row[0]
    seq = (counter - 1) % 0xFFFF + 1  # 1..65535, wrapping
    stored = make_args(seq)
    conn.execute("UPDATE devices SET next_command_seq = ?, updated_at = ? WHERE device = ?",
                 (counter + 1, now, device))
    cursor = conn.execute(
        "INSERT INTO commands (device, seq, cmd, args, state, attempts, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
        (device, seq, cmd, json.dumps(stored, ensure_ascii=False), lifecycle.QUEUED, now, now))
    return CommandRecord(int(cursor.lastrowid or 0), device, seq, cmd, stored, lifecycle.QUEUED, 0, now, now)


def load_engine_settings(conn: sqlite3.Connection) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    return engine_settings_from_rows(conn.execute("SELECT scope, settings FROM engine_settings ORDER BY scope"))


def save_engine_settings(conn: sqlite3.Connection, defaults: Any, devices: Any, now: float,
                         replace: bool) -> None:
    """Inside the caller's transaction."""
    from carecard.host.storage import UnknownDeviceError

    known = {row[0] for row in conn.execute("SELECT device FROM devices")}
    missing = [int(device) for device in devices if int(device) not in known]
    if missing:
        raise UnknownDeviceError.of(missing)
    if replace:
        conn.execute("DELETE FROM engine_settings" + (" WHERE scope != 'defaults'" if defaults is None else ""))
    conn.executemany("INSERT OR REPLACE INTO engine_settings (scope, settings, updated_at) VALUES (?, ?, ?)",
                     engine_settings_rows(defaults, devices, now))
