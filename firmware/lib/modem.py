# Cellular modem driver, sans-I/O: the core (AT pump, power, bring-up, sleep, recovery, reboot
# detection) and its voice, SMS and data controllers (modem_voice, modem_sms, modem_data).
#
# The driver owns an at.ATEngine and a *profile* (modem_a7670.A7670, modem_ec800m.EC800M) that
# knows the vendor's commands and URCs. Timing facts are injected: `hw` is the profile's
# hardware data (hwdata.load(profile.HW_NAME), hardware/modem_*.json), as gnss.FixAcquisition
# takes its receiver's. The board layer feeds the core and carries out its actions:
#
#     m = Modem(A7670(), hwdata.load(A7670.HW_NAME), apn="cmnet")
#     m.power_on(now)
#     loop: m.receive_data(uart.read()); m.tick(ticks_ms())
#           while (a := m.next_action()): board does it
#               ("write", bytes)       write to the modem UART
#               ("pwrkey", ms)         drive PWRKEY low for ms, then release
#               ("dtr", level)         set DTR (1 = let the modem sleep, 0 = keep it awake)
#               ("power_cut", ms)      remove modem power for ms (boards with a load switch)
#           while (e := m.next_event()): application handles it
# and the application drives the controllers: m.voice (dial, answer, hangup), m.sms (send_pdu,
# read, delete), m.data (udp_open, udp_send, udp_close).
#
# Events (tuples): ("state", name), ("ready",), ("sim", status), ("signal", dbm, rssi),
# ("reg", status, creg, cereg), ("time", unix_s, tz_quarters), ("net", up, detail),
# ("udp", "open"|"closed"|"failed", detail), ("udp_sent", n), ("udp_recv", payload, remote),
# ("call", state, number), ("incoming", number), ("ring", count, number), ("dtmf", digit),
# ("call_end", outcome, ring_s, talk_s, detail), ("missed_call", text),
# ("hangup_failed", command or "still up", status, err),
# ("sms_sent", mr, tag), ("sms_failed", err, tag), ("sms_new", mem, index),
# ("sms", mode, index, header, body)  mode "pdu" (body = PDU hex) or "text",
# ("sleep",), ("awake",), ("ri",), ("recovery", reason, count), ("failed", reason),
# ("modem_reboot", urc, count) (see "Modem reboots" below),
# ("urc", name, args, body) for URCs no handler wanted, ("unknown", line), ("at_error", exc),
# ("done", text, status, err) for commands sent with `command()`.
#
# Call outcomes are the driver's words (modem_voice: ANSWERED, CONFIRMED, ...); the application
# maps them to its protocol. The rules behind them (ring-back is not an answer) are in
# modem_voice.
#
# Modem reboots: a modem that restarts by itself (a brown-out on a transmit burst) loses every
# setting the driver made. Its boot URCs give it away: RDY / *ATREADY (the profile's READY_URCS)
# once it was up, or +CPIN: READY, SMS DONE, PB DONE (+QIND: ...) once the SIM was ready, when
# the same one already came since the last boot or _BOOT_TAIL_MS after it (a boot's own tail of
# URCs comes within seconds). The driver then ends what the reboot ended (commands in flight:
# ABORTED; a call: failed; the bearer and socket: down), emits ("modem_reboot", urc, count)
# (count: Modem.reboots) and re-initialises at once, as after a power-on.
import at
from civil import days_from_civil, valid_date

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# +CREG / +CEREG <stat> (3GPP TS 27.007 7.2 / 10.1.22)
REG_NAMES = ("not_registered", "home", "searching", "denied", "unknown", "roaming",
             "sms_only", "sms_only_roaming", "emergency_only")

_BOOT_TAIL_MS = const(60000)      # a boot's +CPIN: READY / SMS DONE / PB DONE come within this
                                   # after its RDY (A7670: 1.5 s to 8 s in issue 299's capture)
# the largest datagram the engine reads by default: a frame of the card's protocol
# (protocol/spec.py MAX_FRAME); the application passes its own figure
DEFAULT_MAX_DATA = const(512)

# states in which the modem was up: a boot URC there means it restarted
_UP_STATES = ("configuring", "sim", "sim_locked", "no_sim", "registering", "denied",
              "no_network", "net", "ready")
