"""The alert engine inside `carecard receive`: a real receiver on 127.0.0.1 UDP, real cards'
frames, the engine's clock injected (the receiver stamps frames with the real time; the engine's
clock runs ahead by what each test says), so an escalation of minutes takes no waiting."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from carecard.host.paths import ingest_db_path
from carecard.host.receiver.config import Endpoint, ReceiverConfig
from carecard.host.receiver.service import ReceiverThread
from carecard.host.storage.sqlite import SQLiteEventLog, SQLiteStore

from receiver_helpers import Card, exchange, provision, udp_client

SETTINGS = """
[defaults]
stillness_threshold = "60s"
report_interval = "60s"
# a slow machine may take minutes of real time: no offline alert, and stillness stays known
offline_factor = 100
evidence_gap_factor = 10
checkin_window = "60s"
family_window = "60s"
wake = "00:00"
bedtime = "00:00"
wake_grace = "0s"
family = ["+8613800138000 Son"]
grid_worker = "+8613900139000 Grid worker Li"
"""


class Clock:
    """The engine's clock: the real time plus an offset the test moves on."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _config(data_dir: Path, **more: Any) -> ReceiverConfig:
    settings = data_dir / "engine.toml"
    settings.write_text(SETTINGS)
    config = ReceiverConfig(udp=[Endpoint("127.0.0.1", 0)], data_dir=data_dir, log_level="warning", **more)
    config.ingest.registry_poll_s = 0.05
    config.engine.settings = settings
    config.engine.poll_s = 0.05
    return config


def _alert_events(data_dir: Path) -> list[dict[str, Any]]:
    """Every alert event, in order, as the SQLite sink stored them (the event log prunes alert
    events once every sink has them): waits until the sink has the whole log."""
    import sqlite3

    with SQLiteEventLog(ingest_db_path(data_dir)) as log:
        last = log.last_seq()
        _until(lambda: (log.load_cursor("sqlite") or 0) >= last, f"the SQLite sink at seq {last}")
    with sqlite3.connect(data_dir / "events.sqlite") as conn:
        rows = conn.execute("SELECT body FROM events WHERE kind = 'alert' ORDER BY rowid").fetchall()
    return [json.loads(body) for (body,) in rows]


def _steps(data_dir: Path) -> list[tuple[str, str]]:
    return [(e["data"]["alert"], e["data"]["details"]["step"]) for e in _alert_events(data_dir)]


def _store(data_dir: Path) -> SQLiteStore:
    return SQLiteStore(ingest_db_path(data_dir))


def _still_position(card: Card, clock: Clock) -> bytes:
    """A fix at the same spot, stamped with the engine's (virtual) time: the card lives in it."""
    return card.frame("position", time=int(clock()))


def _sync(rt: ReceiverThread) -> None:
    assert rt.receiver is not None and rt.receiver.engine.sync()


