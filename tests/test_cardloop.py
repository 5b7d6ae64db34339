"""The card's runtime on MicroPython: firmware/lib/scheduler.py (jobs, waits, sleep permission)
and firmware/lib/cardloop.py driving the cores on a simulated board in virtual time (a board
with the interface of firmware/board/__init__.py, written here; its modem stays silent, so the
frames stay in the outbox, where the test reads them with the host's decoder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carecard.protocol import decode_frame

KEY_HEX = "000102030405060708090a0b0c0d0e0f"
DEVICE = 861234567890123


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


SIM = r'''
import board
class I2CFake:
    # a LIS2DH12 that answers WHO_AM_I and reports an interrupt source when read
    def __init__(self):
        self.regs = bytearray(256)
        self.regs[0x0F] = 0x33
        self.regs[0x31] = 0x40 | 0x2A
    def readfrom_mem_into(self, addr, reg, buf):
        for i in range(len(buf)):
            buf[i] = self.regs[(reg & 0x7F) + i]
    def writeto_mem(self, addr, reg, buf):
        for i in range(len(buf)):
            self.regs[(reg & 0x7F) + i] = buf[i]

class SimBoard:
    name = "sim"
    key_count = 4
    def __init__(self, motion):
        self.t = 0
        self.events = 0
        self.keys = [False] * 4
        self.has_motion_bus = motion
        self.motion_i2c = I2CFake() if motion else None
        self.log = []
        self.script = []  # (t, kind, arg) to happen in virtual time
        self.fed = 0
        self.sleeps = 0
        self.wdt = None
        self.rtc = None
    def now_ms(self):
        return self.t
    def take_events(self):
        e = self.events
        self.events = 0
        return e
    def key_level(self, k):
        return self.keys[k]
    def motion_level(self):
        return False
    def modem_read(self, buf):
        return 0
    def modem_write(self, data):
        self.log.append(("modem_write", len(data)))
    def modem_pwrkey(self, pressed):
        self.log.append(("pwrkey", pressed, self.t))
    def modem_dtr(self, level):
        self.log.append(("dtr", level))
    def modem_power(self, on):
        return False
    def gnss_read(self, buf):
        return 0
    def gnss_write(self, data):
        pass
    def gnss_power(self, on):
        self.log.append(("gnss_power", on, self.t))
    def gnss_backup(self, on):
        self.log.append(("gnss_backup", on, self.t))
    def battery_uv(self):
        return 1950000
    def charger_pins(self):
        return False, False
    def buzzer(self, on):
        pass
    def vibration(self, on):
        pass
    def led(self, on):
        pass
    def watchdog_start(self, ms):
        self.wdt = ms
    def feed(self):
        self.fed += 1
    def rtc_unix(self):
        return self.rtc
    def set_rtc_unix(self, s):
        self.rtc = s
    def reset_cause(self):
        return "watchdog"
    def wake_cause(self):
        return board.WAKE_NONE
    def idle(self, ms, sleep):
        end = self.t + ms
        if self.script and self.script[0][0] <= end:
            t, kind, arg = self.script.pop(0)
            self.t = max(self.t, t)
            if kind == "key":
                self.keys[arg[0]] = arg[1]
                self.events |= board.EV_KEY << arg[0]
            elif kind == "motion":
                self.events |= board.EV_MOTION
            return board.WAKE_KEY if kind == "key" else board.WAKE_MOTION
        self.t = end
        if sleep:
            self.sleeps += 1
        return board.WAKE_TIMER
    def deep_sleep(self, ms):
        raise SystemExit
    def reboot(self):
        raise SystemExit
'''

RUN = SIM + r'''
import json, config, cardloop, outbox
cfg = config.load(%(config)r)
hw = SimBoard(%(motion)r)
hw.script = %(script)r
loop = cardloop.CardLoop(hw, cfg, root=%(root)r)
while hw.t < %(until)d:
    loop.step()
box = loop.outbox
frames = [bytes(box.read(c)).hex() for c in box.counters()]
print(json.dumps({"frames": frames, "log": hw.log, "fed": hw.fed, "wdt": hw.wdt,
                  "problems": loop.problems, "loops": loop.sched.loops,
                  "mode": loop.positions.mode, "wakes": loop.sched.wakes}))
'''


def run_card(mpy, tmp_path: Path, motion: bool, script: list, until: int) -> dict:
    cfg = {"device_id": DEVICE, "device_key": KEY_HEX, "server_host": "127.0.0.1", "server_port": 9,
           "contacts": [{"key": 1, "name": "Son", "number": "+8613800000001"}],
           "status_s": 3600, "position_s": 900}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code = RUN % {"config": str(tmp_path / "config.json"), "motion": motion, "script": script,
                  "root": str(tmp_path) + "/", "until": until}
    return json.loads(mpy.run(code, timeout=120))


def decoded(result: dict) -> list[dict]:
    return [decode_frame(bytes.fromhex(f), bytes.fromhex(KEY_HEX)) for f in result["frames"]]


def test_the_card_boots_says_hello_and_reports_on_a_simulated_board(mpy, tmp_path: Path) -> None:
    # two hours of a card on a table: a key press at 10 min, a long press (SOS) at 20 min
    script = [(600000, "key", (0, True)), (600200, "key", (0, False)),
              (1200000, "key", (1, True)), (1203000, "key", (1, False))]
    result = run_card(mpy, tmp_path, True, script, 2 * 3600 * 1000)
    messages = decoded(result)
    kinds = [m["type"] for m in messages]
    hello = messages[0]
    assert hello["type"] == "hello" and hello["reset_cause"] == "watchdog"
    assert hello["motion_sensor"] == "lis2dh12"
    assert kinds.count("status") == 2  # at boot and an hour later
    assert kinds.count("sos") == 1
    sos = messages[kinds.index("sos")]
    assert sos["trigger"] == "long_press" and sos["fix"] == "none"
    status = messages[kinds.index("status")]
    assert status["motion_count"] == 0
    # positions: the GNSS was powered for each attempt and switched off again (no NMEA: no fix)
    power = [e for e in result["log"] if e[0] == "gnss_power"]
    assert power and power[0][1] is True and power[-1][1] is False
    assert all(a[1] != b[1] for a, b in zip(power, power[1:]))  # on, off, on, off ...
    assert any(m["type"] == "position" and m["fix"] == "none" for m in messages)
    # the modem was switched on with its PWRKEY pulse (100 ms for the A7670)
    presses = [e for e in result["log"] if e[0] == "pwrkey"]
    assert presses[0][1] is True and presses[1][1] is False
    assert presses[1][2] - presses[0][2] == 100
    # the watchdog was started from the config and fed at least every half timeout
    assert result["wdt"] == 60000 and result["fed"] >= 2 * 3600 // 30
    assert result["problems"] == []


def test_a_card_without_a_motion_sensor_says_so_and_reports_motion_unknown(mpy, tmp_path: Path) -> None:
    result = run_card(mpy, tmp_path, False, [], 60000)
    messages = decoded(result)
    assert messages[0]["motion_sensor"] == "none"
    status = next(m for m in messages if m["type"] == "status")
    assert status["motion_count"] is None or status["motion_count"] == 65535


def test_motion_interrupts_are_counted_in_the_status(mpy, tmp_path: Path) -> None:
    script = [(1000 + i * 60000, "motion", None) for i in range(5)]
    result = run_card(mpy, tmp_path, True, script, 3600 * 1000 + 1000)
    statuses = [m for m in decoded(result) if m["type"] == "status"]
    assert [s["motion_count"] for s in statuses] == [0, 5]


def test_main_boots_the_runtime_on_the_board_open_board_selects(mpy, tmp_path: Path) -> None:
    # firmware/main.py as the card runs it, with the virtual card's module `simboard` on the path:
    # its board ends the run (SystemExit, as a deep sleep would) after ten simulated minutes
    (tmp_path / "simboard.py").write_text(SIM + """
class EndingBoard(SimBoard):
    def idle(self, ms, sleep):
        if self.t > 600000:
            print("STOP", self.fed, self.wdt)
            raise SystemExit
        return SimBoard.idle(self, ms, sleep)

def open_board():
    return EndingBoard(False)
""")
    cfg = {"device_id": DEVICE, "device_key": KEY_HEX, "server_host": "127.0.0.1", "server_port": 9,
           "contacts": [{"key": 1, "name": "Son", "number": "+8613800000001"}]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    main = (Path(__file__).resolve().parent.parent / "firmware" / "main.py").read_text()
    out = mpy.run(f"""
import os, sys
sys.path.append({str(tmp_path)!r})
os.chdir({str(tmp_path)!r})
exec({main!r})
""")
    stop, fed, watchdog = out.split()
    assert stop == "STOP" and int(fed) >= 600 // 30 and watchdog == "60000"
    assert (tmp_path / "outbox.log").stat().st_size > 0
    assert (tmp_path / "uplink.cnt").exists()
