# Positions for the host's inactivity logic, sans-I/O: when to take a fix, when to re-send the
# last one instead (static hold), when to report often and batch fixes into tracks (moving mode).
#
#   pol = PositionPolicy(timings, has_motion, now_ms)   timings: positions.timings(cfg values)
#   pol.motion(now_ms)              one motion interrupt (the sensor's INT1, serviced)
#   pol.poll(now_ms)                at pol.next_deadline() at least
#   pol.acquiring(now_ms)           the caller started the GNSS for an ("acquire",) action
#   pol.locate(now_ms)              take a fresh fix now (a "locate now" request, an SOS)
#   pol.fix_result(fix, now_ms, unix_s)  the acquisition ended: an nmea.Fix that met the
#                                   criteria, or None (no fix); unix_s: the card's Unix time now
#   act = pol.next_action()         or None:
#       ("acquire",)                         power the GNSS and take a fix (gnss.FixAcquisition)
#       ("uplink", "position", values)       values for ccproto (protocol "position")
#       ("uplink", "track", values)          values for ccproto (protocol "track")
#       ("mode", "moving" | "still")         moving mode began or ended (logged, not sent)
#   pol.take_motion_count()         motion interrupts since the last call, for the status
#                                   frame; the protocol's "unknown" when the card has no sensor
#
# Static hold: while the sensor reports no motion since the last valid fix, a position report
# re-sends that fix marked "held" with its age growing, and the GNSS stays off: a card lying on
# a table reports the same place without spending a fix on it. A card with motion since that fix
# (worn, even by someone sitting still) takes a fresh fix at the still interval. A card without
# a motion sensor never holds: every report is a fresh fix.
#
# Moving mode: a motion burst (burst_count interrupts within burst_ms) or a fix farther from the
# previous one than both fixes' accuracy starts it; fixes are then taken every moving_ms and
# batched into track frames of track_points; it ends, flushing the batch, after quiet_ms without
# motion (without a sensor: without such a displacement). Entering it on a burst takes a fix at
# once, so a card picked up reports where it goes. Motion alone does not mean going somewhere
# (someone pottering at home keeps the sensor busy): while the moving fixes stay within their
# accuracy of the fix where the stay began, each interval doubles up to the still interval (and
# each fix is then reported at once); the first fix beyond it goes back to moving_ms.
#
# Accuracy of a fix: HDOP x UERE_M (user equivalent range error, a design choice: ~5 m is the
# usual 1-sigma figure for single-frequency GPS/BeiDou receivers). All times are ms of a clock
# that never wraps (the board layer's now_ms).
import math

import ccspec

try:
    from micropython import const
except ImportError:  # CPython (host tools)

    def const(x):
        return x


STILL = "still"
MOVING = "moving"

UERE_DM = const(50)  # 5.0 m, in decimetres per HDOP unit: accuracy_dm = hdop_x10 * 50 / 10
NO_HDOP_X10 = const(50)  # a fix without HDOP counts as HDOP 5.0 (the acquisition's own limit)
_M_PER_E7 = 0.0111319  # metres per 1e-7 degree of latitude (and of longitude at the equator)
_MAX_EVENTS = const(8)

_UNKNOWN_AGE = ccspec.FIELDS["fix_age_s"]["unknown"]
_UNKNOWN_HDOP = ccspec.FIELDS["hdop_x10"]["unknown"]
_UNKNOWN_MOTION = ccspec.FIELDS["motion_count"]["unknown"]
_UNKNOWN_SATS = ccspec.FIELDS["sats"]["unknown"]
_NO_FIX = ccspec.ENUMS["fix"][0]
_FRESH, _HELD = ccspec.ENUMS["fix_source"]

# config value name -> (timings key, scale to ms or 1)
_TIMING_KEYS = (("position_s", "still_ms", 1000), ("moving_position_s", "moving_ms", 1000),
                ("moving_quiet_s", "quiet_ms", 1000), ("motion_burst_count", "burst_count", 1),
                ("motion_burst_s", "burst_ms", 1000), ("track_points", "track_points", 1))


class PositionError(ValueError):
    """Timings that cannot work (says which)."""


