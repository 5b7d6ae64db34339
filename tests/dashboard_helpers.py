"""A village for the dashboard tests: three registered cards with Chinese names, fed real frames
through the ingest (so the registry has their last frame), delivered to the SQLite sink's query
store; accounts of every role; the dashboard served by uvicorn on a loopback port in a thread;
and the alert engine's storage side (EngineStore.commit_engine) to raise alerts and handle the
dashboard's requests as the engine does."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from carecard.host.dashboard.accounts import AccountStore, accounts_db_path
from carecard.host.dashboard.app import DashboardConfig, make_app
from carecard.host.engine.settings import Settings
from carecard.host.paths import ingest_db_path
from carecard.host.receiver.registry import DeviceSpec, add_devices, make_imei
from carecard.host.sinks import SinkSet
from carecard.host.storage import ACTION_DONE, AlertRecord, Contact, EngineCommit
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.storage.sqlite.store import SQLiteStore
from carecard.host.events import alert_event

from receiver_helpers import Card, Harness, key_for

WANG = make_imei(86123456100001)  # 王奶奶: fine
LI = make_imei(86123456100002)  # 李爷爷: battery low
CHEN = make_imei(86123456100003)  # 陈阿婆: the one an alert is raised for
NAMES = {WANG: "王奶奶", LI: "李爷爷", CHEN: "陈阿婆"}
VILLAGE = "石井村"  # the three cards' village
ZHAO = make_imei(86123456100004)  # 赵婆婆, of another village; registered, never heard from
OTHER_VILLAGE = "水头村"
NAMES_ALL = {**NAMES, ZHAO: "赵婆婆"}
HOME = {WANG: (24.9101, 118.5901), LI: (24.9201, 118.6001), CHEN: (24.9051, 118.5801), ZHAO: (24.7, 118.4)}
PASSWORD = "correct horse battery"
ACCOUNTS = {  # name: (role, cards, display name, village)
    "admin": ("admin", [], "管理员", None),
    "grid": ("grid_worker", [], "网格员小林", VILLAGE),
    "grid_other": ("grid_worker", [], "水头村网格员", OTHER_VILLAGE),
    "chen_son": ("family", [CHEN], "陈阿婆的儿子", None),
    "wang_daughter": ("family", [WANG], "王奶奶的女儿", None),
}
ENGINE = "test-engine"


def settings_tables() -> dict[str, Any]:
    """The alert engine's settings file, as tables: every card's home."""
    return {"devices": {str(d): {"name": NAMES_ALL[d], "home": {"lat": lat, "lon": lon}}
                        for d, (lat, lon) in HOME.items()}}


def settings() -> Settings:
    return Settings.from_mapping(settings_tables())


def walk_day(now: float) -> tuple[float, str]:
    """When the village's walk ends and the cards' local day ("YYYY-MM-DD") it lies in: ten
    minutes ago, or just before the cards' local midnight when the three-hour walk would cross it
    (a card's page shows one local day, and tests run at any hour)."""
    zone = timezone(timedelta(seconds=settings().for_device(str(CHEN)).utc_offset))
    end = now - 600
    local = datetime.fromtimestamp(end, zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    if end - 17 * 600 < midnight:
        end = midnight - 600
    return end, datetime.fromtimestamp(end, zone).strftime("%Y-%m-%d")


def register_village(store: Any, data: Path) -> None:
    """The village's four cards in `store`'s registry (their keys in DATA/keys.json)."""
    add_devices(store, data, [DeviceSpec(d, name, key_for(d), [
        Contact(1, "+8613800138001", "儿子"), Contact(4, "+8613900139000", "网格员小林")], village=VILLAGE)
        for d, name in NAMES.items()] + [DeviceSpec(ZHAO, NAMES_ALL[ZHAO], key_for(ZHAO), village=OTHER_VILLAGE)])


def make_village(data: Path, now: float | None = None) -> str:
    """Register the three cards, feed each 18 positions (every 10 minutes for three hours, a walk
    from home and back, all on one local day: see walk_day) and a status, and deliver them to
    events.sqlite. Returns the walk's local day."""
    now = time.time() if now is None else now
    walk_end, local_day = walk_day(now)
    store = SQLiteStore(ingest_db_path(data), readonly_lookups=False)
    try:
        register_village(store, data)
    finally:
        store.close()
    harness = Harness(data, {d: key_for(d) for d in HOME})
    try:
        for device in NAMES:
            lat, lon = HOME[device]
            card = Card(device, key_for(device))
            for step in range(18):
                out = min(step, 17 - step) * 0.0009  # about 100 m a step, away and back
                harness.feed(card.frame("position", time=int(walk_end - (17 - step) * 600),
                                        lat_e7=round((lat + out) * 1e7), lon_e7=round((lon + out / 2) * 1e7)))
            for day in range(14, 0, -1):  # a status a day over two weeks, and one now
                harness.feed(card.frame("status", time=int(now - day * 86400),
                                        battery_pct=100 - day * 5, battery_mv=4100 - day * 30))
            low = device == LI
            harness.feed(card.frame("status", time=int(now - 60), battery_pct=12 if low else 76,
                                    charging="discharging"))
            harness.commit()
    finally:
        harness.store.close()
    deliver(data)
    return local_day


def deliver(data: Path) -> None:
    """Run the SQLite sink over the event log once (what the receiver's sink process does)."""
    log = SQLiteEventLog(ingest_db_path(data))

    async def run() -> None:
        sinks = SinkSet.from_config(None, data, log)
        await sinks.start()
        await sinks.stop(drain_timeout=5)

    try:
        asyncio.run(run())
    finally:
        log.close()


def add_accounts(data: Path) -> None:
    from argon2 import PasswordHasher

    # the cheapest argon2id parameters: the tests log in often; production uses the defaults
    store = AccountStore(accounts_db_path(data), hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    try:
        for name, (role, cards, display, village) in ACCOUNTS.items():
            store.add(name, role, PASSWORD, cards, display_name=display, village=village)
    finally:
        store.close()


class EngineSide:
    """The alert engine's storage side, as the engine commits: raise an alert (its row and its
    alert event, atomically) and handle the queued requests."""

    def __init__(self, data: Path, store: Any = None):
        """On DATA/carecard.sqlite, or on `store` (closed with this)."""
        self.store = store or SQLiteStore(ingest_db_path(data), readonly_lookups=False)
        self.cursor = 0

    def close(self) -> None:
        self.store.close()

    def raise_sos(self, device: int, now: float) -> AlertRecord:
        alert_id = f"{device}-alert-sos-{int(now * 1000)}"
        step = {"step": "raised", "at": now, "notify": ["family", "grid_worker"],
                "recipients": ["+8613800138001 儿子", "+8613900139000 网格员小林"]}
        alert = AlertRecord(alert_id, device, "sos", "open", "raised", now, now, [step],
                            details={"trigger": "long_press", "lat": HOME[device][0], "lon": HOME[device][1]})
        event = alert_event(device, "sos", {"vocabulary": 1, "alert_id": alert_id, "step": "raised",
                                            "state": "open", "notify": step["notify"],
                                            "recipients": step["recipients"], "opened_at": now}, now)
        self.store.commit_engine(ENGINE, EngineCommit(self.cursor, now, events=[event], alerts=[alert]))
        return alert

    def handle_requests(self, now: float) -> int:
        handled = 0
        for action in self.store.pending_alert_actions():
            alert = self.store.get_alert(action.alert_id)
            assert alert is not None
            if action.action == "acknowledge":
                alert.state, alert.step = "acknowledged", "acknowledged"
                alert.acknowledged_by, alert.acknowledged_at = action.by, now
            else:
                alert.state, alert.step, alert.closed_reason = "resolved", "resolved", "resolved_by_hand"
                alert.closed_by, alert.closed_at = action.by, now
            alert.updated_at = now
            alert.notified.append({"step": alert.step, "at": now, "notify": [], "recipients": []})
            self.store.commit_engine(ENGINE, EngineCommit(self.cursor, now, alerts=[alert],
                                                          actions=[(action.id, ACTION_DONE, None, now)]))
            handled += 1
        return handled


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve(data: Path, *, secure_cookies: bool = True) -> Served:
    """The dashboard on a real uvicorn server on 127.0.0.1 in a thread; started when this returns."""
    from argon2 import PasswordHasher

    accounts = AccountStore(accounts_db_path(data), hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    app = make_app(DashboardConfig(data, settings_tables=settings_tables(), secure_cookies=secure_cookies), accounts)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.01)
    return Served(f"http://127.0.0.1:{port}", server, thread)