def _until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def test_a_still_card_is_prompted_then_family_then_grid_worker_once_across_a_restart(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    card = Card(device, key)
    clock = Clock()
    client = udp_client()
    config = _config(tmp_path)
    with ReceiverThread(config, engine_clock=clock) as rt:
        port = rt.receiver.udp_ports[0]
        for _ in range(3):
            assert exchange(client, port, _still_position(card, clock)) is not None
        _sync(rt)
        assert _steps(tmp_path) == []
        clock.offset = 61  # past the stillness threshold: the check-in prompt
        _sync(rt)
        assert _steps(tmp_path) == [("inactivity", "checkin")]
        store = _store(tmp_path)
        (alert,) = store.list_alerts()
        assert (alert.device, alert.kind, alert.state, alert.step) == (device, "inactivity", "open", "checkin")
        assert alert.notified[0]["notify"] == ["card"] and alert.prompt_id is not None
        # the prompt rides on the ack of the card's next frame, naming the alert's prompt id
        carried = _until(lambda: card.ack(exchange(client, port, _still_position(card, clock)))["commands"],
                         "the check-in prompt in an ack")
        assert carried[0]["cmd"] == "checkin_prompt" and carried[0]["prompt_id"] == alert.prompt_id
        clock.offset = 122  # no answer within checkin_window: the family
        _sync(rt)
        assert _steps(tmp_path)[-1] == ("inactivity", "family")
    # a restart in the middle of the escalation raises nothing again
    with ReceiverThread(config, engine_clock=clock) as rt:
        _sync(rt)
        _sync(rt)
        assert _steps(tmp_path) == [("inactivity", "checkin"), ("inactivity", "family")]
        clock.offset = 183  # nobody acknowledged within family_window: the grid worker
        _sync(rt)
    assert _steps(tmp_path) == [("inactivity", "checkin"), ("inactivity", "family"),
                                ("inactivity", "grid_worker")]
    (alert,) = store.list_alerts()
    assert [step["step"] for step in alert.notified] == ["checkin", "family", "grid_worker"]
    assert alert.notified[1]["recipients"] == ["+8613800138000 Son"]
    assert alert.notified[2]["recipients"] == ["+8613900139000 Grid worker Li"]
    grid_event = _alert_events(tmp_path)[-1]
    assert grid_event["device"] == str(device) and grid_event["data"]["details"]["alert_id"] == alert.id
    store.close()


def test_the_cards_answer_to_the_prompt_closes_the_alert(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    card = Card(device, key)
    clock = Clock()
    client = udp_client()
    with ReceiverThread(_config(tmp_path), engine_clock=clock) as rt:
        port = rt.receiver.udp_ports[0]
        exchange(client, port, _still_position(card, clock))
        exchange(client, port, _still_position(card, clock))
        _sync(rt)
        clock.offset = 61
        _sync(rt)
        carried = _until(lambda: card.ack(exchange(client, port, _still_position(card, clock)))["commands"],
                         "the check-in prompt in an ack")
        answer = card.frame("checkin", prompt_id=carried[0]["prompt_id"], answer="ok", response_s=12,
                            time=int(clock()))
        assert exchange(client, port, answer) is not None
        _sync(rt)
    assert _steps(tmp_path) == [("inactivity", "checkin"), ("inactivity", "resolved")]
    store = _store(tmp_path)
    (alert,) = store.list_alerts()
    store.close()
    assert (alert.state, alert.closed_reason) == ("resolved", "checkin")


def test_an_sos_is_alerted_at_once_and_every_sink_carries_it(tmp_path: Path) -> None:
    device, key = next(iter(provision(tmp_path, 1).items()))
    card = Card(device, key)
    out = tmp_path / "events.jsonl"
    config = _config(tmp_path, sinks=[{"type": "jsonl", "path": str(out)}])
    with ReceiverThread(config) as rt:  # the engine on the real clock: nothing to wait for
        port = rt.receiver.udp_ports[0]
        sos = card.frame("sos", trigger="long_press", lat_e7=249012345, lon_e7=1184567890, fix="3d",
                         fix_age_s=20, battery_pct=64, time=int(time.time()))
        assert exchange(udp_client(), port, sos) is not None
        _sync(rt)

        def sink_alerts() -> list[dict[str, Any]]:
            if not out.exists():
                return []
            lines = [json.loads(line) for line in out.read_text().splitlines()]
            return [line for line in lines if line["kind"] == "alert"]

        (carried,) = _until(sink_alerts, "the SOS alert in the JSON-lines sink")
    assert carried["data"]["alert"] == "sos" and carried["data"]["details"]["step"] == "raised"
    assert carried["data"]["details"]["notify"] == ["family", "grid_worker"]
    assert carried["data"]["details"]["recipients"] == ["+8613800138000 Son", "+8613900139000 Grid worker Li"]
    store = _store(tmp_path)
    (alert,) = store.list_alerts()
    store.close()
    assert (alert.kind, alert.state, alert.details["battery_pct"]) == ("sos", "open", 64)
