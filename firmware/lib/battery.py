# Battery and charger state for the card, sans-I/O (MicroPython; no `machine` here).
#
# The board layer feeds it readings and pin levels with the time in milliseconds:
#     adc_to_mv(raw) / pin_uv_to_mv(uv)   ADC value at the pin -> battery millivolts
#     sample(mv, now_ms)                  a battery reading
#     modem_tx(active, now_ms)            the modem starts/stops a transmit burst or call
#     charger(chrg_low, stdby_low, now_ms) charger status pins (True = pin pulled low)
# and reads back:
#     next_event() -> (name, mv, pct) or None; names are the protocol's ENUMS["power_event"]
#     mv, pct, level ("ok", "low", "critical", "shutdown"), charging (ENUMS["charging"] name),
#     ok_to_transmit (the A7670 brown-out guard)
#
# Every figure (OCV curve, thresholds, filter constants, divider, ADC range, the modem's VBAT
# minimum) is data in hardware/: battery_lipo.json, pins_carecard_s3.json, power.json.
import ccspec

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_MAX_EVENTS = const(8)
_LEVEL_OK = const(0)
_LEVEL_LOW = const(1)
_LEVEL_CRITICAL = const(2)
_LEVEL_SHUTDOWN = const(3)
LEVELS = ("ok", "low", "critical", "shutdown")

_POWER_EVENTS = ccspec.ENUMS["power_event"]
_CHARGING = ccspec.ENUMS["charging"]


def _event(name):
    # The names come from the protocol; fail at import if the protocol stops having one.
    if name not in _POWER_EVENTS:
        raise ImportError("protocol has no power_event %r" % name)
    return name


EV_LOW = _event("low")
EV_CRITICAL = _event("critical")
EV_RECOVERED = _event("recovered")
EV_CONNECTED = _event("charger_connected")
EV_FULL = _event("charger_full")
EV_REMOVED = _event("charger_removed")
EV_SHUTDOWN = _event("shutdown")
_LEVEL_EVENTS = (EV_RECOVERED, EV_LOW, EV_CRITICAL, EV_SHUTDOWN)
# Charger states, by index into the protocol's "charging" enum.
CHG_NONE = const(0)  # "discharging"
CHG_CHARGING = const(1)  # "charging"
CHG_FULL = const(2)  # "full"


class BatteryDataError(ValueError):
    """The battery or pin data in hardware/ is unusable (says which field and why)."""


def _int(obj, key, where):
    v = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(v, int) or isinstance(v, bool):
        raise BatteryDataError("%s: '%s' must be an integer, got %r" % (where, key, v))
    return v


def load_data(name):
    """A hardware JSON by name (hardware/<name>.json, /lib/hwjson/ on the card)."""
    import hwdata

    return hwdata.load(name)


class Curve:
    """OCV curve: millivolts to percent by integer linear interpolation."""

    def __init__(self, points):
        if not isinstance(points, list) or len(points) < 2:
            raise BatteryDataError("ocv_curve.points_mv_pct needs at least two points")
        mv = []
        pct = []
        for p in points:
            if not isinstance(p, list) or len(p) != 2 or not all(isinstance(x, int) for x in p):
                raise BatteryDataError("ocv_curve point %r is not [mv, pct]" % (p,))
            if mv and (p[0] <= mv[-1] or p[1] < pct[-1]):
                raise BatteryDataError("ocv_curve must rise in mV and never fall in %%: %r" % (p,))
            if not 0 <= p[1] <= 100:
                raise BatteryDataError("ocv_curve percent %r outside 0-100" % (p[1],))
            mv.append(p[0])
            pct.append(p[1])
        self.mv = tuple(mv)
        self.pct = tuple(pct)

    def percent(self, mv):
        m = self.mv
        if mv <= m[0]:
            return self.pct[0]
        last = len(m) - 1
        if mv >= m[last]:
            return self.pct[last]
        i = 1
        while m[i] < mv:
            i += 1
        v0 = m[i - 1]
        p0 = self.pct[i - 1]
        span = m[i] - v0
        # Rounded to the nearest percent, integers only.
        return p0 + ((self.pct[i] - p0) * (mv - v0) * 2 + span) // (2 * span)