def timings(values):
    """The policy's timings from config values (config.Config.values or a dict with the same
    names: position_s, moving_position_s, moving_quiet_s, motion_burst_count, motion_burst_s,
    track_points)."""
    out = {}
    for name, key, scale in _TIMING_KEYS:
        try:
            value = values[name]
        except KeyError:
            raise PositionError("positions: config value %s missing" % name)
        if not isinstance(value, int) or value < 1:
            raise PositionError("positions: %s must be a positive integer, got %r" % (name, value))
        out[key] = value * scale
    if out["track_points"] > ccspec.MAX_TRACK_POINTS:
        raise PositionError("positions: track_points %d exceeds the protocol's %d"
                            % (out["track_points"], ccspec.MAX_TRACK_POINTS))
    return out


def accuracy_dm(hdop_x10):
    return (hdop_x10 if hdop_x10 is not None else NO_HDOP_X10) * UERE_DM // 10


def distance_dm(lat1, lon1, lat2, lon2):
    """Distance in decimetres between two nearby points in 1e-7 degree (equirectangular: exact
    enough for the metres to a few kilometres compared here)."""
    dy = (lat2 - lat1) * _M_PER_E7
    dx = (lon2 - lon1) * _M_PER_E7 * math.cos(math.radians((lat1 + lat2) / 2e7))
    return int(math.sqrt(dx * dx + dy * dy) * 10)


