"""The board layer's portable parts on MicroPython: the never-wrapping millisecond clock
(firmware/lib/msclock.py), the RTC's date conversion (firmware/lib/rtcdate.py) and the board
selection of firmware/board/__init__.py (the virtual card's `simboard` on the unix port)."""

from __future__ import annotations

import calendar
import json
import random
import time

import pytest


def test_clock_counts_across_many_wraps_of_the_counter(mpy) -> None:
    # A counter that wraps at 2**8 advanced by irregular steps (each less than a period) reads
    # as the sum of the steps, across dozens of wraps and with the counter starting anywhere.
    rng = random.Random(13)
    steps = [rng.randrange(0, 256) for _ in range(300)]
    code = f"""
import json
from msclock import MsClock
raw = [200]
def ticks():
    return raw[0]
clock = MsClock(ticks, 0xFF)
seen = []
for step in {steps!r}:
    raw[0] = (raw[0] + step) % 256
    seen.append(clock.now())
print(json.dumps(seen))
"""
    seen = json.loads(mpy.run(code))
    expected, total = [], 0
    for step in steps:
        total += step
        expected.append(total)
    assert seen == expected
    assert total > 50 * 256


def test_clock_on_ticks_ms_passes_the_real_wrap_period(mpy) -> None:
    # ticks_ms's own period (2**30) with a counter started just below the wrap: the clock
    # goes on past it and past the 32-bit card's small-int range.
    code = """
from msclock import MsClock
raw = [0x3FFFFFFF - 5]
clock = MsClock(lambda: raw[0])
out = []
for step in (3, 4, 0x1FFFFFFF, 0x1FFFFFFF, 10):
    raw[0] = (raw[0] + step) & 0x3FFFFFFF
    out.append(clock.now())
import time
real = MsClock(time.ticks_ms)
a = real.now()
time.sleep_ms(20)
b = real.now()
print(out, a >= 0, b - a >= 20)
"""
    out = mpy.run(code).split()
    assert " ".join(out) == "[3, 7, 536870918, 1073741829, 1073741839] True True"


def test_clock_refuses_a_mask_that_is_no_power_of_two_minus_one(mpy) -> None:
    out = mpy.run("""
from msclock import MsClock
try:
    MsClock(lambda: 0, 1000)
except ValueError as exc:
    print(exc)
""")
    assert "power of two minus one" in out and "1000" in out


def test_rtc_tuples_and_unix_seconds_agree_with_the_host_calendar(mpy) -> None:
    rng = random.Random(5)
    moments = [0, 951782400, 946684799, 4102444800, 1767225599, 1709164800] + [
        rng.randrange(0, 4102444800) for _ in range(200)]
    code = f"""
import json
from rtcdate import rtc_from_unix, unix_from_rtc
out = []
for s in {moments!r}:
    dt = rtc_from_unix(s)
    out.append([list(dt), unix_from_rtc(dt)])
print(json.dumps(out))
"""
    results = json.loads(mpy.run(code))
    for s, (dt, back) in zip(moments, results):
        t = time.gmtime(s)
        assert dt == [t.tm_year, t.tm_mon, t.tm_mday, t.tm_wday, t.tm_hour, t.tm_min, t.tm_sec, 0], s
        assert back == s
        assert calendar.timegm(t) == s


def test_rtc_tuples_that_hold_no_valid_time_read_as_none(mpy) -> None:
    out = mpy.run("""
from rtcdate import unix_from_rtc
for dt in ((2025, 2, 29, 0, 0, 0, 0, 0), (2025, 13, 1, 0, 0, 0, 0, 0), (2025, 1, 1, 0, 24, 0, 0, 0),
           (2025, 1, 1, 0, 0, 60, 0, 0), (2024, 2, 29, 3, 23, 59, 59, 0)):
    print(unix_from_rtc(dt))
""")
    assert out.split() == ["None", "None", "None", "None", str(calendar.timegm((2024, 2, 29, 23, 59, 59)))]


def test_board_selection_on_the_unix_port_takes_the_virtual_cards_simboard(mpy, tmp_path) -> None:
    (tmp_path / "simboard.py").write_text(
        "class Sim:\n    name = 'sim'\n\ndef open_board():\n    return Sim()\n")
    out = mpy.run(f"""
import sys
import board
try:
    board.open_board()
except ImportError as exc:
    print("no board:", exc)
sys.path.append({str(tmp_path)!r})
print(board.open_board().name, board.EV_KEY << 3 | board.EV_MOTION | board.EV_RI)
""")
    first, second = out.strip().splitlines()
    assert first.startswith("no board:") and "simboard" in first and "linux" in first
    assert second == "sim 56"
