# The cores' millisecond clock: milliseconds since start that never wrap, made from a counter
# that does (time.ticks_ms wraps at 2**30 on every MicroPython port: 12.4 days, shorter than a
# card's life between reboots). Sans-I/O: the counter is injected (time.ticks_ms on the card).
#
#   clock = MsClock(time.ticks_ms)
#   clock.now()          # ms since the clock was made; read at least once per half period
#                        # (6.2 days for ticks_ms): the scheduler reads it at every wake-up
#
# Only small-int arithmetic on the counter's values (they stay below 2**30); the total grows
# past the small-int range of a 32-bit card after 12.4 days and is a heap integer from then on.

_TICKS_MASK = 0x3FFFFFFF  # ticks_ms period (2**30) minus one


class MsClock:
    def __init__(self, ticks, mask=_TICKS_MASK):
        if mask < 1 or mask & (mask + 1):
            raise ValueError("MsClock: mask must be a power of two minus one, got %r" % (mask,))
        self._ticks = ticks
        self._mask = mask
        self._last = ticks() & mask
        self._ms = 0

    def now(self):
        raw = self._ticks() & self._mask
        self._ms += (raw - self._last) & self._mask
        self._last = raw
        return self._ms
