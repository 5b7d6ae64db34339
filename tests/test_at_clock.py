"""The AT engine's clock on the card: time.ticks_ms() values, which wrap at 2**30. Near the wrap
a deadline computed as now + timeout is past 2**30 - 1, no small int on the 32-bit port, and
every tick's arithmetic on it would allocate: ticks stay allocation-free across the wrap."""

from __future__ import annotations

import pytest

TICKS_PERIOD = 1 << 30

_CODE = """
import micropython, at
e = at.ATEngine(urcs=("RING",))
start = %(start)d
e.tick(start)
e.send(at.Command("AT+CSQ", prefix="+CSQ", timeout_ms=5000))
assert e.data_to_send() == b"AT+CSQ\\r"
clock = [(start + k * 100) & 0x3FFFFFFF for k in range(50)]   # 4.9 s of ticks_ms values
left = [0] * 50
k = 0
micropython.heap_lock()
try:
    while k < 50:
        e.tick(clock[k])
        left[k] = e.next_timeout()
        k += 1
finally:
    micropython.heap_unlock()
assert e.current is not None and e.next_event() is None
e.tick((start + 5000) & 0x3FFFFFFF)
ev = e.next_event()
print(ev[0], ev[2], left[0], left[-1])
"""


@pytest.mark.parametrize("start", [1000, TICKS_PERIOD - 2000, TICKS_PERIOD - 1])
def test_ticks_across_the_ticks_ms_wrap_allocate_nothing(mpy, start):
    out = mpy.run(_CODE % {"start": start}).split()
    assert out == ["done", "TIMEOUT", "5000", "100"]


def test_ticks_diff_and_add_agree_with_modular_arithmetic(mpy):
    """ticks_diff(a, b) is a - b modulo 2**30 in [-2**29, 2**29), for ticks_ms values and for
    clocks that never wrap; ticks_add(t, d) the ticks_ms value d ms after t."""
    values = [0, 1, 5000, (1 << 29) - 1, 1 << 29, (1 << 30) - 5000, (1 << 30) - 1]
    big = [(1 << 30) + 7, 20 * 86_400_000]
    pairs = [(a, b) for a in values + big for b in values + big]
    adds = [(t, d) for t in values for d in (0, 1, 5000, 180_000)]
    code = (f"import at\nprint([at.ticks_diff(a, b) for a, b in {pairs!r}])\n"
            f"print([at.ticks_add(t, d) for t, d in {adds!r}])\n")
    diffs, sums = mpy.run(code).strip().split("\n")

    def modular(a: int, b: int) -> int:
        return (a - b + (1 << 29)) % (1 << 30) - (1 << 29)

    assert diffs == str([modular(a, b) for a, b in pairs])
    assert sums == str([(t + d) % (1 << 30) for t, d in adds])
