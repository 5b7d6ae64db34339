"""The card's runtime on MicroPython: firmware/lib/scheduler.py (jobs, waits, sleep permission),
and firmware/main.py -> firmware/lib/cardloop.py driving the cores on the virtual card's board
(tools/vcard/mpy/simboard.py under carecard.tools.vcard.runner: the board the virtual card runs,
with the simulated A7670 and, where a test needs fixes, the simulated GNSS) in virtual time,
sending to a receiver on 127.0.0.1 (tests/loopback_receiver.py) that decodes what arrives."""

from __future__ import annotations

import json
from pathlib import Path

from carecard.tools import micropython
from carecard.tools.vcard.modem_sim import ModemSim
from carecard.tools.vcard.runner import VirtualCard, World

from loopback_receiver import DEVICE, KEY, receiver  # noqa: F401  (receiver: a fixture)


def test_scheduler_hands_out_jobs_caps_waits_and_allows_sleep_only_when_quiet(mpy) -> None:
    out = mpy.run("""
import scheduler
s = scheduler.Scheduler(scheduler.timings({"status_s": 3600, "watchdog_s": 60}), 0)
print(s.due(0))
print(s.plan(0, None, True), s.plan(0, 5000, True), s.plan(0, 5000, False), s.plan(0, 10, True))
print(s.due(29999), s.due(30000), s.due(3600000))
print(s.plan(3600000, 3599000, True))
try:
    scheduler.timings({"status_s": 0, "watchdog_s": 60})
except scheduler.SchedulerError as exc:
    print(exc)
""")
    lines = out.strip().splitlines()
    assert lines[0] == "['feed', 'status']"
    # the wait never passes the watchdog's feed time (half its timeout)
    assert lines[1] == "(30000, True) (5000, True) (5000, False) (10, False)"
    assert lines[2] == "[] ['feed'] ['feed', 'status']"
    assert lines[3] == "(0, False)"  # a deadline already past: go round at once
    assert "status_s must be a positive integer, got 0" in lines[4]


def run_card(tmp_path: Path, port: int, *, motion: bool, until_ms: int, script=None):
    """main.py on the virtual card for until_ms; `script(card)` schedules the world's events.
    Returns (run log, the outputs the board drove as (ms, name, value), the modem simulator)."""
    flash = tmp_path / "flash"
    flash.mkdir()
    cfg = {"device_id": DEVICE, "device_key": KEY.hex(), "server_host": "127.0.0.1",
           "server_port": port, "contacts": [{"key": 1, "name": "Son", "number": "+8613800000001"}],
           "status_s": 3600, "position_s": 900}
    (flash / "config.json").write_text(json.dumps(cfg))
    outputs: list[tuple[int, str, int]] = []
    sim = ModemSim(seed=1)
    world = World(modem=sim, has_motion_bus=motion)
    with VirtualCard(micropython.card_image(compiled=True), flash, world, reply_wait_s=0.2,
                     on_output=lambda name, value, ms: outputs.append((ms, name, value))) as card:
        if script is not None:
            script(card)
        run = card.run(until_ms)
    assert (flash / "outbox.log").exists() and (flash / "uplink.cnt").exists()
    return run, outputs, sim


def test_the_card_boots_says_hello_and_reports_on_the_virtual_cards_board(mpy, tmp_path, receiver) -> None:
    # two hours of a card on a table: five motion interrupts, a long press (SOS) at 20 min
    def script(card):
        for i in range(5):
            card.motion(100_000 + i * 60_000)
        card.press(1_200_000, 1, hold_ms=3000)
    run, outputs, sim = run_card(tmp_path, receiver.port, motion=True, until_ms=2 * 3600 * 1000 + 60_000,
                                 script=script)
    assert receiver.errors == []
    assert [cause for _, cause in run.resets] == ["power_on"]
    kinds = [f["type"] for f in receiver.frames]
    hello = receiver.frames[0]
    assert hello["type"] == "hello" and hello["reset_cause"] == "power_on"
    assert hello["motion_sensor"] == "lis2dh12" and hello["modem"] == "a7670"
    statuses = receiver.of("status")
    assert len(statuses) == 3  # at boot, after one hour and after two
    assert [s["motion_count"] for s in statuses] == [0, 5, 0]
    assert all(s["battery_mv"] == 3900 for s in statuses)  # sampled before the first status
    assert kinds.count("sos") == 1 and receiver.of("sos")[0]["trigger"] == "long_press"
    # positions: no GNSS output (world without a receiver): powered for each attempt, off again,
    # and a position without a fix reported
    power = [(ms, v) for ms, name, v in outputs if name == "gnss_power"]
    assert power[0][1] == 1 and power[-1][1] == 0 and len(power) >= 4
    assert all(a[1] != b[1] for a, b in zip(power, power[1:]))  # on, off, on, off ...
    assert any(f["type"] == "position" and f["fix"] == "none" for f in receiver.frames)
    # the modem was switched on with its PWRKEY pulse (100 ms for the A7670), then slept (DTR)
    presses = [(ms, v) for ms, name, v in outputs if name == "pwrkey"]
    assert presses[0][1] == 1 and presses[1][1] == 0 and presses[1][0] - presses[0][0] == 100
    assert ("dtr", 1) in [(name, v) for _, name, v in outputs]
    # the watchdog was started from the config; the card was never reset by it in two hours
    assert ("watchdog", 60000) in [(name, v) for _, name, v in outputs]


