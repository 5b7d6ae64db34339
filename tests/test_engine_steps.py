"""The engine's runner over a real SQLite event log: how it steps through a backlog.

Behind the log it reads larger steps (fewer commits per event); whatever the step sizes, the
committed result is the same: device states, alerts and alert events."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from carecard.host.engine.runner import EngineRunner, state_json
from carecard.host.engine.settings import Settings
from carecard.host.paths import ingest_db_path
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.storage.sqlite.store import SQLiteStore
from carecard.protocol import decode_frame, encode_frame

KEY = bytes(range(16))
T0 = 1764374400.0
DEVICES = [861234560000000 + i * 7 for i in range(12)]
ROUNDS = 40  # frames per device, one every 10 minutes


def _message(device: int, counter: int, at: int, round_: int) -> dict[str, Any]:
    head = {"device": device, "counter": counter, "time": at}
    if device == DEVICES[3] and round_ == 20:
        return {**head, "type": "sos", "trigger": "long_press", "lat_e7": 249012345, "lon_e7": 1184567890,
                "fix": "3d", "fix_age_s": 5, "battery_pct": 70}
    if round_ % 5 == 4:
        # the first half of the cards never move (inactivity), the others do
        moving = DEVICES.index(device) >= len(DEVICES) // 2
        return {**head, "type": "status", "battery_mv": 3900, "battery_pct": 80, "charging": "discharging",
                "rssi_dbm": -70, "motion_count": 6 if moving else 0, "outbox_depth": 0}
    return {**head, "type": "position", "lat_e7": 249012345 + (round_ % 3) * 20, "lon_e7": 1184567890,
            "alt_m": 30, "hdop_x10": 9, "sats": 8, "fix": "3d", "fix_age_s": 3, "speed_cms": 0,
            "course_x10": 0, "source": "fresh"}


def _log(data_dir: Path) -> int:
    """A store whose event log holds ROUNDS frames of each device, in received order."""
    store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
    rows = []
    for round_ in range(ROUNDS):
        for i, device in enumerate(DEVICES):
            received = T0 + round_ * 600 + i
            message = _message(device, round_ + 1, int(received) - 1, round_)
            frame = encode_frame(message, KEY)
            opened: list[bytes] = []
            decoded = decode_frame(frame, KEY, opened)
            rows.append((device, round_ + 1, frame[-8:], decoded["type"], decoded["time"], received, "udp",
                         frame, opened[0]))
    with store.transaction() as conn:
        last = SQLiteEventLog.append_frames(conn, rows)
    store.close()
    return last


def _run(data_dir: Path, step_events: int, max_step_events: int) -> tuple[list[int], dict[str, Any]]:
    store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
    eventlog = SQLiteEventLog(ingest_db_path(data_dir))
    # the clock stays at the log's start: the events' own times drive the engine (a step's end
    # adds nothing), so only the step sizes differ between two runs
    runner = EngineRunner(store, eventlog, Settings({"motion_sensor": True}), clock=lambda: T0,
                          step_events=step_events, max_step_events=max_step_events)
    runner.load()
    runner.cursor = 0  # from the start of the log (a first load starts at its end)
    limits = []
    last = eventlog.last_seq()
    while runner.cursor < last:
        result = runner.step()
        limits.append(result.limit)
        assert result.events
    checkpoint = store.load_engine("engine")
    assert checkpoint is not None
    conn = sqlite3.connect(ingest_db_path(data_dir))
    alert_events = [json.loads(body)["id"] for (body,) in conn.execute(
        "SELECT body FROM event_log WHERE opened IS NULL ORDER BY seq")]
    conn.close()
    outcome = {"cursor": checkpoint.cursor,
               "devices": {device: json.loads(text) for device, text in checkpoint.devices.items()},
               "alerts": sorted((a.id, a.kind, a.state, a.step) for a in store.list_alerts()),
               "alert_events": alert_events}
    store.close()
    eventlog.close()
    return limits, outcome


def test_behind_the_log_the_steps_grow_and_the_result_is_the_same(tmp_path: Path) -> None:
    fixed, growing = tmp_path / "fixed", tmp_path / "growing"
    fixed.mkdir()
    last = _log(fixed)
    assert last == ROUNDS * len(DEVICES)
    shutil.copytree(fixed, growing, dirs_exist_ok=True)

    fixed_limits, fixed_outcome = _run(fixed, 40, 40)
    growing_limits, growing_outcome = _run(growing, 40, 200)

    assert fixed_limits == [40] * 12
    assert growing_limits == [40, 80, 160, 200]  # doubled while each step read all it asked for
    assert growing_outcome == fixed_outcome
    kinds = {kind for _id, kind, _state, _step in fixed_outcome["alerts"]}
    assert {"sos", "inactivity"} <= kinds, kinds  # the comparison covers alerts, not only states
    assert len(fixed_outcome["devices"]) == len(DEVICES)


def test_after_catching_up_the_steps_are_small_again(tmp_path: Path) -> None:
    _log(tmp_path)
    store = SQLiteStore(ingest_db_path(tmp_path), readonly_lookups=False)
    eventlog = SQLiteEventLog(ingest_db_path(tmp_path))
    runner = EngineRunner(store, eventlog, Settings(), clock=lambda: T0, step_events=50, max_step_events=400)
    runner.load()
    runner.cursor = 0
    steps = [runner.step() for _ in range(5)]
    # each step read all it asked for but the last (the frames and the engine's own alert events)
    assert [step.limit for step in steps[:4]] == [50, 100, 200, 400]
    assert [step.events for step in steps[:3]] == [50, 100, 200] and steps[3].events < 400
    assert steps[4].limit == 50
    assert runner.cursor == eventlog.last_seq()
    store.close()
    eventlog.close()


def test_a_devices_state_is_written_as_json_dumps_writes_it() -> None:
    state = {"last_rx": T0 + 0.125, "seen": 2**64 - 1, "c_lat": 24.9012345, "sensor": None, "charging": False,
             "power": "低电量", "alerts": [{"id": "a-1", "info": {"reason": "x\"y"}}]}
    assert state_json(state) == json.dumps(state, separators=(",", ":"), ensure_ascii=False)
    assert json.loads(state_json(state)) == state
    beyond = {"max_counter": 2**70}  # past what orjson writes: json.dumps writes it
    assert json.loads(state_json(beyond)) == beyond


def test_behind_the_log_the_clock_waits_for_the_events_still_to_read(tmp_path: Path) -> None:
    """An engine that starts behind (a restart after downtime, a burst) with its clock at the
    log's end: a step that read only part of the backlog must not run the clock to now, or
    every wake-up due before the unread events (offline, stillness) fires although those events
    would have cancelled it. Small steps and one big step give the same alerts."""
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    _log(small)
    shutil.copytree(small, big, dirs_exist_ok=True)
    end = T0 + ROUNDS * 600 + 60

    def run(data_dir: Path, step: int) -> dict[str, Any]:
        store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
        eventlog = SQLiteEventLog(ingest_db_path(data_dir))
        runner = EngineRunner(store, eventlog, Settings({"motion_sensor": True}), clock=lambda: end,
                              step_events=step, max_step_events=step)
        runner.load()
        runner.cursor = 0
        runner.engine.now = T0
        last = eventlog.last_seq()
        while runner.cursor < last:
            runner.step()
        alerts = sorted((a.kind, a.device, a.state, a.step) for a in store.list_alerts())
        store.close()
        eventlog.close()
        return {"alerts": alerts}

    in_one = run(big, 100_000)
    in_small_steps = run(small, 40)
    assert in_small_steps == in_one


def test_sync_waits_for_one_step_that_starts_after_it_not_for_the_periodic_one(tmp_path: Path) -> None:
    """EngineThread.sync (the receiver's `sync`, the simulation clock's pacing) wakes the thread
    and returns when the step it started is done: it must not also wait for the next periodic
    step, `poll_s` later (a simulated day paces the engine thousands of times)."""
    from carecard.host.engine.runner import EngineThread

    _log(tmp_path)
    store = SQLiteStore(ingest_db_path(tmp_path), readonly_lookups=False)
    eventlog = SQLiteEventLog(ingest_db_path(tmp_path))
    runner = EngineRunner(store, eventlog, Settings(), clock=lambda: T0)
    thread = EngineThread(runner, poll_s=3600.0)  # no periodic step during the test
    thread.start()
    try:
        for _ in range(3):
            assert thread.sync(timeout=10.0)
    finally:
        thread.stop()
        store.close()
        eventlog.close()
