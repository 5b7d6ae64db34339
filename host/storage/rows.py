"""Records as both stores' rows: the columns of commands and alerts, the conversions between rows
and records, and the one way a store lists rows for a reader (filtered, oldest first, and with a
limit the newest rows, still oldest first: what `carecard alerts` and `carecard devices --all`
show). SQLite and PostgreSQL differ in their SQL, not in these."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, Sequence

from carecard.host.storage import AlertAction, AlertRecord, CommandRecord

COMMAND_COLUMNS = ("id, device, seq, cmd, args, state, attempts, created_at, updated_at, "
                   "first_sent_at, last_sent_at, result, detail")
ALERT_COLUMNS = ("id", "device", "kind", "state", "step", "opened_at", "updated_at", "notified",
                 "acknowledged_by", "acknowledged_at", "closed_reason", "closed_by", "closed_at",
                 "prompt_id", "details")
ALERT_JSON_COLUMNS = frozenset({"notified", "details"})


def command_from_row(row: Sequence[Any]) -> CommandRecord:
    """A command from its COMMAND_COLUMNS row (unreadable arguments read as none)."""
    try:
        args = json.loads(row[4])
    except ValueError:
        args = {}
    return CommandRecord(row[0], row[1], row[2], row[3], args if isinstance(args, dict) else {}, *row[5:])


def alert_from_row(row: Sequence[Any]) -> AlertRecord:
    """An alert from its ALERT_COLUMNS row (an unreadable JSON column reads as empty)."""
    values = dict(zip(ALERT_COLUMNS, row))
    for name in ALERT_JSON_COLUMNS:
        try:
            values[name] = json.loads(values[name])
        except (TypeError, ValueError):
            values[name] = [] if name == "notified" else {}
    return AlertRecord(**values)


def alert_to_row(alert: AlertRecord) -> tuple[Any, ...]:
    """The ALERT_COLUMNS row of an alert."""
    return tuple(json.dumps(getattr(alert, name), ensure_ascii=False) if name in ALERT_JSON_COLUMNS
                 else getattr(alert, name) for name in ALERT_COLUMNS)


def action_from_row(row: Sequence[Any]) -> AlertAction:
    """An acknowledge/resolve request from its row (the alert_actions columns, in order)."""
    return AlertAction(*row)


def oldest_first(read: Callable[[str, list[Any]], list[Any]], select: str, where: Sequence[str],
                 params: list[Any], order: Sequence[str], limit: int | None) -> list[Any]:
    """Rows of `select` matching every clause of `where` (with `params`), ordered by the `order`
    columns; with `limit`, only the newest `limit` rows. `read(sql, params)` runs the query in the
    store's own dialect and returns its rows."""
    sql = select
    if where:
        sql += " WHERE " + " AND ".join(where)
    if not limit:
        return read(sql + " ORDER BY " + ", ".join(order), params)
    newest = read(sql + " ORDER BY " + ", ".join(f"{column} DESC" for column in order)
                  + f" LIMIT {int(limit)}", params)
    newest.reverse()
    return newest

def check_fence(name: str, commit: Any, saved_at: float | None, now: float) -> float:
    """The new checkpoint's saved_at (after the stored one), or ValueError when `commit.fence`
    is stale: another engine of the name committed since this one loaded (EngineCommit.fence)."""
    stored = -1.0 if saved_at is None else float(saved_at)
    if commit.fence is not None and commit.fence != stored:
        raise ValueError(f"another engine of the name {name!r} committed since this one loaded "
                         f"(checkpoint saved at {stored}, expected {commit.fence}): reload")
    return max(now, stored + 1e-6)


# --- the alert engine's settings (EngineSettingsStore): scope "defaults" or a device's IMEI ------

def engine_settings_from_rows(rows: Iterable[Sequence[Any]]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """(defaults, {device: table}) of engine_settings rows (scope, settings JSON)."""
    defaults: dict[str, Any] = {}
    devices: dict[int, dict[str, Any]] = {}
    for scope, text in rows:
        table = json.loads(text)
        if scope == "defaults":
            defaults = table
        else:
            devices[int(scope)] = table
    return defaults, devices


def engine_settings_rows(defaults: Mapping[str, Any] | None, devices: Mapping[int, Mapping[str, Any]],
                         now: float) -> list[tuple[str, str, float]]:
    """engine_settings rows (scope, settings JSON, updated_at) to write."""
    rows = [(str(int(device)), json.dumps(dict(table), ensure_ascii=False), now) for device, table in devices.items()]
    if defaults is not None:
        rows.append(("defaults", json.dumps(dict(defaults), ensure_ascii=False), now))
    return rows