class Battery:
    """Battery state machine. `battery`, `pins`, `power` are the dicts of the hardware JSON
    files; omitted ones are read with hwdata.load (the card image's /lib/hwdata/)."""

    def __init__(self, battery=None, pins=None, power=None):
        # One file parsed at a time, keeping only the part needed: JSON parsing is the peak of
        # this module's heap use (the pin map's notes alone take ~20 KB while parsed).
        try:
            if battery is None:
                battery = load_data("battery_lipo")
            self.curve = Curve(battery["ocv_curve"]["points_mv_pct"])
            levels = battery["levels"]
            guard = battery["tx_guard"]
            flt = battery["filter"]
            battery = None
            adc = (pins if pins is not None else load_data("pins_carecard_s3"))["battery_adc"]
            pins = None
            vbat_min = (power if power is not None else load_data("power"))["figures"]["a7670.vbat_min"]
            power = None
        except (KeyError, TypeError) as e:
            raise BatteryDataError("battery data lacks %r" % (e.args[0] if e.args else e,))
        # Thresholds: enter below `enter`, leave at or above `exit` (hysteresis).
        self._enter = [0, 0, 0, 0]
        self._exit = [0, 0, 0, 0]
        for i in (_LEVEL_LOW, _LEVEL_CRITICAL, _LEVEL_SHUTDOWN):
            name = LEVELS[i]
            self._enter[i] = _int(levels.get(name), "enter_mv", "levels." + name)
            self._exit[i] = _int(levels.get(name), "exit_mv", "levels." + name)
            if self._exit[i] <= self._enter[i]:
                raise BatteryDataError("levels.%s: exit_mv must be above enter_mv" % name)
        if not self._enter[_LEVEL_LOW] > self._enter[_LEVEL_CRITICAL] > self._enter[_LEVEL_SHUTDOWN]:
            raise BatteryDataError("levels: low > critical > shutdown enter_mv expected")
        top = _int(adc, "divider_top_ohm", "battery_adc")
        bottom = _int(adc, "divider_bottom_ohm", "battery_adc")
        bits = _int(adc, "adc_bits", "battery_adc")
        self._fs_mv = _int(adc, "adc_full_scale_mv", "battery_adc")
        if bottom <= 0 or top < 0 or not 8 <= bits <= 16:
            raise BatteryDataError("battery_adc: divider or adc_bits out of range")
        self._div_num = top + bottom
        self._div_den = bottom
        self._adc_max = (1 << bits) - 1
        self._tx_stop = _int(vbat_min, "value", "power a7670.vbat_min") + _int(
            guard, "sag_allowance_mv", "tx_guard")
        self._tx_resume = self._tx_stop + _int(guard, "resume_margin_mv", "tx_guard")
        self._shift = _int(flt, "ema_shift", "filter")
        self._spike = _int(flt, "spike_mv", "filter")
        self._confirm = _int(flt, "spike_confirm", "filter")
        self._settle = _int(flt, "tx_settle_ms", "filter")
        self._debounce = _int(flt, "charger_debounce_ms", "filter")
        # State.
        self._avg = -1  # smoothed resting mV scaled by 2**shift; -1 before the first reading
        self._spikes = 0
        self._spike_sum = 0
        self._tx = False
        self._tx_end = 0
        self._tx_seen = False
        self.level = "ok"
        self._level = _LEVEL_OK
        self._tx_ok = False
        self._chg = CHG_NONE
        self._chg_cand = -1
        self._chg_since = 0
        self.ignored = 0  # readings left out (under modem load or settling after it)
        self.rejected = 0  # readings refused as impossible (negative, above 6 V)
        self.min_under_load = 0  # lowest reading during a transmit burst (0 = none yet)
        self._events = []

    # ------------------------------------------------------------------------- conversions

    def adc_to_mv(self, raw):
        """Battery mV of a raw ADC count (uncalibrated: prefer pin_uv_to_mv with read_uv())."""
        if raw < 0:
            raw = 0
        elif raw > self._adc_max:
            raw = self._adc_max
        num = raw * self._fs_mv * self._div_num
        den = self._adc_max * self._div_den
        return (num + den // 2) // den

    def pin_uv_to_mv(self, uv):
        """Battery mV of the calibrated pin voltage in microvolts (ADC.read_uv())."""
        den = 1000 * self._div_den
        return (uv * self._div_num + den // 2) // den

    def percent(self, mv):
        return self.curve.percent(mv)

    # ---------------------------------------------------------------------------- inputs

    def modem_tx(self, active, now_ms):
        """The modem started (True) or ended (False) a transmit burst, data session or call."""
        if active:
            self._tx = True
        elif self._tx:
            self._tx = False
            self._tx_end = now_ms
            self._tx_seen = True

    def sample(self, mv, now_ms):
        """One battery reading in millivolts. Returns True when it entered the average."""
        if not isinstance(mv, int) or mv < 0 or mv > 6000:
            self.rejected += 1
            return False
        if self._tx or (self._tx_seen and now_ms - self._tx_end < self._settle):
            self.ignored += 1
            if self._tx and (self.min_under_load == 0 or mv < self.min_under_load):
                self.min_under_load = mv
            return False
        sh = self._shift
        if self._avg < 0:
            self._avg = mv << sh
        else:
            avg = self.mv
            if mv - avg > self._spike or avg - mv > self._spike:
                # A jump: believe it only when it repeats (charger plugged in, battery swapped).
                self._spikes += 1
                self._spike_sum += mv
                if self._spikes < self._confirm:
                    return False
                self._avg = (self._spike_sum // self._spikes) << sh
            else:
                # Step of at least one unit towards the reading (magnitude rounded up), so a
                # steady reading is reached exactly instead of stalling up to 1 mV away.
                d = (mv << sh) - self._avg
                r = (1 << sh) - 1
                self._avg += (d + r) >> sh if d > 0 else -((r - d) >> sh)
        self._spikes = 0
        self._spike_sum = 0
        self._update_levels()
        return True

    def charger(self, chrg_low, stdby_low, now_ms):
        """Charger status pins (True = the open-drain output pulls low). A state counts once it
        has held charger_debounce_ms."""
        if chrg_low and not stdby_low:
            state = CHG_CHARGING
        elif stdby_low and not chrg_low:
            state = CHG_FULL
        elif chrg_low and stdby_low:
            state = CHG_CHARGING  # both low is not a TP4056 state: treat as charging
        else:
            state = CHG_NONE
        if state != self._chg_cand:
            self._chg_cand = state
            self._chg_since = now_ms
        if state == self._chg or now_ms - self._chg_since < self._debounce:
            return
        old = self._chg
        self._chg = state
        if old == CHG_NONE:
            self._push(EV_CONNECTED)
        if state == CHG_FULL:
            self._push(EV_FULL)
        elif state == CHG_NONE:
            self._push(EV_REMOVED)
        # A charger lifts the terminal voltage within seconds: let the average follow it.
        self._spikes = 0
        self._spike_sum = 0

    # --------------------------------------------------------------------------- outputs

    @property
    def mv(self):
        """Smoothed resting battery voltage in mV (None before the first reading)."""
        return None if self._avg < 0 else (self._avg + (1 << self._shift >> 1)) >> self._shift

    @property
    def pct(self):
        mv = self.mv
        return None if mv is None else self.curve.percent(mv)

    @property
    def charging(self):
        """The protocol's charging state name ("discharging", "charging", "full")."""
        return _CHARGING[self._chg]

    @property
    def charging_code(self):
        return self._chg

    @property
    def ok_to_transmit(self):
        """False while the resting voltage is too low for a modem burst (A7670 brown-out), and
        before the first reading."""
        return self._tx_ok

    def next_event(self):
        """The next power event (name, mv, pct), oldest first, or None."""
        if self._events:
            return self._events.pop(0)
        return None

    # -------------------------------------------------------------------------- internals

    def _push(self, name):
        if len(self._events) >= _MAX_EVENTS:
            self._events.pop(0)  # bounded: the newest state matters most
        mv = self.mv
        self._events.append((name, 0 if mv is None else mv, 255 if mv is None else self.curve.percent(mv)))

    def _update_levels(self):
        mv = self.mv
        lv = self._level
        new = lv
        # Worse: the deepest level whose enter threshold the voltage is below.
        for i in (_LEVEL_SHUTDOWN, _LEVEL_CRITICAL, _LEVEL_LOW):
            if i > lv and mv < self._enter[i]:
                new = i
                break
        else:
            # Better: leave a level only at or above its exit threshold, one step at a time.
            while new > _LEVEL_OK and mv >= self._exit[new]:
                new -= 1
        if new != lv:
            self._level = new
            self.level = LEVELS[new]
            # The event names the level now in force ("recovered" = back to ok).
            self._push(_LEVEL_EVENTS[new])
        if self._tx_ok:
            if mv < self._tx_stop:
                self._tx_ok = False
        elif mv >= self._tx_resume:
            self._tx_ok = True