class PositionPolicy:
    def __init__(self, timings, has_motion, now_ms):
        self.t = timings
        self.has_motion = has_motion
        self.mode = STILL
        self._actions = []
        self._head = 0  # next action to hand out (a queue without list.pop(0))
        self._fix = None  # the last valid fix: (lat_e7, lon_e7, alt_m, hdop_x10, sats, fix, speed, course, ms)
        self._moved = True  # motion since the last valid fix (unknown counts as moved)
        self._motion_count = 0
        self._bursts = [None] * timings["burst_count"]  # times of the latest interrupts, a ring
        self._burst_i = 0
        self._last_activity = now_ms  # last motion (or displacement) seen
        self._busy = False  # an acquisition is running
        self._acq_at = now_ms  # when the running (or last) acquisition started
        self._anchor = None  # moving mode: the fix where the present stay began
        self._interval = timings["moving_ms"]  # moving mode: time between fixes now
        self._due = now_ms  # the next report
        self._track = []
        self._track_hdop = 0
        self._track_sats = 255
        self.held_sent = 0
        self.fixes = 0
        self.no_fixes = 0

    # ---- inputs ----------------------------------------------------------------------------
    def motion(self, now_ms):
        self._motion_count += 1
        self._moved = True
        self._last_activity = now_ms
        ring = self._bursts
        ring[self._burst_i] = now_ms
        self._burst_i = (self._burst_i + 1) % len(ring)
        oldest = ring[self._burst_i]  # the burst_count-th latest interrupt
        if self.mode == STILL and oldest is not None and now_ms - oldest <= self.t["burst_ms"]:
            self._enter_moving(now_ms)

    def locate(self, now_ms):
        if self._busy:
            return  # the running acquisition's fix answers the request
        self._moved = True  # not the held fix: a fresh one
        self._due = now_ms

    def acquiring(self, now_ms):
        self._busy = True
        self._acq_at = now_ms
        self._moved = False  # motion during the acquisition counts for the next report

    def fix_result(self, fix, now_ms, unix_s):
        self._busy = False
        if fix is None or not fix.valid:
            self.no_fixes += 1
            self._moved = True  # where the card is now is not known: no static hold on old data
            if self.mode == STILL:
                self._put(("uplink", "position", self._no_fix_values(fix)))
            return
        self.fixes += 1
        hdop = fix.hdop if fix.hdop is not None and fix.hdop < _UNKNOWN_HDOP else None
        new = (fix.lat_e7, fix.lon_e7, fix.alt if fix.alt is not None else 0, hdop,
               fix.sats if fix.sats is not None else _UNKNOWN_SATS, fix.fix,
               fix.speed or 0, fix.course or 0, now_ms)
        prev = self._fix
        self._fix = new
        if prev is not None:
            moved = distance_dm(prev[0], prev[1], new[0], new[1])
            if moved > accuracy_dm(prev[3]) + accuracy_dm(hdop):
                self._last_activity = now_ms
                if self.mode == STILL:
                    self._enter_moving(now_ms)
        if self.mode == MOVING:
            self._pace(new)
            t = fix.time if fix.time is not None else unix_s
            self._track.append((t, new[0], new[1]))
            h = hdop if hdop is not None else _UNKNOWN_HDOP
            if h > self._track_hdop:
                self._track_hdop = h
            if new[4] < self._track_sats:
                self._track_sats = new[4]
            if len(self._track) >= self.t["track_points"] or self._interval >= self.t["still_ms"]:
                self._flush_track()
        else:
            self._put(("uplink", "position", self._values(new, now_ms, _FRESH)))

    # ---- time ------------------------------------------------------------------------------
    def next_deadline(self):
        if self._busy:
            return self._quiet_deadline()
        due = self._due
        quiet = self._quiet_deadline()
        if quiet is not None and quiet < due:
            return quiet
        return due

    def _quiet_deadline(self):
        if self.mode != MOVING:
            return None
        return self._last_activity + self.t["quiet_ms"]

    def poll(self, now_ms):
        if self.mode == MOVING and now_ms - self._last_activity >= self.t["quiet_ms"]:
            self._flush_track()
            self.mode = STILL
            self._put(("mode", STILL))
            self._due = now_ms + self.t["still_ms"]
        if self._busy or now_ms < self._due:
            return
        if self.mode == MOVING:
            self._due = now_ms + self._interval
            self._put(("acquire",))
            return
        self._due = now_ms + self.t["still_ms"]
        if self.has_motion and not self._moved and self._fix is not None:
            self.held_sent += 1
            self._put(("uplink", "position", self._values(self._fix, now_ms, _HELD)))
        else:
            self._put(("acquire",))

    # ---- outputs ---------------------------------------------------------------------------
    def next_action(self):
        actions = self._actions
        if self._head < len(actions):
            action = actions[self._head]
            self._head += 1
            return action
        if actions:
            actions.clear()
            self._head = 0
        return None

    def take_motion_count(self):
        if not self.has_motion:
            return _UNKNOWN_MOTION
        n = self._motion_count
        self._motion_count = 0
        return n if n < _UNKNOWN_MOTION else _UNKNOWN_MOTION - 1

    def last_fix(self):
        """(lat_e7, lon_e7, fix name, hdop_x10, sats, fix time ms) of the last valid fix, or None."""
        f = self._fix
        if f is None:
            return None
        return f[0], f[1], f[5], f[3], f[4], f[8]

    # ---- internals -------------------------------------------------------------------------
    def _put(self, action):
        if len(self._actions) - self._head < _MAX_EVENTS:
            self._actions.append(action)

    def _pace(self, new):
        """Moving mode: the interval to the next fix after this one (see the module comment)."""
        a = self._anchor
        if a is not None and distance_dm(a[0], a[1], new[0], new[1]) <= accuracy_dm(a[3]) + accuracy_dm(new[3]):
            interval = self._interval * 2
            self._interval = interval if interval < self.t["still_ms"] else self.t["still_ms"]
        else:
            self._anchor = new
            self._interval = self.t["moving_ms"]
        self._due = self._acq_at + self._interval

    def _enter_moving(self, now_ms):
        self._anchor = None
        self._interval = self.t["moving_ms"]
        self.mode = MOVING
        self._put(("mode", MOVING))
        self._due = now_ms  # a fix at once
        self._last_activity = now_ms

    def _flush_track(self):
        if self._track:
            self._put(("uplink", "track", {"points": self._track, "hdop_x10": self._track_hdop,
                                           "sats": self._track_sats}))
            self._track = []
            self._track_hdop = 0
            self._track_sats = _UNKNOWN_SATS

    def _values(self, f, now_ms, source):
        age = (now_ms - f[8]) // 1000
        return {"lat_e7": f[0], "lon_e7": f[1], "alt_m": max(-32768, min(32767, f[2])),
                "hdop_x10": f[3] if f[3] is not None else _UNKNOWN_HDOP,
                "sats": f[4], "fix": f[5], "fix_age_s": age if age < _UNKNOWN_AGE else _UNKNOWN_AGE,
                "speed_cms": min(f[6], 65535), "course_x10": min(f[7], 65535), "source": source}

    def _no_fix_values(self, fix):
        sats = _UNKNOWN_SATS
        if fix is not None and fix.sats is not None:
            sats = fix.sats
        return {"lat_e7": 0, "lon_e7": 0, "alt_m": 0, "hdop_x10": _UNKNOWN_HDOP, "sats": sats,
                "fix": _NO_FIX, "fix_age_s": _UNKNOWN_AGE, "speed_cms": 0, "course_x10": 0,
                "source": _FRESH}
