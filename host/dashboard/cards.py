"""What the dashboard shows, read from the receivers' store and files:

- the device registry, the engine's alerts and alert requests and the engine's settings in the
  registry: from DATA/carecard.sqlite (read-only connections; storage.sqlite's readers) or a
  PostgreSQL store (RegistrySource); the one thing written there is an alert request;
- the SQLite sink's query store (DATA/events.sqlite): statuses, positions, events of a day;
- the alert engine's settings: the settings file's tables when given, overridden key by key by
  the registry's (as the engine combines them), read again when the registry generation moves
  (homes, time zones, offline and battery limits).

A card's state at a glance, the first that applies:

    alert_open     an SOS or inactivity alert nobody has acknowledged yet (escalating)
    check_needed   an alert acknowledged but not resolved, an inactivity alert still at its
                   check-in step (the card asks the elder), or an acknowledge request the engine
                   has not handled yet
    offline        an offline alert, or no frame for the settings' offline time (never seen too)
    battery_low    a low_battery or not_charged alert, or the last status at or below
                   low_battery_pct while not charging
    not_worn       a card_not_worn alert
    fine           none of these
"""

from __future__ import annotations

import abc
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from carecard.host.engine.settings import DeviceSettings, Settings, SettingsError
from carecard.host.events import event_from_message
from carecard.host.files import connect_readonly
from carecard.host.paths import events_db_path, ingest_db_path
from carecard.host.storage import AlertAction, AlertRecord, DeviceRecord, StoreError
from carecard.host.storage.sqlite import alerts as alert_tables
from carecard.host.storage.sqlite.store import load_devices
from carecard.protocol import ProtocolError, parse_opened

STATES = ("alert_open", "check_needed", "offline", "battery_low", "not_worn", "fine")
STATE_RANK = {state: rank for rank, state in enumerate(STATES)}
BATTERY_DAYS = 28
log = logging.getLogger("carecard.dashboard")


class DataError(RuntimeError):
    """A database the dashboard reads cannot be read; the message names it and why."""


@dataclass
class CardSummary:
    device: int
    name: str
    state: str
    last_seen: float | None
    battery_pct: int | None
    charging: str | None
    lat: float | None
    lon: float | None
    position_t: float | None
    alerts: list[AlertRecord] = field(default_factory=list)  # not resolved, newest first

    @property
    def rank(self) -> int:
        return STATE_RANK[self.state]


@dataclass
class TimelineEntry:
    t: float
    kind: str  # moving, still, offline, charging, call, sos, checkin, power, alert, hello
    text: str
    words: tuple[str, ...] = ()  # i18n keys shown (translated) before the text


@dataclass
class CardDetail:
    summary: CardSummary
    record: DeviceRecord
    day: str  # YYYY-MM-DD, the card's local date
    track: list[tuple[float, float, float]]  # (t, lat, lon), oldest first
    home: tuple[float, float] | None
    timeline: list[TimelineEntry]
    battery: list[tuple[float, int]]  # (t, pct) over the last BATTERY_DAYS days
    utc_offset_s: int


@dataclass
class AlertView:
    alert: AlertRecord
    name: str
    actions: list[AlertAction]

    @property
    def pending(self) -> list[AlertAction]:
        return [a for a in self.actions if a.outcome is None]


