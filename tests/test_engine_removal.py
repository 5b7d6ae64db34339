"""A card taken out of the registry (`carecard devices remove`) is no longer judged: the removal
is a `registry` event in the event log, written in the removal's own transaction, and the engine
closes the card's open alerts with the reason "removed" and ignores the card until a `registry`
"added" event (the card added again), after which it is judged from fresh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from carecard.host.engine import Engine
from carecard.host.engine.runner import EngineRunner
from carecard.host.events import registry_event
from carecard.host.receiver.registry import DeviceSpec, add_devices, remove_device
from carecard.host.storage import CommitBatch
from carecard.host.storage.sqlite import SQLiteEventLog, SQLiteStore
from carecard.host.timefmt import iso_utc

from enginegen import DEV, Gen, local, run, sensor_settings, steps

KEY = bytes(range(16))


def test_removal_closes_the_cards_alerts_and_stops_judging_it_until_it_is_added_again() -> None:
    gen = Gen()
    engine = Engine(sensor_settings())
    out = run(engine, [gen.sos(local(10)), gen.status(local(10.1), pct=80)], until=local(12))
    assert steps(out) == [("sos", "raised"), ("offline", "raised")]
    out = engine.feed(registry_event(DEV, "removed", local(12.5)))
    closed = sorted((a.kind, a.step, a.details["closed_reason"]) for a in out)
    assert closed == [("offline", "resolved", "removed"), ("sos", "resolved", "removed")]
    assert engine.open_alerts() == [] and str(DEV) not in engine.devices
    # a frame that still arrives (a receiver with the old key) is not judged: nothing, ever
    assert run(engine, [gen.status(local(13), pct=10)], until=local(13, day=5)) == []
    # the state of a removed card survives a restart: still not judged
    engine = Engine.from_state(json.loads(json.dumps(engine.to_state())), sensor_settings())
    assert run(engine, [gen.sos(local(8, day=6))], until=local(9, day=6)) == []
    # added again: judged from fresh (no old stay, no old alert), offline after its own silence
    assert engine.feed(registry_event(DEV, "added", local(10, day=6))) == []
    out = run(engine, [gen.status(local(11, day=6), pct=80)], until=local(14, day=6))
    assert steps(out) == [("offline", "raised")]
    offline = [a for a in out if a.kind == "offline"][0]
    assert offline.details["last_frame"] == iso_utc(local(11, day=6) + 1)
    # "added" for a card that is being judged changes nothing
    assert engine.feed(registry_event(DEV, "added", local(15, day=6))) == []
    assert [a["kind"] for a in engine.open_alerts()] == ["offline"]


def _frame(device: int, counter: int, received_at: float) -> tuple:
    from carecard.protocol import decode_frame, encode_frame

    message = {"type": "status", "device": device, "counter": counter, "time": int(received_at),
               "battery_mv": 3900, "battery_pct": 80, "charging": "discharging", "rssi_dbm": -80,
               "motion_count": 0, "outbox_depth": 0}
    frame = encode_frame(message, KEY)
    opened: list[bytes] = []
    decode_frame(frame, KEY, opened)
    return (device, counter, frame[-8:], "status", message["time"], received_at, "udp", frame, opened[0])


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _alert_steps(path: Path) -> list[tuple[str, str, Any]]:
    with SQLiteEventLog(path) as log:
        return [(e["data"]["alert"], e["data"]["details"]["step"], e["data"]["details"].get("closed_reason"))
                for e in (entry.event for entry in log.entries_after(0, 10_000)) if e["kind"] == "alert"]


@pytest.mark.parametrize("partition", [None, (DEV % 2, 2)])
def test_the_engine_over_the_store_closes_a_removed_cards_alerts_and_never_alerts_it_offline(
        tmp_path: Path, partition: tuple[int, int] | None) -> None:
    """`devices remove` through the registry (store and key file): the engine (whole, or the
    partition that follows the card) resolves the card's open alert as "removed" and raises
    nothing more for it, across a restart, until the card is added again."""
    path = tmp_path / "carecard.sqlite"
    store = SQLiteStore(path)
    start = float(local(10))
    clock = Clock(start)
    add_devices(store, tmp_path, [DeviceSpec(DEV, "王奶奶", KEY)], now=start)
    runner = EngineRunner(store, SQLiteEventLog(path), sensor_settings(), clock=clock, partition=partition)
    runner.load()
    counter = 1
    store.prepare(CommitBatch(frames=[_frame(DEV, counter, start + 1)]))
    store.finish()
    clock.now = start + 3 * 3600  # silent for 3 h: offline
    runner.step()
    assert _alert_steps(path) == [("offline", "raised", None)]

    remove_device(store, tmp_path, DEV, now=clock.now + 60)
    clock.now += 120
    runner.step()
    assert _alert_steps(path)[1:] == [("offline", "resolved", "removed")]
    (alert,) = store.list_alerts()
    assert (alert.state, alert.closed_reason) == ("resolved", "removed")
    for _ in range(3):  # days later, across restarts: nothing more for the removed card
        clock.now += 86400
        runner = EngineRunner(store, SQLiteEventLog(path), sensor_settings(), clock=clock, partition=partition)
        runner.step()
    assert len(_alert_steps(path)) == 2

    # added again: judged from fresh
    add_devices(store, tmp_path, [DeviceSpec(DEV, "李爷爷", KEY)], now=clock.now)
    counter += 1
    store.prepare(CommitBatch(frames=[_frame(DEV, counter, clock.now + 1)]))
    store.finish()
    runner.step()
    assert len(_alert_steps(path)) == 2
    clock.now += 3 * 3600
    runner.step()
    assert _alert_steps(path)[2:] == [("offline", "raised", None)]
    store.close()


def test_a_keyed_card_without_a_registry_entry_is_removed_for_the_engine_too(tmp_path: Path) -> None:
    """A card that only has a key (never named in the registry) is judged like any other, so
    removing it must tell the engine as well."""
    path = tmp_path / "carecard.sqlite"
    store = SQLiteStore(path)
    start = float(local(10))
    clock = Clock(start)
    add_devices(store, tmp_path, [DeviceSpec(DEV, "王奶奶", KEY)], now=start)
    store.remove_device(DEV, now=start)  # the registry row goes, the key stays
    runner = EngineRunner(store, SQLiteEventLog(path), sensor_settings(), clock=clock)
    runner.load()
    store.prepare(CommitBatch(frames=[_frame(DEV, 1, start + 1)]))
    store.finish()
    runner.step()
    assert remove_device(store, tmp_path, DEV, now=start + 60) is None  # it only had a key
    clock.now = start + 86400
    runner.step()
    assert _alert_steps(path) == []
    store.close()