def test_a_card_without_a_motion_sensor_says_so_and_reports_motion_unknown(mpy, tmp_path, receiver) -> None:
    run_card(tmp_path, receiver.port, motion=False, until_ms=60_000)
    assert receiver.frames[0]["motion_sensor"] == "none"
    status = receiver.of("status")[0]
    assert status["motion_count"] is None or status["motion_count"] == 65535


def test_a_full_outbox_drains_one_datagram_at_a_time_when_coverage_returns(mpy, tmp_path, receiver) -> None:
    """Found by `carecard sim coverage-hole-6h`: when the bearer came back with many frames due,
    the loop queued four AT+CIPSENDs a turn until the AT queue overflowed, the error killed
    main.py, and the card crash-looped with its outbox full. Twenty call records queue during a
    hole; when coverage returns every one arrives, without a single reset."""
    def script(card):
        sim = card.world.modem
        card.at(60_000, lambda: sim.set_coverage(False, card.now))
        for i in range(20):
            card.press(90_000 + i * 2_000, 2)      # key 3 has no number: a call record each
        card.press(200_000, 1, hold_ms=2500)       # and an SOS, whose frame retries meanwhile
        card.at(600_000, lambda: sim.set_coverage(True, card.now))
    run, _outputs, _sim = run_card(tmp_path, receiver.port, motion=False, until_ms=900_000, script=script)
    assert [cause for _, cause in run.resets] == ["power_on"]
    records = [r for r in receiver.of("call") if r["key"] == 3]
    assert len(records) == 20 and all(r["outcome"] == "no_number" for r in records)
    # when the link is back the SOS goes first, whatever its retransmission backoff said
    after = [f["type"] for f in receiver.frames if f["counter"] > receiver.of("hello")[0]["counter"]]
    assert after.index("sos") < after.index("call")


def test_a_datagram_from_a_sleeping_modem_waits_for_its_wake_and_leaves_at_once(mpy, tmp_path, receiver) -> None:
    """Found by `carecard sim normal-day`'s energy: a frame made while the modem slept queued its
    AT+CIPSEND behind the wake (DTR low, then the profile's wake time), but the loop neither
    carried out the DTR action nor woke for the wake timer: it slept on to its next job (the
    watchdog's feed, up to 30 s), then wrote DTR low and the command in the same instant, to a
    UART still asleep; the command timed out after 15 s and was sent again. Each datagram kept
    the modem awake and the MCU active about 30 s longer than needed."""
    run, outputs, sim = run_card(tmp_path, receiver.port, motion=False, until_ms=2 * 3600 * 1000)
    assert [cause for _, cause in run.resets] == ["power_on"]
    dtr = [(ms, v) for ms, name, v in outputs if name == "dtr"]
    sends = [ms for ms, direction, data in sim.transcript
             if direction == "in" and data.startswith(b"AT+CIPSEND")]
    assert len(sends) >= 8   # hello, statuses, positions
    # no command was abandoned (ESC) and sent again
    assert not [ms for ms, direction, data in sim.transcript if direction == "in" and data == b"\x1b"]
    assert len(sends) == len(sim.sent_datagrams)
    for ms in sends:
        # the modem's UART was awake: DTR low for at least the A7670's wake time (100 ms)
        before = [(t, v) for t, v in dtr if t <= ms]
        if before:
            t, level = before[-1]
            assert level == 0 and ms - t >= 100, (ms, before[-3:])
    # each frame made while the modem slept left within a second of the modem's wake
    wakes = [t for (_, was), (t, v) in zip(dtr, dtr[1:]) if was == 1 and v == 0]
    assert len(wakes) >= 6
    for t in wakes:
        after = [ms for ms in sends if ms >= t]
        if after and after[0] - t < 60_000:
            assert after[0] - t <= 1_000, (t, after[0])