# states past the SIM check: a boot's tail URCs there are checked
_SIM_UP_STATES = ("registering", "denied", "no_network", "net", "ready")
# No network after the registration wait: polls of +CREG?/+CEREG? 30 s apart, doubling to 10 min
# (the modem's own +CREG/+CEREG URCs report a network found in between)
_REG_BACKOFF_MS = const(30000)
_REG_BACKOFF_MAX_MS = const(600000)
# timing facts the core needs from the profile's hardware data (hardware/modem_*.json "timing")
TIMING_KEYS = ("pwrkey_on_ms", "pwrkey_off_ms", "boot_ms", "power_off_ms", "sleep_entry_ms",
               "wake_ms")


class ModemError(Exception):
    """Misuse of the driver API (e.g. a call while another is up, UDP before bring-up)."""


def timing_of(hw):
    """The timing figures (ms) the driver uses from a profile's hardware data: {key: value}.
    Raises ModemError naming a missing or bad figure."""
    out = {}
    for key in TIMING_KEYS:
        try:
            value = hw["timing"][key]["value"]
        except (KeyError, TypeError):
            raise ModemError("modem hardware data lacks timing.%s.value (hardware/modem_*.json)"
                             % key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ModemError("modem hardware data timing.%s.value is %r, not a count of ms"
                             % (key, value))
        out[key] = value
    return out


class Fifo:
    """A first-in first-out queue without list.pop(0) (which moves every item): items are read
    from a head index and the list is emptied when the head reaches its end."""

    def __init__(self):
        self._items = []
        self._head = 0

    def put(self, item):
        self._items.append(item)

    def get(self):
        items = self._items
        head = self._head
        if head >= len(items):
            return None
        item = items[head]
        items[head] = None
        head += 1
        if head == len(items):
            del items[:]
            head = 0
        self._head = head
        return item

    def clear(self):
        self._items = []
        self._head = 0

    def take_all(self):
        items = self._items[self._head:]
        self.clear()
        return items

    def __len__(self):
        return len(self._items) - self._head


def parse_cclk(args):
    """'"24/08/23,06:39:56+32"' -> (unix seconds UTC, tz in quarter hours).

    The modem reports local time and its offset from UTC in quarters of an hour; UTC is local
    time minus the offset. Raises ValueError for malformed text or a clock never set (year
    before 2020: the modem's power-on default).
    """
    text = args.strip().strip('"')
    if len(text) < 17 or text[2] != "/" or text[5] != "/" or text[8] != ",":
        raise ValueError("bad +CCLK time %r" % (args,))
    yy = int(text[0:2])
    mo = int(text[3:5])
    dd = int(text[6:8])
    hh = int(text[9:11])
    mi = int(text[12:14])
    ss = int(text[15:17])
    tz = 0
    if len(text) > 17:
        sign = text[17]
        if sign not in "+-":
            raise ValueError("bad +CCLK time zone %r" % (args,))
        tz = int(text[18:])
        if sign == "-":
            tz = -tz
    if not (1 <= mo <= 12 and 1 <= dd <= 31 and hh < 24 and mi < 60 and ss < 61
            and -96 <= tz <= 96):
        raise ValueError("+CCLK field out of range in %r" % (args,))
    year = 1900 + yy if yy >= 70 else 2000 + yy  # "70/01/01" / "80/01/06": power-on defaults
    if year < 2020:
        raise ValueError("modem clock not set (%r)" % (args,))
    if not valid_date(year, mo, dd):
        raise ValueError("+CCLK date does not exist in %r" % (args,))
    days = days_from_civil(year, mo, dd)
    return days * 86400 + hh * 3600 + mi * 60 + ss - tz * 900, tz


def csq_dbm(rssi):
    """+CSQ <rssi> 0..31 -> dBm (-113 + 2 rssi); 99 or out of range -> None."""
    if 0 <= rssi <= 31:
        return -113 + 2 * rssi
    return None


def _int(text, default=-1):
    try:
        return int(text)
    except ValueError:
        return default


def first_line(text):
    """The first line of a command's response text (at.ATEngine's "done" event hands a
    command's response lines as one str, "\n" between them)."""
    end = text.find("\n")
    return text if end < 0 else text[:end]


def split_args(args):
    """Split "a,\"b,c\",d" into ["a", "b,c", "d"], quotes removed (robust to odd quotes)."""
    # with find, not character by character (iterating a str interns each character it meets)
    items = []
    value = ""      # the current item's text before `start` (quotes taken out)
    quoted = False
    start = 0
    while True:
        pos = args.find('"', start)
        stop = -1 if quoted else args.find(",", start)
        if stop >= 0 and (pos < 0 or stop < pos):
            items.append((value + args[start:stop]).strip())
            value = ""
            start = stop + 1
        elif pos >= 0:
            value += args[start:pos]
            quoted = not quoted
            start = pos + 1
        else:
            items.append((value + args[start:]).strip())
            return items


class Modem:
    """The core. See the module comment for actions and events."""

    def __init__(self, profile, hw, apn="", pin=None, max_timeouts=3, max_garbage=12,
                 max_power_cycles=3, ring_timeout_ms=45000, auto_read_sms=True,
                 max_line=None, max_data=DEFAULT_MAX_DATA):
        # hw: the profile's hardware data (timing facts; see timing_of)
        # max_line, max_data: the AT engine's sizes (see at.ATEngine): the longest line to read
        # (None: the engine's default, sized for the longest the driver reads, a USSD answer)
        # and the largest datagram the card receives
        import modem_data
        import modem_sms
        import modem_voice

        self.p = profile
        self.apn = apn
        self.pin = pin
        t = timing_of(hw)
        self.t_pwrkey_on = t["pwrkey_on_ms"]
        self.t_pwrkey_off = t["pwrkey_off_ms"]
        self.t_boot = t["boot_ms"]
        self.t_off = t["power_off_ms"]
        self.t_sleep_entry = t["sleep_entry_ms"]
        self.t_wake = t["wake_ms"]
        self.max_timeouts = max_timeouts
        self.max_garbage = max_garbage
        self.max_power_cycles = max_power_cycles
        sizes = {"max_data": max_data}
        if max_line is not None:
            sizes["max_line"] = max_line
        self.at = at.ATEngine(urcs=profile.URCS, raw=profile.raw_length, **sizes)
        self.state = "off"
        self.now = 0
        self._events = Fifo()
        self._actions = Fifo()
        # timers: a deadline (or None) per timer id, and the function it runs
        self._deadlines = []
        self._handlers = []
        self._held = []          # commands waiting for the modem to wake
        self._timeouts = 0       # consecutive command timeouts
        self._garbage = 0        # input errors since the last good response
        self._cycles = 0         # power cycles since the last successful bring-up
        self._cycle_pending = False   # power on again once the power-off completes
        self._reg_deadline = 0
        self._sim_deadline = 0
        self._reg_new = [0, 0]   # +CREG? and +CEREG? answers of one registration poll
        self._reg_backoff = _REG_BACKOFF_MS   # no network: the next registration poll
        self._cfg_left = 0       # configuration commands still to answer
        self._cfg_failed = []
        self._boot_at = 0        # when the modem last booted (or was found on)
        self._boot_seen = 0      # its boot tail URCs since then (bits: 1 +CPIN: READY,
                                 # 2 SMS DONE, 4 PB DONE)
        self.reboots = 0         # restarts of its own detected
        self.features = {"voice": True, "sms": True, "dtmf": False, "tts": False}
        self.reg = (0, 0)
        self.reg_status = "not_registered"
        self.registered = False
        self.rssi = None         # dBm of the last +CSQ (None: unknown)
        self._sleeping = False
        self._t_boot = self.add_timer(self._on_boot_timer)
        self._t_off = self.add_timer(self._on_off_timer)
        self._t_sim = self.add_timer(self._on_sim_timer)
        self._t_reg = self.add_timer(self._on_reg_timer)
        self._t_wake = self.add_timer(self._on_wake_timer)
        self.voice = modem_voice.Voice(self, ring_timeout_ms)
        self.sms = modem_sms.Sms(self, auto_read_sms)
        self.data = modem_data.Data(self)
        profile.attach(self)

    # ---- board-facing ------------------------------------------------------------------------
    def next_action(self):
        self._flush_out()
        return self._actions.get()

    def next_event(self):
        return self._events.get()

    def receive_data(self, data):
        self.at.receive_data(data)
        self._pump()

    def tick(self, now):
        self.now = now
        self.at.tick(now)
        self._pump()
        deadlines = self._deadlines
        fired = False
        for i in range(len(deadlines)):
            when = deadlines[i]
            if when is not None and at.ticks_diff(now, when) >= 0:
                deadlines[i] = None
                fired = True
                self._handlers[i]()
        if fired:
            self._pump()

    def next_deadline(self):
        """When tick() next has something to do (a timer, the command in flight timing out),
        in the clock of tick(); None when nothing is timed. The caller's wait ends there."""
        best = None
        now = self.now
        for when in self._deadlines:
            if when is not None:
                d = at.ticks_diff(when, now)
                if best is None or d < best:
                    best = d
        d = self.at.next_timeout()
        if d is not None and (best is None or d < best):
            best = d
        return None if best is None else now + (best if best > 0 else 0)

    def ri(self):
        """The board saw an RI pulse: a URC (call, SMS) is waiting. Wakes the modem's UART."""
        self.emit(("ri",))
        if self._sleeping:
            self.wake()

    # ---- for the controllers and profiles ----------------------------------------------------
    def emit(self, ev):
        self._events.put(ev)

    def act(self, action):
        self._actions.put(action)

    def add_timer(self, handler):
        """Register a timer that runs `handler()` when due; returns its id (for timer/cancel)."""
        self._deadlines.append(None)
        self._handlers.append(handler)
        return len(self._deadlines) - 1

    def timer(self, tid, ms):
        self._deadlines[tid] = at.ticks_add(self.now, ms)

    def cancel(self, tid):
        self._deadlines[tid] = None

    def pending(self, tid):
        return self._deadlines[tid] is not None

    def _cancel_all(self):
        deadlines = self._deadlines
        for i in range(len(deadlines)):
            deadlines[i] = None

    def _set_state(self, state):
        if state != self.state:
            self.state = state
            self.emit(("state", state))

    def _flush_out(self):
        data = self.at.data_to_send()
        if data:
            self._actions.put(("write", data))

    def cmd(self, text, prefix=None, timeout_ms=5000, retries=0, payload=None, done=None):
        """Queue an AT command; `done(cmd, status, text, err)` runs when it finishes (text: its
        response lines as one str, "\n" between them, as in at.ATEngine's "done" event)."""
        c = at.Command(text, prefix=prefix, timeout_ms=timeout_ms, retries=retries,
                       payload=payload, tag=done)
        if self._sleeping:
            self._held.append(c)
            self.wake()
            return c
        self.at.send(c)
        self._flush_out()
        return c

    def command(self, text, prefix=None, timeout_ms=5000):
        """An application command; its result comes back as ("done", text, status, err)."""
        return self.cmd(text, prefix, timeout_ms, done=self.app_done)

    def app_done(self, c, status, text, err):
        if text:
            for line in text.split("\n"):
                self.emit(("line", c.text, line))
        self.emit(("done", c.text, status, err))

    def _pump(self):
        engine = self.at
        while True:
            ev = engine.next_event()
            if ev is None:
                break
            kind = ev[0]
            if kind == "done":
                c, status = ev[1], ev[2]
                if status == "TIMEOUT":
                    self._timeouts += 1
                elif status != "ABORTED":
                    self._timeouts = 0
                    self._garbage = 0
                if c.tag is not None:
                    c.tag(c, status, ev[3], ev[4])
                if self._timeouts >= self.max_timeouts and self.state not in ("off", "recovering"):
                    self._recover("no_response")
            elif kind == "urc":
                self._urc(ev[1], ev[2], ev[3])
            elif kind == "data":
                self.p.on_data(self, ev[1], ev[2])
            elif kind == "error":
                self._garbage += 1
                self.emit(("at_error", ev[1]))
                if self._garbage >= self.max_garbage and self.state not in ("off", "recovering"):
                    self._recover("garbage")
            elif kind == "unknown":
                self.emit(ev)
            # "stray" final codes (late answers to timed-out commands) are counted in at.stats
        self._flush_out()

    # ---- power -------------------------------------------------------------------------------
    def power_on(self, now=None):
        """Bring the modem up: probe (it may already be on), else pulse PWRKEY and wait."""
        if now is not None:
            self.now = now
            self.at.now = now
        self._set_state("probing")
        self.cmd("AT", timeout_ms=600, retries=1, done=self._probe_done)

    def _probe_done(self, c, status, text, err):
        if status == "OK":
            self._booted()   # found on: it may have just booted
            self._configure()
        elif status != "ABORTED":
            self._timeouts = 0
            self._pulse_on()

    def _pulse_on(self):
        self._booted()
        self._set_state("booting")
        self.act(("dtr", 0))
        self.act(("pwrkey", self.t_pwrkey_on))
        self.timer(self._t_boot, self.t_boot)

    def _on_boot_timer(self):
        # no ready URC in time (it may have been sent before we listened): probe anyway
        if self.state == "booting":
            self._set_state("probing_boot")
            self.cmd("AT", timeout_ms=1000, retries=4, done=self._boot_probe_done)

    def _booted(self):
        self._boot_at = self.now
        self._boot_seen = 0

    def _ready_urc(self, name):
        if self.state in _UP_STATES:
            self._rebooted(name)
            return
        self._booted()
        if self.state == "booting":
            self.cancel(self._t_boot)
            self._set_state("probing_boot")
            self.cmd("AT", timeout_ms=1000, retries=4, done=self._boot_probe_done)

    def _boot_probe_done(self, c, status, text, err):
        if status == "OK":
            self._configure()
        elif status != "ABORTED":
            self._recover("no_response_after_boot")

    def _lost(self, reason):
        # the modem's session is gone (power-off, power-down, reboot): end what it held
        self.voice.lost(reason)
        self.data.lost(reason)
        self.registered = False

    def power_off(self):
        """Orderly power-off with PWRKEY (the modem deregisters first)."""
        self.at.abort()
        self._pump()
        self.voice.lost("power_off")
        self._cancel_all()
        self._held = []
        self.act(("pwrkey", self.t_pwrkey_off))
        self.timer(self._t_off, self.t_off)
        self._set_state("powering_off")

    def _on_off_timer(self):
        self._sleeping = False
        self.data.lost(None)
        self.registered = False
        self._set_state("off")
        if self._cycle_pending:
            self._cycle_pending = False
            self._pulse_on()

    def _boot_tail(self, name, bit):
        # +CPIN: READY, SMS DONE or PB DONE (bit: which): the tail of a boot, or of a reboot
        if self.state in _SIM_UP_STATES and (
                self._boot_seen & bit or at.ticks_diff(self.now, self._boot_at) > _BOOT_TAIL_MS):
            self._rebooted(name)
        self._boot_seen |= bit

    def _rebooted(self, name):
        # the modem restarted by itself: all it had is gone; re-initialise (see the module comment)
        self.reboots += 1
        self.emit(("modem_reboot", name, self.reboots))
        self._booted()
        self._set_state("configuring")   # first: URCs after this one see the new state
        self.at.abort()
        self._cancel_all()
        if self._sleeping:
            self._sleeping = False
            self.act(("dtr", 0))   # it restarts awake (sleep mode off)
        self._lost("modem_reboot")
        self._configure()
        held = self._held
        self._held = []
        for c in held:
            self.at.send(c)

    def _recover(self, reason):
        self._cycles += 1
        self._timeouts = 0
        self._garbage = 0
        self.emit(("recovery", reason, self._cycles))
        if self._cycles > self.max_power_cycles:
            self.at.abort()
            self._pump()
            self._cancel_all()
            self._set_state("off")
            self.emit(("failed", reason))
            return
        self.power_off()
        self._set_state("recovering")
        if self._cycles > 1:
            # PWRKEY did not bring it back: a board with a load switch cuts its supply too
            self.act(("power_cut", self.t_off))
        self._cycle_pending = True

    def powered_down(self, reason):
        """Profile: the modem announced it is switching itself off (power-down URC)."""
        self.at.abort()
        self._pump()
        self.voice.lost(reason)
        self._cancel_all()
        self._sleeping = False
        self.data.lost(None)
        self.registered = False
        self.emit(("powered_down", reason))
        self._set_state("off")

    # ---- bring-up ----------------------------------------------------------------------------
    def _configure(self):
        self._set_state("configuring")
        cmds = [("ATE0", True), ("AT+CMEE=1", False)] + self.p.config_commands()
        self._cfg_left = len(cmds)
        self._cfg_failed = []
        for text, required in cmds:
            self.cmd(text, timeout_ms=2000, retries=1,
                     done=self._cfg_done_req if required else self._cfg_done_opt)

    def _cfg_done_req(self, c, status, text, err):
        if status != "OK" and status != "ABORTED":
            self._cfg_failed.append((c.text, status, err, True))
        self._cfg_step(status)

    def _cfg_done_opt(self, c, status, text, err):
        if status != "ABORTED":
            if status != "OK":
                self._cfg_failed.append((c.text, status, err, False))
            self.p.config_result(self, c.text, status == "OK")
        self._cfg_step(status)

    def _cfg_step(self, status):
        if status == "ABORTED":
            return
        self._cfg_left -= 1
        if self._cfg_left:
            return
        for text, status, err, required in self._cfg_failed:
            self.emit(("config_failed", text, status, err, required))
        self._sim_deadline = at.ticks_add(self.now, 20000)
        self._check_sim()

    def _check_sim(self):
        self._set_state("sim")
        self.cmd("AT+CPIN?", "+CPIN", timeout_ms=5000, done=self._sim_done)

    def _sim_done(self, c, status, text, err):
        if status == "ABORTED":
            return
        if status == "OK" and text:
            value = first_line(text)[6:].strip()
            if value == "READY":
                self.emit(("sim", "ready"))
                self._signal()
                return
            if value == "SIM PIN":
                self.emit(("sim", "pin_required"))
                if self.pin:
                    self.cmd('AT+CPIN="%s"' % self.pin, timeout_ms=10000, done=self._pin_done)
                    return
                self._set_state("sim_locked")
                return
            if value == "SIM PUK" or value.startswith("PH"):
                self.emit(("sim", "puk_required"))
                self._set_state("sim_locked")
                return
            if value == "SIM REMOVED" or value == "NOT INSERTED":
                self._sim_absent()
                return
        if status == "CME" and err == 10:
            self._sim_absent()
            return
        # CME 13 (SIM failure), 14 (SIM busy), plain ERROR, timeout: not ready yet
        self.emit(("sim", "not_ready"))
        if at.ticks_diff(self._sim_deadline, self.now) > 0:
            self.timer(self._t_sim, 2000)
        else:
            self.emit(("sim", "failed"))
            self._set_state("no_sim")

    def _on_sim_timer(self):
        if self.state == "sim":
            self._check_sim()

    def _pin_done(self, c, status, text, err):
        if status == "OK":
            self.timer(self._t_sim, 1000)
        elif status != "ABORTED":
            self.emit(("sim", "pin_rejected"))
            self._set_state("sim_locked")

    def _sim_absent(self):
        self.emit(("sim", "absent"))
        self._set_state("no_sim")

    def _signal(self):
        self._set_state("registering")
        self._reg_deadline = at.ticks_add(self.now, 180000)
        self.query_signal()
        self._poll_reg()

    def query_signal(self):
        self.cmd("AT+CSQ", "+CSQ", done=self._csq_done)

    def _csq_done(self, c, status, text, err):
        if status == "OK" and text:
            parts = first_line(text)[5:].split(",")
            rssi = _int(parts[0].strip())
            self.rssi = csq_dbm(rssi)
            self.emit(("signal", self.rssi, rssi))

    def _poll_reg(self):
        self._reg_new[0] = self._reg_new[1] = 0
        self.cmd("AT+CREG?", "+CREG", done=self._creg_done)
        self.cmd("AT+CEREG?", "+CEREG", done=self._cereg_done)

    @staticmethod
    def _stat_of(line_args, solicited):
        # solicited: "<n>,<stat>[,...]"; unsolicited: "<stat>[,...]"
        parts = line_args.split(",")
        idx = 1 if solicited else 0
        if len(parts) <= idx:
            return -1
        return _int(parts[idx].strip())

    def _creg_done(self, c, status, text, err):
        if status == "OK" and text:
            self._reg_new[0] = self._stat_of(first_line(text)[6:], True)

    def _cereg_done(self, c, status, text, err):
        if status == "ABORTED":
            return
        if status == "OK" and text:
            self._reg_new[1] = self._stat_of(first_line(text)[7:], True)
        self._reg_update(self._reg_new[0], self._reg_new[1])
        if self.state == "no_network":
            # out of coverage: the modem searches by itself and says +CREG/+CEREG when it finds
            # a network; the driver asks now and then as well, less and less often
            if self.registered:
                self._set_state("registering")
                self._registered()
            else:
                self._reg_backoff = min(self._reg_backoff * 2, _REG_BACKOFF_MAX_MS)
                self.timer(self._t_reg, self._reg_backoff)
            return
        if self.state != "registering":
            return
        if self.registered:
            self._reg_backoff = _REG_BACKOFF_MS
            self._registered()
        elif at.ticks_diff(self._reg_deadline, self.now) <= 0:
            self.emit(("reg", "timeout", self.reg[0], self.reg[1]))
            self._set_state("no_network")
            self._reg_backoff = _REG_BACKOFF_MS
            self.timer(self._t_reg, self._reg_backoff)
        else:
            self.timer(self._t_reg, 2000)

    def _on_reg_timer(self):
        if self.state == "no_network":
            self._poll_reg()
        elif self.state in ("registering", "denied"):
            if self.state != "registering":
                self._set_state("registering")
                self._reg_deadline = at.ticks_add(self.now, 180000)
            self._poll_reg()

    def _reg_update(self, creg, cereg):
        old = self.reg
        self.reg = (creg, cereg)
        if creg in (1, 5) or cereg in (1, 5):
            status = "roaming" if (creg == 5 or cereg == 5) and not (creg == 1 or cereg == 1) else "home"
            self.registered = True
        elif cereg in (6, 7) or creg in (6, 7):
            status = "sms_only"
            self.registered = True
        elif creg == 3 or cereg == 3:
            status = "denied"
            self.registered = False
        elif creg == 2 or cereg == 2:
            status = "searching"
            self.registered = False
        else:
            status = "not_registered"
            self.registered = False
        self.reg_status = status
        if old != self.reg:
            self.emit(("reg", status, creg, cereg))
        if status == "denied" and self.state == "registering":
            self._set_state("denied")
            self.timer(self._t_reg, 30000)

    def _registered(self):
        self._cycles = 0
        self.query_time()
        if self.reg_status == "sms_only":
            self._ready()
            return
        self._set_state("net")
        self.data.open_net()

    def query_time(self):
        self.cmd("AT+CCLK?", "+CCLK", done=self._cclk_done)

    def _cclk_done(self, c, status, text, err):
        if status == "OK" and text:
            try:
                unix, tz = parse_cclk(first_line(text)[6:])
            except ValueError as exc:
                self.emit(("time", None, str(exc)))
                return
            self.emit(("time", unix, tz))

    def _ready(self):
        if self.state != "ready":
            self._set_state("ready")
            self.emit(("ready",))

    def net_settled(self):
        """Data: the bearer's first result after registration came (up or not): ready."""
        if self.state == "net":
            self._ready()

    # ---- URCs --------------------------------------------------------------------------------
    def _urc(self, name, args, body):
        if self.p.on_urc(self, name, args, body):
            return
        self.urc(name, args, body)

    def urc(self, name, args, body):
        """The generic URC handling (profiles hand vendor forms of standard URCs here)."""
        if name in self.p.READY_URCS:
            self._ready_urc(name)
        elif name == "+CPIN":
            if args == "READY":
                if self.state == "sim":
                    self.cancel(self._t_sim)
                    self._check_sim()
                self._boot_tail(name, 1)
            elif args in ("SIM REMOVED", "NOT INSERTED"):
                self._sim_absent()
            else:
                self.emit(("sim", args.lower().replace(" ", "_")))
        elif name == "+CREG" or name == "+CEREG":
            stat = self._stat_of(args, False)
            if name == "+CREG":
                self._reg_update(stat, self.reg[1])
            else:
                self._reg_update(self.reg[0], stat)
            if self.state in ("registering", "no_network", "denied") and self.registered:
                self.cancel(self._t_reg)
                self._set_state("registering")
                self._registered()
            elif not self.registered and self.state == "ready":
                self.data.lost(None)
                self._set_state("registering")
                self._reg_deadline = at.ticks_add(self.now, 180000)
                self.timer(self._t_reg, 2000)
        elif self.voice.on_urc(name, args) or self.sms.on_urc(name, args, body):
            return
        else:
            if name == "SMS DONE":
                self._boot_tail(name, 2)
            elif name == "PB DONE":
                self._boot_tail(name, 4)
            self.emit(("urc", name, args, body))

    # ---- sleep -------------------------------------------------------------------------------
    def sleep(self):
        """Let the modem sleep (DRX, still reachable): AT+CSCLK=1 / AT+QSCLK=1, then DTR high.
        Also out of coverage (no_network): it keeps searching asleep and reports what it finds."""
        if self.state != "ready" and self.state != "no_network":
            raise ModemError("sleep in state %s" % self.state)
        self.cmd(self.p.SLEEP_CMD, timeout_ms=2000, retries=1, done=self._sleep_done)

    def _sleep_done(self, c, status, text, err):
        if status == "OK":
            self.act(("dtr", 1))
            self._sleeping = True
            self.emit(("sleep",))
        elif status != "ABORTED":
            self.emit(("sleep_failed", status, err))

    @property
    def sleeping(self):
        return self._sleeping

    def wake(self):
        """DTR low; the UART is usable after the profile's wake time."""
        if not self._sleeping or self.pending(self._t_wake):
            return
        self.act(("dtr", 0))
        self.timer(self._t_wake, self.t_wake)

    def _on_wake_timer(self):
        self._sleeping = False
        self.emit(("awake",))
        held = self._held
        self._held = []
        for c in held:
            self.at.send(c)
        self._flush_out()


class Profile:
    """What a modem family must provide; subclasses: modem_a7670.A7670, modem_ec800m.EC800M.

    Class attributes:
      NAME         the family's name ("a7670", "ec800m"; the application maps it to its protocol)
      HW_NAME      its hardware data: hardware/<HW_NAME>.json (hwdata on the card), whose timing
                   facts the caller hands to Modem
      URCS         names of its unsolicited result codes (text before the first ':'), as one
                   table b"\nNAME\nNAME\n" (at.ATEngine's table form: no object per name)
      READY_URCS   URCs that mean "booted, UART ready"
      HANGUPS      the hang-up commands, tried in turn until the modem confirms the end
      SLEEP_CMD    the command that enables DTR-controlled sleep
      raw_length   line -> number of raw bytes that follow it, or -1 (at.raw_length)
    """

    NAME = "unknown"
    HW_NAME = None
    URCS = b"\n"
    READY_URCS = ("RDY",)
    HANGUPS = ("ATH",)
    SLEEP_CMD = "AT+CSCLK=1"
    raw_length = staticmethod(at.raw_length)

    def __init__(self, local_port=50000):
        self.local_port = local_port
        self._m = None

    def attach(self, m):
        """Called by Modem.__init__: the driver this profile serves (used by callbacks)."""
        self._m = m

    def config_commands(self):
        """[(command, required)] sent after ATE0 / AT+CMEE=1 at every bring-up."""
        return []

    def config_result(self, m, text, ok):
        """An optional configuration command succeeded or failed (feature detection)."""

    def open_net(self, m, apn):
        raise ModemError("%s profile has no packet data" % self.NAME)

    def udp_open(self, m, host, port):
        raise ModemError("%s profile has no UDP" % self.NAME)

    def udp_send(self, m, payload):
        raise ModemError("%s profile has no UDP" % self.NAME)

    def udp_close(self, m):
        raise ModemError("%s profile has no UDP" % self.NAME)

    def say(self, m, ucs2_hex):
        """Speak a text (UCS-2, hex) to the far end of the call; ("tts_done", ok) when it ends.
        Only where features["tts"] is set."""
        raise ModemError("%s profile has no text-to-speech" % self.NAME)

    def on_urc(self, m, name, args, body):
        """Handle a vendor URC; return True when handled (else the generic handler runs)."""
        return False

    def on_data(self, m, header, payload):
        m.data.udp_received(payload)