class RegistrySource(abc.ABC):
    """The dashboard's side of the receivers' store: the registry, the alerts and their requests,
    the engine's settings in the registry, and the one write, queueing an alert request."""

    @abc.abstractmethod
    def devices(self) -> dict[int, DeviceRecord]:
        """Every registry row (registered ones have a name). Raises DataError."""

    @abc.abstractmethod
    def alerts(self, device: int | None = None, states: tuple[str, ...] | None = None,
               limit: int | None = None) -> tuple[list[AlertRecord], list[AlertAction]]:
        """(the alerts, as storage's list_alerts orders them; every alert request). Raises DataError."""

    @abc.abstractmethod
    def alert(self, alert_id: str) -> AlertRecord | None:
        """One alert, None when there is none of that id."""

    @abc.abstractmethod
    def engine_settings(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """The engine's settings saved in the registry (storage.EngineSettingsStore)."""

    @abc.abstractmethod
    def generation(self) -> int | None:
        """The registry generation (None: no store yet)."""

    @abc.abstractmethod
    def change_mark(self) -> tuple[Any, ...]:
        """A value that moves whenever the registry, the alerts or their requests change."""

    @abc.abstractmethod
    def request_action(self, alert_id: str, action: str, by: str, reason: str | None, now: float) -> None:
        """Queue an alert request for the engine (AlertStore.request_alert_action, source
        "dashboard"). Raises AlertActionError."""

    def close(self) -> None:
        """Release connections."""


class SQLiteSource(RegistrySource):
    """DATA/carecard.sqlite. Every read opens its own read-only connection (the receiver and the
    engine write the file from other processes)."""

    def __init__(self, data_dir: Path | str):
        self.data_dir = Path(data_dir)

    def _ingest(self) -> sqlite3.Connection | None:
        path = ingest_db_path(self.data_dir)
        if not path.exists():
            return None
        return connect_readonly(path, DataError, where=f"database {path}")

    def devices(self) -> dict[int, DeviceRecord]:
        conn = self._ingest()
        if conn is None:
            return {}
        try:
            return load_devices(conn)
        except sqlite3.Error as exc:
            raise DataError(f"cannot read the device registry: {exc}") from None
        finally:
            conn.close()

    def alerts(self, device: int | None = None, states: tuple[str, ...] | None = None,
               limit: int | None = None) -> tuple[list[AlertRecord], list[AlertAction]]:
        conn = self._ingest()
        if conn is None:
            return [], []
        try:
            alerts = alert_tables.list_alerts(conn, device=device, states=states, limit=limit)
            actions = alert_tables.list_alert_actions(conn, None, None)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a store from before the engine's tables
                return [], []
            raise DataError(f"cannot read the alerts: {exc}") from None
        finally:
            conn.close()
        return alerts, actions

    def alert(self, alert_id: str) -> AlertRecord | None:
        conn = self._ingest()
        if conn is None:
            return None
        try:
            return alert_tables.get_alert(conn, alert_id)
        except sqlite3.OperationalError:
            return None
        finally:
            conn.close()

    def engine_settings(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        conn = self._ingest()
        if conn is None:
            return {}, {}
        try:
            return alert_tables.load_engine_settings(conn)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}, {}
            raise DataError(f"cannot read the engine's settings: {exc}") from None
        finally:
            conn.close()

    def generation(self) -> int | None:
        conn = self._ingest()
        if conn is None:
            return None
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'registry_generation'").fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            conn.close()
        return None if row is None else int(row[0])

    def change_mark(self) -> tuple[Any, ...]:
        mark: list[Any] = []
        conn = self._ingest()
        if conn is not None:
            try:
                for sql in ("SELECT seq FROM sqlite_sequence WHERE name = 'event_log'",
                            "SELECT MAX(updated_at), COUNT(*) FROM alerts",
                            "SELECT MAX(id), MAX(handled_at) FROM alert_actions",
                            "SELECT value FROM meta WHERE name = 'registry_generation'"):
                    try:
                        mark.append(conn.execute(sql).fetchone())
                    except sqlite3.OperationalError:
                        mark.append(None)
            finally:
                conn.close()
        return tuple(mark)

    def request_action(self, alert_id: str, action: str, by: str, reason: str | None, now: float) -> None:
        from carecard.host.storage.sqlite.store import SQLiteStore

        store = SQLiteStore(ingest_db_path(self.data_dir), readonly_lookups=False)
        try:
            store.request_alert_action(alert_id, action, by, reason=reason, source="dashboard", now=now)
        finally:
            store.close()


class StoreSource(RegistrySource):
    """A store with the registry, alert and engine-settings interfaces (the PostgreSQL store) and
    its event log reader."""

    def __init__(self, store: Any, eventlog: Any):
        self.store = store
        self.eventlog = eventlog

    @staticmethod
    def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (StoreError, RuntimeError) as exc:  # RuntimeError: the event log's EventLogError
            raise DataError(f"cannot read {what}: {exc}") from None

    def devices(self) -> dict[int, DeviceRecord]:
        return self._call("the device registry", self.store.load_devices)

    def alerts(self, device: int | None = None, states: tuple[str, ...] | None = None,
               limit: int | None = None) -> tuple[list[AlertRecord], list[AlertAction]]:
        alerts = self._call("the alerts", self.store.list_alerts, device=device, states=states, limit=limit)
        return alerts, self._call("the alert requests", self.store.list_alert_actions)

    def alert(self, alert_id: str) -> AlertRecord | None:
        return self._call("the alerts", self.store.get_alert, alert_id)

    def engine_settings(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        return self._call("the engine's settings", self.store.load_engine_settings)

    def generation(self) -> int | None:
        return self._call("the registry generation", self.store.generation)

    def change_mark(self) -> tuple[Any, ...]:
        # an engine's change of an alert appends its alert event; a request is a new action row
        latest = self._call("the alert requests", self.store.list_alert_actions, limit=1)
        active = self._call("the alerts", self.store.list_alerts, states=("open", "acknowledged"))
        return (self.generation(), self._call("the event log", self.eventlog.last_seq),
                tuple((a.id, a.outcome) for a in latest),
                tuple((a.id, a.state, a.step, a.updated_at) for a in active))

    def request_action(self, alert_id: str, action: str, by: str, reason: str | None, now: float) -> None:
        self.store.request_alert_action(alert_id, action, by, reason=reason, source="dashboard", now=now)

    def close(self) -> None:
        self.store.close()
        self.eventlog.close()


def registry_source(store: str, data_dir: Path | str) -> RegistrySource:
    """The source a `store` setting names ("sqlite" or a PostgreSQL URL). Raises DataError."""
    if store == "sqlite":
        return SQLiteSource(data_dir)
    from carecard.host.storage import event_log_for, ingest_store_for

    try:
        opened = ingest_store_for(store, data_dir)
    except StoreError as exc:
        raise DataError(str(exc)) from None
    try:
        eventlog = event_log_for(store, data_dir)
    except RuntimeError as exc:  # EventLogError
        opened.close()
        raise DataError(str(exc)) from None
    return StoreSource(opened, eventlog)


class CardData:
    """Queries for the pages from a RegistrySource (SQLite by default) and the query store
    DATA/events.sqlite (a read-only connection each call); the one write is request_action."""

    def __init__(self, data_dir: Path | str, settings_tables: Mapping[str, Any] | None = None,
                 source: RegistrySource | None = None):
        self.data_dir = Path(data_dir)
        self.source = source or SQLiteSource(self.data_dir)
        self.settings_tables = dict(settings_tables or {})
        self.settings = Settings.from_mapping(self.settings_tables)
        self._settings_generation: int | None = None
        self._settings_lock = threading.Lock()

    def refresh_settings(self) -> Settings:
        """The settings file's tables combined with the registry's (as the engine combines
        them), read again when the registry generation has moved since the last time."""
        generation = self.source.generation()
        with self._settings_lock:
            if generation is None or generation == self._settings_generation:
                return self.settings
            defaults, devices = self.source.engine_settings()
            try:
                self.settings = Settings.combine(
                    self.settings_tables, {"defaults": defaults, "devices": {str(d): t for d, t in devices.items()}},
                    where="settings file + registry")
            except SettingsError as exc:  # checked when saved: only a store another version wrote
                log.warning("the engine's settings in the registry are not usable (%s): the file's are shown", exc)
            self._settings_generation = generation
            return self.settings

    def settings_for(self, device: int) -> DeviceSettings:
        return self.settings.for_device(str(device))

    def _query(self) -> sqlite3.Connection | None:
        path = events_db_path(self.data_dir)
        if not path.exists():
            return None
        return connect_readonly(path, DataError, where=f"query store {path}")

    # --- reads ----------------------------------------------------------------------------

    def devices(self) -> dict[int, DeviceRecord]:
        """The registered devices (those with a name in the registry)."""
        return {d: r for d, r in self.source.devices().items() if r.name}

    def _alerts(self, device: int | None = None, states: tuple[str, ...] | None = None,
                limit: int | None = None) -> tuple[list[AlertRecord], list[AlertAction]]:
        return self.source.alerts(device, states, limit)

    def request_action(self, alert_id: str, action: str, by: str, reason: str | None) -> None:
        self.source.request_action(alert_id, action, by, reason, time.time())

    def change_mark(self) -> tuple[Any, ...]:
        """A value that changes when anything a page shows may have changed: the store's mark
        (event log, alerts, requests, registry generation) and the query store's last row."""
        mark: list[Any] = list(self.source.change_mark())
        query = self._query()
        if query is not None:
            try:
                mark.append(query.execute("SELECT MAX(rowid) FROM events").fetchone())
            except sqlite3.Error:
                mark.append(None)
            finally:
                query.close()
        return tuple(mark)

    def _latest_status(self, query: sqlite3.Connection, device: int) -> dict[str, Any] | None:
        row = query.execute("SELECT body, opened, received_unix FROM events WHERE device = ? AND "
                            "kind = 'status' ORDER BY t DESC LIMIT 1", (str(device),)).fetchone()
        return None if row is None else _event(row)

    def summaries(self, devices: list[int] | None = None, now: float | None = None) -> list[CardSummary]:
        """The cards (all registered, or those of `devices`), the ones needing someone first."""
        now = time.time() if now is None else now
        self.refresh_settings()
        registry = self.devices()
        wanted = [d for d in registry if devices is None or d in devices]
        alerts, actions = self._alerts(states=("open", "acknowledged"))
        pending = {a.alert_id for a in actions if a.outcome is None and a.action == "acknowledge"}
        by_device: dict[int, list[AlertRecord]] = {}
        for alert in reversed(alerts):
            by_device.setdefault(alert.device, []).append(alert)
        query = self._query()
        out: list[CardSummary] = []
        try:
            for device in wanted:
                record = registry[device]
                last_seen = record.last_seen
                status = self._latest_status(query, device) if query is not None else None
                position = None
                if query is not None:
                    position = query.execute("SELECT lat, lon, t FROM positions WHERE device = ? "
                                             "ORDER BY t DESC LIMIT 1", (str(device),)).fetchone()
                    latest = query.execute("SELECT COALESCE(received_unix, t) FROM events WHERE device = ? "
                                           "AND kind != 'alert' ORDER BY t DESC LIMIT 1", (str(device),)).fetchone()
                    if latest is not None and latest[0] is not None:
                        # the registry's last_seen is flushed every few minutes; the store is newer
                        last_seen = max(last_seen or 0.0, float(latest[0]))
                data = (status or {}).get("data", {})
                summary = CardSummary(
                    device, record.name, "fine", last_seen, data.get("battery_pct"), data.get("charging"),
                    position[0] if position else None, position[1] if position else None,
                    position[2] if position else None, by_device.get(device, []))
                summary.state = self._state(summary, pending, now)
                out.append(summary)
        except sqlite3.Error as exc:
            raise DataError(f"cannot read the query store: {exc}") from None
        finally:
            if query is not None:
                query.close()
        out.sort(key=lambda s: (s.rank, -(s.last_seen or 0), s.device))
        return out

    def _state(self, card: CardSummary, pending_acks: set[str], now: float) -> str:
        settings = self.settings_for(card.device)
        kinds = {a.kind: a for a in card.alerts}
        if any(a.state == "open" and a.kind in ("sos", "inactivity") and a.step != "checkin"
               and a.id not in pending_acks for a in card.alerts):
            return "alert_open"
        if any(a.state == "acknowledged" or a.id in pending_acks
               or (a.kind == "inactivity" and a.step == "checkin") for a in card.alerts):
            return "check_needed"
        if "offline" in kinds or card.last_seen is None or now - card.last_seen > settings.offline_after_s:
            return "offline"
        if "low_battery" in kinds or "not_charged" in kinds or (
                card.battery_pct is not None and card.battery_pct <= settings.low_battery_pct
                and card.charging == "discharging"):
            return "battery_low"
        if "card_not_worn" in kinds:
            return "not_worn"
        return "fine"

    def alert_views(self, devices: list[int] | None = None, *, resolved_limit: int = 50) -> list[AlertView]:
        """Alerts of `devices` (None: all): open ones first (newest first), then acknowledged,
        then the latest resolved ones."""
        names = {d: r.name for d, r in self.devices().items()}
        alerts, actions = self._alerts()
        by_alert: dict[str, list[AlertAction]] = {}
        for action in actions:
            by_alert.setdefault(action.alert_id, []).append(action)
        shown = [a for a in alerts if devices is None or a.device in devices]
        order = {"open": 0, "acknowledged": 1, "resolved": 2}
        shown.sort(key=lambda a: (order.get(a.state, 3), -a.updated_at))
        active = [a for a in shown if a.state != "resolved"]
        closed = [a for a in shown if a.state == "resolved"][:resolved_limit]
        return [AlertView(a, names.get(a.device, str(a.device)), by_alert.get(a.id, [])) for a in active + closed]

    def alert(self, alert_id: str) -> AlertRecord | None:
        return self.source.alert(alert_id)

    def card(self, device: int, day: str | None = None, now: float | None = None) -> CardDetail | None:
        """A card's page: None when it is not registered."""
        now = time.time() if now is None else now
        registry = self.devices()
        if device not in registry:
            return None
        summaries = self.summaries([device], now)
        settings = self.settings_for(device)
        offset = int(settings.utc_offset)
        zone = timezone(timedelta(seconds=offset))
        if day is None:
            day = datetime.fromtimestamp(now, zone).strftime("%Y-%m-%d")
        start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=zone).timestamp()
        end = start + 86400
        track: list[tuple[float, float, float]] = []
        battery: list[tuple[float, int]] = []
        events: list[dict[str, Any]] = []
        query = self._query()
        if query is not None:
            try:
                track = [tuple(row) for row in query.execute(  # type: ignore[misc]
                    "SELECT t, lat, lon FROM positions WHERE device = ? AND t >= ? AND t < ? "
                    "ORDER BY t, event_id, idx", (str(device), start, end))]
                for row in query.execute("SELECT body, opened, received_unix FROM events WHERE device = ? "
                                         "AND kind = 'status' AND t >= ? ORDER BY t",
                                         (str(device), now - BATTERY_DAYS * 86400)):
                    event = _event(row)
                    pct = event.get("data", {}).get("battery_pct")
                    if pct is not None:
                        battery.append((_event_time(event), int(pct)))
                events = [_event(row) for row in query.execute(
                    "SELECT body, opened, received_unix FROM events WHERE device = ? AND t >= ? AND t < ? "
                    "ORDER BY t, rowid", (str(device), start, end))]
            except sqlite3.Error as exc:
                raise DataError(f"cannot read the query store: {exc}") from None
            finally:
                query.close()
        alerts, _actions = self._alerts(device=device)
        timeline = list(_timeline(track, events, settings))
        for alert in alerts:
            for step in alert.notified:
                if start <= step.get("at", 0) < end:
                    timeline.append(TimelineEntry(step["at"], "alert", "", (f"kind.{alert.kind}",
                                                                           f"step.{step.get('step')}")))
        timeline.sort(key=lambda e: e.t)
        home = settings.home
        return CardDetail(summaries[0], registry[device], day, track,
                          (float(home[0]), float(home[1])) if home else None, timeline, battery, offset)


def _event(row: tuple) -> dict[str, Any]:
    body, opened, received_unix = row
    if opened is not None:
        try:
            return event_from_message(parse_opened(opened), received_unix)
        except (ProtocolError, ValueError):
            return {"kind": "unreadable", "data": {}}
    try:
        return json.loads(body)
    except ValueError:
        return {"kind": "unreadable", "data": {}}


def _event_time(event: dict[str, Any]) -> float:
    text = event.get("time") or event.get("received_at")
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _timeline(track: list[tuple[float, float, float]], events: list[dict[str, Any]],
              settings: DeviceSettings) -> Iterator[TimelineEntry]:
    """Runs of moving and still from the day's positions (a run changes at 100 m between fixes
    or a gap longer than the offline time), then the day's other events."""
    previous: tuple[float, float, float] | None = None
    run_kind = ""
    for point in track:
        if previous is not None and point[0] - previous[0] > settings.offline_after_s:
            yield TimelineEntry(previous[0], "offline", f"no position for {_span(point[0] - previous[0])}")
            run_kind = ""
        kind = "still"
        if previous is not None and _distance_m(previous[1:], point[1:]) > 100:
            kind = "moving"
        if kind != run_kind:
            yield TimelineEntry(point[0], kind, f"{point[1]:.5f}, {point[2]:.5f}")
            run_kind = kind
        previous = point
    for event in events:
        kind = event.get("kind")
        data = event.get("data", {})
        t = _event_time(event)
        if kind == "status" and data.get("charging") in ("charging", "full"):
            yield TimelineEntry(t, "charging", f"{data.get('charging')} {data.get('battery_pct')}%")
        elif kind == "call":
            yield TimelineEntry(t, "call", f"key {data.get('key')} {data.get('number', '')} "
                                           f"{data.get('outcome', '')} {data.get('duration_s', '')}s")
        elif kind in ("sos", "checkin", "power", "hello"):
            detail = data.get("trigger") or data.get("answer") or data.get("event") or data.get("fw_version") or ""
            yield TimelineEntry(t, kind, str(detail))


def _span(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def _distance_m(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    from math import asin, cos, radians, sin, sqrt

    lat1, lon1, lat2, lon2 = map(radians, (a[0], a[1], b[0], b[1]))
    h = sin((lat2 - lat1) / 2) ** 2 + cos(lat1) * cos(lat2) * sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371000 * asin(sqrt(h))