def test_the_runner_waits_for_an_answer_only_while_one_is_owed(mpy, tmp_path, receiver) -> None:
    """The runner holds virtual time after each datagram until its answer comes or reply_wait_s
    of real time passed; an answer that had already come in (read while the card polled its
    modem) still cost the whole wait. The loopback receiver acks every frame: no wait runs out."""
    flash = tmp_path / "flash"
    flash.mkdir()
    cfg = {"device_id": DEVICE, "device_key": KEY.hex(), "server_host": "127.0.0.1",
           "server_port": receiver.port, "contacts": [{"key": 1, "name": "Son", "number": "+8613800000001"}],
           "status_s": 600, "position_s": 300}
    (flash / "config.json").write_text(json.dumps(cfg))
    world = World(modem=ModemSim(seed=1), has_motion_bus=False)
    # a long wait: an answer owed ends it as soon as it comes; only waits for nothing run out
    with VirtualCard(micropython.card_image(compiled=True), flash, world, reply_wait_s=5.0) as card:
        card.run(2 * 3600 * 1000)
        assert card.datagrams_out >= 20 and card.datagrams_in == card.datagrams_out
        assert card.reply_waits_expired == 0


def test_without_coverage_the_modem_sleeps_and_the_card_does_not_poll_it(mpy, tmp_path, receiver) -> None:
    """Energy (carecard sim coverage-hole-6h: 1,120 mAh/day while out of coverage): after the
    registration wait ran out the driver polled +CREG?/+CEREG? every 2 s for 3 min out of every
    3.5 min, with the modem's UART awake and the card's loop polling it ten times a second. Now,
    out of coverage, the modem sleeps (it searches by itself and reports +CREG/+CEREG, which
    wake the card through RI), the driver asks less and less often, and what waited is sent
    when coverage returns."""
    flash = tmp_path / "flash"
    flash.mkdir()
    cfg = {"device_id": DEVICE, "device_key": KEY.hex(), "server_host": "127.0.0.1",
           "server_port": receiver.port, "contacts": [{"key": 1, "name": "Son", "number": "+8613800000001"}],
           "status_s": 3600, "position_s": 86400}   # no GNSS here: no fix attempts in the hole
    (flash / "config.json").write_text(json.dumps(cfg))
    sim = ModemSim(seed=1)
    world = World(modem=sim, has_motion_bus=False)
    hole = (600_000, 600_000 + 3 * 3600_000)
    marks: dict[str, dict] = {}
    with VirtualCard(micropython.card_image(compiled=True), flash, world, reply_wait_s=0.2) as card:
        card.at(hole[0], lambda: sim.set_coverage(False, card.now))
        card.at(hole[0] + 600_000, lambda: marks.setdefault("from", card.ledger.totals(card.now)))
        card.at(hole[1], lambda: marks.setdefault("to", card.ledger.totals(card.now)))
        card.at(hole[1], lambda: sim.set_coverage(True, card.now))
        card.press(hole[0] + 3600_000, 1, hold_ms=2500)   # an SOS in the hole
        run = card.run(hole[1] + 600_000)
    assert [cause for _, cause in run.resets] == ["power_on"]
    spent = {key: marks["to"].get(key, 0) - marks["from"].get(key, 0) for key in marks["to"]}
    span = hole[1] - hole[0] - 600_000
    awake = spent.get(("modem", "idle"), 0)
    active = spent.get(("mcu", "active"), 0)
    assert awake < span * 0.1, (awake, span)     # was ~86 %
    assert active < span * 0.05, (active, span)  # was ~86 %
    # everything made in the hole arrives after it, the SOS among the first
    kinds = [f["type"] for f in receiver.frames]
    assert "sos" in kinds and kinds.count("status") >= 3
