# GNSS fix acquisition for the card: sans-I/O controller around nmea.NMEAParser.
#
#   acq = FixAcquisition(hwdata.load("gnss_l76k"))
#   acq.start(now_ms)                    # -> actions BACKUP_ON (first time), POWER_ON
#   acq.receive_data(uart_bytes, now_ms) # NMEA from the receiver, any chunking
#   acq.poll(now_ms)                     # call at least once a second: the timeout
#   ev = acq.next_event()                # an action string for the board layer, a Result, or None
#
# One acquisition: power the receiver on (its backup supply on first, so RTC time and ephemeris
# survive for the next hot start), wait for fixes that are valid, timed and good enough (HDOP at
# most `max_hdop_x10`, at least `min_sats` satellites) for `settle` consecutive epochs, then power
# the receiver off and keep the backup supply on. If the timeout passes first, the result is
# NO_FIX carrying the best partial information seen (the best valid but too-poor fix if any,
# else the last epoch: its time and the satellites in view tell "indoors" from "no antenna").
#
# The board layer maps actions to pins (hardware/pins_*.json: gnss_power, gnss_backup): this
# module never touches `machine`. Time is milliseconds from a monotonic clock that does not wrap
# during the card's life (the board layer extends time.ticks_ms()).
#
# Timeouts come from the receiver's datasheet TTFF (hardware/gnss_*.json, "timing"): a start is
# "hot" when the backup supply has stayed on since the last fix and that fix is recent enough for
# the receiver's ephemeris to be valid (HOT_START_MAX_AGE_MS); the timeout is TIMEOUT_FACTOR x the
# hot or cold TTFF, at least MIN_TIMEOUT_MS. A caller may pass its own timeout_ms.
from collections import namedtuple

from nmea import NMEAParser

try:
    from micropython import const
except ImportError:  # CPython (host tools)
    def const(x):
        return x

# Actions for the board layer (strings: no allocation, easy to log).
BACKUP_ON = "gnss_backup_on"    # keep the receiver's V_BCKP supply on (RTC + ephemeris)
BACKUP_OFF = "gnss_backup_off"  # only for storage/shipping mode: the next start is cold
POWER_ON = "gnss_power_on"      # main supply on: the receiver starts and sends NMEA
POWER_OFF = "gnss_power_off"    # main supply off (backup stays as it is)

# Result statuses.
FIX = "fix"
NO_FIX = "no_fix"
CANCELLED = "cancelled"

TIMEOUT_FACTOR = const(4)          # x datasheet TTFF: open sky reaches it, buildings take longer
MIN_TIMEOUT_MS = const(20000)      # boot, first sentences and a fix at the 1 Hz rate, at least
# GPS broadcast ephemeris is fitted over 4 h around its reference time (IS-GPS-200, curve fit
# interval): after 2 h off the receiver may still hold a valid set, beyond it assume warm/cold.
HOT_START_MAX_AGE_MS = const(7200000)

_IDLE = const(0)
_ACQUIRING = const(1)

# status: FIX / NO_FIX / CANCELLED; fix: the nmea.Fix that met the criteria (FIX) or the best
# partial one (NO_FIX, CANCELLED; may be None); elapsed_ms since power-on; epochs seen; hot: whether
# the start was expected to be a hot start; timeout_ms applied.
Result = namedtuple("Result", ("status", "fix", "elapsed_ms", "epochs", "hot", "timeout_ms"))


class GNSSError(Exception):
    """Misuse of the controller (start while acquiring, a profile without TTFF figures)."""


def _ttff_ms(profile, key):
    try:
        return int(profile["timing"][key]["value"])
    except (KeyError, TypeError, ValueError):
        raise GNSSError("GNSS profile lacks timing.%s.value (see hardware/gnss_*.json)" % key)


