# The four keys: debouncing and press classification, sans-I/O.
#
#   keys = Keys(4, debounce_ms, long_press_ms, stuck_ms)
#   keys.start(levels, now_ms)       # levels at boot (True = pressed); keys down now are ignored
#                                    # until released (a key held through a reset is no press)
#   keys.edge(key, level, now_ms)    # an edge the ISR flagged: key 0..n-1, level read then
#   keys.poll(now_ms)                # at keys.next_deadline() at least (None: nothing pending)
#   ev = keys.next_event()           # (kind, key, t_ms, held_ms) or None
#
# A level counts once it has held debounce_ms; shorter pulses (bounces) are ignored, and the
# press starts at the edge that began the stable level. Kinds:
#   SHORT    released after less than long_press_ms (a call to that key's contact)
#   SOS      a key held long_press_ms: reported at that moment, while still held; once per hold
#            (the application runs one SOS cascade however many keys were squeezed together)
#   STUCK    held stuck_ms: reported once, then nothing more from that key until it is released
#   RELEASED released after a STUCK (the key works again)
# Keys are independent: several down at once each report their own presses. t_ms is when the
# condition became true (press + long_press_ms for SOS, the release edge for SHORT), so a key's
# events do not depend on how often poll() runs (events of different keys come in the order
# they are noticed). held_ms: how long the key was down at t_ms.
# The ms clock never wraps (the board layer extends ticks_ms).

try:
    from micropython import const
except ImportError:  # CPython (host tools)

    def const(x):
        return x


SHORT = "short"
SOS = "sos"
STUCK = "stuck"
RELEASED = "released"

_MAX_EVENTS = const(16)
# Per-key flags.
_DOWN = const(1)  # debounced level: pressed
_ARMED = const(2)  # the current press started after start(): it may be classified
_SOS_SENT = const(4)
_STUCK_SENT = const(8)


class KeysError(ValueError):
    """Bad timing figures or a key number out of range (says which)."""


class Keys:
    def __init__(self, count, debounce_ms, long_press_ms, stuck_ms):
        if count < 1:
            raise KeysError("keys: at least one key, got %r" % (count,))
        if not 0 <= debounce_ms < long_press_ms < stuck_ms:
            raise KeysError("keys: 0 <= debounce_ms < long_press_ms < stuck_ms needed, got %r, %r, %r"
                            % (debounce_ms, long_press_ms, stuck_ms))
        self.count = count
        self.debounce_ms = debounce_ms
        self.long_press_ms = long_press_ms
        self.stuck_ms = stuck_ms
        self._raw = [False] * count  # last level seen
        self._raw_t = [0] * count  # when that level began
        self._flags = [0] * count
        self._press_t = [0] * count  # when the debounced press began
        self._events = []
        self.bounces = 0  # level changes that did not hold debounce_ms
        self.overflow = 0  # events lost because nobody read them (oldest dropped)

    def start(self, levels, now_ms):
        """Levels at boot; a key already down must be released before it counts."""
        for k in range(self.count):
            down = bool(levels[k])
            self._raw[k] = down
            self._raw_t[k] = now_ms
            self._press_t[k] = now_ms
            self._flags[k] = _DOWN if down else 0

    def edge(self, key, level, now_ms):
        if not 0 <= key < self.count:
            raise KeysError("keys: key %r out of range 0..%d" % (key, self.count - 1))
        level = bool(level)
        self._settle(key, now_ms)
        if level == self._raw[key]:
            return  # the opposite edge was missed between two ISR services: nothing changed
        if self._raw[key] != bool(self._flags[key] & _DOWN):
            self.bounces += 1  # a change that reverts before it held debounce_ms
        self._raw[key] = level
        self._raw_t[key] = now_ms

    def poll(self, now_ms):
        for k in range(self.count):
            self._settle(k, now_ms)

    def next_deadline(self):
        """The earliest time poll() has something to decide (None: nothing until an edge)."""
        best = None
        for k in range(self.count):
            f = self._flags[k]
            down = bool(f & _DOWN)
            if self._raw[k] != down:
                t = self._raw_t[k] + self.debounce_ms
            elif down and not f & _STUCK_SENT:
                t = self._press_t[k] + (self.long_press_ms if (f & (_ARMED | _SOS_SENT)) == _ARMED
                                        else self.stuck_ms)
            else:
                continue
            if best is None or t < best:
                best = t
        return best

    def next_event(self):
        if self._events:
            return self._events.pop(0)
        return None

    def down(self, key):
        """Debounced level of a key."""
        return bool(self._flags[key] & _DOWN)

    # ---------------------------------------------------------------------------- internals

    def _settle(self, k, now_ms):
        """Bring key k up to now_ms: confirm a level that held debounce_ms, raise time events."""
        down = bool(self._flags[k] & _DOWN)
        if self._raw[k] != down:
            t = self._raw_t[k]
            if now_ms - t < self.debounce_ms:
                if down:
                    self._timed(k, t)  # held at least until the (maybe bouncing) release edge
                return
            if down:
                self._timed(k, t)  # what the hold reached before the release
                self._release(k, t)
                return
            self._flags[k] = _DOWN | _ARMED
            self._press_t[k] = t
            down = True
        if down:
            self._timed(k, now_ms)

    def _timed(self, k, now_ms):
        f = self._flags[k]
        held = now_ms - self._press_t[k]
        if f & _ARMED and not f & _SOS_SENT and held >= self.long_press_ms:
            f |= _SOS_SENT
            self._push(SOS, k, self._press_t[k] + self.long_press_ms, self.long_press_ms)
        if not f & _STUCK_SENT and held >= self.stuck_ms:
            f |= _STUCK_SENT
            self._push(STUCK, k, self._press_t[k] + self.stuck_ms, self.stuck_ms)
        self._flags[k] = f

    def _release(self, k, t):
        f = self._flags[k]
        held = t - self._press_t[k]
        if f & _STUCK_SENT:
            self._push(RELEASED, k, t, held)
        elif f & _ARMED and not f & _SOS_SENT:
            self._push(SHORT, k, t, held)
        self._flags[k] = 0

    def _push(self, kind, key, t, held):
        if len(self._events) >= _MAX_EVENTS:
            self._events.pop(0)
            self.overflow += 1
        self._events.append((kind, key, t, held))