class FixAcquisition:
    def __init__(self, profile, max_hdop_x10=50, min_sats=4, settle=1, timeout_ms=None,
                 parser=None):
        self.ttff_cold_ms = _ttff_ms(profile, "ttff_cold_ms")
        self.ttff_hot_ms = _ttff_ms(profile, "ttff_hot_ms")
        if settle < 1 or min_sats < 0 or max_hdop_x10 < 1:
            raise GNSSError("settle >= 1, min_sats >= 0 and max_hdop_x10 >= 1 are required")
        self.max_hdop_x10 = max_hdop_x10
        self.min_sats = min_sats
        self.settle = settle
        self.timeout_ms = timeout_ms
        self.parser = parser if parser is not None else NMEAParser()
        self._events = []
        self._state = _IDLE
        self._backup_on = False
        self._last_fix_ms = None      # clock time of the last good fix (hot-start judgement)
        self.ignored_bytes = 0        # bytes received while not acquiring
        self._t0 = 0
        self._timeout = 0
        self._deadline = 0            # _t0 + _timeout, computed once: see poll()
        self._hot = False
        self._good = 0
        self._epochs = 0
        self._best = None

    @property
    def acquiring(self):
        return self._state == _ACQUIRING

    def hot_start_expected(self, now_ms):
        t = self._last_fix_ms
        return self._backup_on and t is not None and now_ms - t <= HOT_START_MAX_AGE_MS

    def start(self, now_ms):
        if self._state == _ACQUIRING:
            raise GNSSError("start() while an acquisition is running: cancel() it first")
        hot = self.hot_start_expected(now_ms)
        if self.timeout_ms is not None:
            timeout = self.timeout_ms
        else:
            timeout = TIMEOUT_FACTOR * (self.ttff_hot_ms if hot else self.ttff_cold_ms)
            if timeout < MIN_TIMEOUT_MS:
                timeout = MIN_TIMEOUT_MS
        self.parser.reset()
        self._state = _ACQUIRING
        self._t0 = now_ms
        self._timeout = timeout
        self._deadline = now_ms + timeout
        self._hot = hot
        self._good = 0
        self._epochs = 0
        self._best = None
        if not self._backup_on:
            self._backup_on = True
            self._events.append(BACKUP_ON)
        self._events.append(POWER_ON)

    def backup_lost(self):
        """The board saw the backup supply drop (battery swap, brown-out): next start is cold."""
        self._backup_on = False

    def storage_mode(self):
        """Turn the backup supply off too (shipping): the next start is a cold start."""
        if self._state == _ACQUIRING:
            raise GNSSError("storage_mode() while an acquisition is running: cancel() it first")
        if self._backup_on:
            self._backup_on = False
            self._events.append(BACKUP_OFF)

    def receive_data(self, data, now_ms):
        if self._state != _ACQUIRING:
            self.ignored_bytes += len(data)
            return
        p = self.parser
        p.receive_data(data)
        while self._state == _ACQUIRING:
            fix = p.next_event()
            if fix is None:
                break
            self._epoch(fix, now_ms)
        if self._state == _ACQUIRING:
            self.poll(now_ms)

    def poll(self, now_ms):
        # a comparison, not a subtraction: past 2**30 ms (12.4 days of uptime) the clock is no
        # small int on a 32-bit card, and arithmetic on it would allocate at every poll
        if self._state == _ACQUIRING and now_ms >= self._deadline:
            # the last epoch may be complete but not yet closed: give it its chance
            self.parser.flush()
            while self._state == _ACQUIRING:
                fix = self.parser.next_event()
                if fix is None:
                    break
                self._epoch(fix, now_ms)
            if self._state == _ACQUIRING:
                self._finish(NO_FIX, self._best, now_ms)

    def cancel(self, now_ms):
        if self._state == _ACQUIRING:
            self._finish(CANCELLED, self._best, now_ms)

    def next_event(self):
        if self._events:
            return self._events.pop(0)
        return None

    def good_enough(self, fix):
        return (fix.valid and fix.time is not None and fix.hdop is not None
                and fix.hdop <= self.max_hdop_x10 and fix.sats is not None
                and fix.sats >= self.min_sats)

    def _epoch(self, fix, now_ms):
        self._epochs += 1
        if self.good_enough(fix):
            self._good += 1
            self._best = fix
            if self._good >= self.settle:
                self._last_fix_ms = now_ms
                self._finish(FIX, fix, now_ms)
            return
        self._good = 0
        self._best = _better(self._best, fix)

    def _finish(self, status, fix, now_ms):
        self._state = _IDLE
        self._events.append(POWER_OFF)
        self._events.append(Result(status, fix, now_ms - self._t0, self._epochs, self._hot,
                                   self._timeout))


def _better(best, fix):
    """The more useful of two partial fixes: valid beats invalid, then lower HDOP; among invalid
    ones a known time, then more satellites in view, then the later one."""
    if best is None:
        return fix
    if fix.valid != best.valid:
        return fix if fix.valid else best
    if fix.valid:
        fh = fix.hdop if fix.hdop is not None else 9999
        bh = best.hdop if best.hdop is not None else 9999
        return fix if fh <= bh else best
    if (best.time is None) != (fix.time is None):
        return best if fix.time is None else fix
    bv = best.sats_in_view or 0
    return fix if (fix.sats_in_view or 0) >= bv else best
