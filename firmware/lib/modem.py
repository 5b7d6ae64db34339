# Cellular modem driver: bring-up, data (UDP), voice, SMS, sleep and recovery, sans-I/O.
#
# The driver owns an at.ATEngine and a *profile* (modem_a7670.A7670, modem_ec800m.EC800M) that
# knows the vendor's commands and URCs. The board layer feeds it and carries out its actions:
#
#     m = Modem(A7670(), apn="cmnet")
#     m.power_on(now)
#     loop: m.receive_data(uart.read()); m.tick(ticks_ms())
#           while (a := m.next_action()): board does it
#               ("write", bytes)       write to the modem UART
#               ("pwrkey", ms)         drive PWRKEY low for ms, then release
#               ("dtr", level)         set DTR (1 = let the modem sleep, 0 = keep it awake)
#               ("power_cut", ms)      remove modem power for ms (boards with a load switch)
#           while (e := m.next_event()): application handles it
#
# Events (tuples): ("state", name), ("ready",), ("sim", status), ("signal", dbm, rssi),
# ("reg", status, creg, cereg), ("time", unix_s, tz_quarters), ("net", up, detail),
# ("udp", "open"|"closed"|"failed", detail), ("udp_sent", n), ("udp_recv", payload, remote),
# ("call", state, number), ("incoming", number), ("dtmf", digit),
# ("call_end", outcome, ring_s, talk_s, detail), ("missed_call", text),
# ("hangup_failed", command or "still up", status, err),
# ("sms_sent", mr, tag), ("sms_failed", err, tag), ("sms_new", mem, index),
# ("sms", mode, index, header, body)  mode "pdu" (body = PDU hex) or "text",
# ("sleep",), ("awake",), ("ri",), ("recovery", reason, count), ("failed", reason),
# ("modem_reboot", urc, count) (see "Modem reboots" below),
# ("urc", name, args, body) for URCs no handler wanted, ("unknown", line), ("at_error", exc),
# ("done", text, status, err) for commands sent with `command()`.
#
# Call outcomes are the protocol's names (ccspec.ENUMS["call_outcome"]).
#
# Outgoing calls: the modem's "active" (VOICE CALL: BEGIN, +CLCC stat 0, +COLP) is NOT an answer.
# A76xx modems report it at ring-back on real networks, before anyone picks up (design.md
# section 5; shared/data/at/unattributed). So an outgoing call counts as ringing until the
# callee confirms with a key (DTMF, ("dtmf", digit) events; features["dtmf"] says whether the
# modem reports keys): the ring timeout keeps running through the modem's "active" and hangs
# the call up unless confirmed. The outcome is `confirmed` after a key, `no_answer` when the ring
# timeout ran out (or the network said NO ANSWER), `rejected` when the far end ended it
# unconfirmed (the modem's "active" changes nothing: its time counts as talk_s, and detail
# keeps the modem's words), `busy`, `cancelled` (hung up by the application) or `failed`;
# never `answered`.
# `answered` is only for an incoming call this card answered (ATA). A call that must not be
# hung up unconfirmed (the application asks for confirmation itself) is dialled with
# ring_timeout_ms=0: no ring timeout; the application ends it with hangup().
# Hanging up: the profile's HANGUPS commands are tried in turn (AT+CHUP first where the modem has
# it: ATH ends a voice call only while AT+CVHU=0 holds); "OK" to them is not taken as the end:
# the end is confirmed by +CLCC stat 6, VOICE CALL: END (either spelling), NO CARRIER, or an
# AT+CLCC query that no longer lists the call.
#
# Modem reboots: a modem that restarts by itself (a brown-out on a transmit burst) loses every
# setting the driver made. Its boot URCs give it away: RDY / *ATREADY (the profile's READY_URCS)
# once it was up, or +CPIN: READY, SMS DONE, PB DONE (+QIND: ...) once the SIM was ready, when
# the same one already came since the last boot or _BOOT_TAIL_MS after it (a boot's own tail of
# URCs comes within seconds). The driver then ends what the reboot ended (commands in flight:
# ABORTED; a call: failed; the bearer and socket: down), emits ("modem_reboot", urc, count)
# (count: Modem.reboots) and re-initialises at once, as after a power-on.
import at
import ccspec
from civil import days_from_civil, valid_date

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_OUTCOMES = ccspec.ENUMS["call_outcome"]


def _outcome(name):
    # fail loudly at import if the protocol renames an outcome this driver reports
    if name not in _OUTCOMES:
        raise ValueError("call outcome %r is not in ccspec.ENUMS['call_outcome']" % name)
    return name


ANSWERED = _outcome("answered")
CONFIRMED = _outcome("confirmed")
BUSY = _outcome("busy")
NO_ANSWER = _outcome("no_answer")
REJECTED = _outcome("rejected")
FAILED = _outcome("failed")
CANCELLED = _outcome("cancelled")

# +CREG / +CEREG <stat> (3GPP TS 27.007 7.2 / 10.1.22)
REG_NAMES = ("not_registered", "home", "searching", "denied", "unknown", "roaming",
             "sms_only", "sms_only_roaming", "emergency_only")

_CALL_IDLE = const(0)
_CALL_DIALING = const(1)
_CALL_ALERTING = const(2)
_CALL_ACTIVE = const(3)
_CALL_INCOMING = const(4)
CALL_STATES = ("idle", "dialing", "alerting", "active", "incoming")

_HANGUP_CONFIRM_MS = const(5000)   # after a hang-up command, the end is waited for this long
                                   # before the driver asks the modem (AT+CLCC)
_HANGUP_TRIES = const(3)           # hang-up commands sent before "hangup_failed"
_BOOT_TAIL_MS = const(60000)      # a boot's +CPIN: READY / SMS DONE / PB DONE come within this
                                   # after its RDY (A7670: 1.5 s to 8 s in issue 299's capture)

# states in which the modem was up: a boot URC there means it restarted
_UP_STATES = ("configuring", "sim", "sim_locked", "no_sim", "registering", "denied",
              "no_network", "net", "ready")
# states past the SIM check: a boot's tail URCs there are checked
_SIM_UP_STATES = ("registering", "denied", "no_network", "net", "ready")


class ModemError(Exception):
    """Misuse of the driver API (e.g. a call while another is up, UDP before bring-up)."""


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
    """The driver. See the module comment for actions and events."""

    def __init__(self, profile, apn="", pin=None, timing=None, max_timeouts=3, max_garbage=12,
                 max_power_cycles=3, ring_timeout_ms=45000, auto_read_sms=True,
                 max_line=None, max_data=ccspec.MAX_FRAME):
        # max_line, max_data: the AT engine's sizes (see at.ATEngine): the longest line to read
        # (None: the engine's default, sized for the longest the driver reads, a USSD answer)
        # and the largest datagram the card receives (a frame of its protocol, ccspec.MAX_FRAME)
        self.p = profile
        self.apn = apn
        self.pin = pin
        t = timing if timing is not None else profile.timing()
        self.t_pwrkey_on = t["pwrkey_on_ms"]
        self.t_pwrkey_off = t["pwrkey_off_ms"]
        self.t_boot = t["boot_ms"]
        self.t_off = t["power_off_ms"]
        self.t_sleep_entry = t["sleep_entry_ms"]
        self.t_wake = t["wake_ms"]
        self.max_timeouts = max_timeouts
        self.max_garbage = max_garbage
        self.max_power_cycles = max_power_cycles
        self.ring_timeout_ms = ring_timeout_ms
        self.auto_read_sms = auto_read_sms
        sizes = {"max_data": max_data}
        if max_line is not None:
            sizes["max_line"] = max_line
        self.at = at.ATEngine(urcs=profile.URCS, raw=profile.raw_length, **sizes)
        profile.attach(self)
        self.state = "off"
        self.now = 0
        self._events = []
        self._actions = []
        self._timers = {}
        self._held = []          # commands waiting for the modem to wake
        self._timeouts = 0       # consecutive command timeouts
        self._garbage = 0        # input errors since the last good response
        self._cycles = 0         # power cycles since the last successful bring-up
        self._reg_deadline = 0
        self._sim_deadline = 0
        self._boot_at = 0        # when the modem last booted (or was found on)
        self._boot_seen = 0      # its boot tail URCs since then (bits: 1 +CPIN: READY,
                                 # 2 SMS DONE, 4 PB DONE)
        self.reboots = 0         # restarts of its own detected
        self.features = {"voice": True, "sms": True, "dtmf": False}
        self.reg = (0, 0)
        self.registered = False
        self.net_up = False
        self.ip = None
        self.udp_state = "closed"
        self.udp_remote = None
        self._recv_from = None
        self._sleeping = False
        # voice
        self.call = _CALL_IDLE
        self.call_number = None
        self._t_dial = 0
        self._t_active = None
        self._confirmed = False
        self._outgoing = False
        self._hangup_reason = None
        self._hangups = 0

    # ---- board-facing ------------------------------------------------------------------------
    def next_action(self):
        self._flush_out()
        if self._actions:
            return self._actions.pop(0)
        return None

    def next_event(self):
        if self._events:
            return self._events.pop(0)
        return None

    def receive_data(self, data):
        self.at.receive_data(data)
        self._pump()

    def tick(self, now):
        self.now = now
        self.at.tick(now)
        self._pump()
        if self._timers:
            for name in list(self._timers):
                when = self._timers.get(name)
                if when is not None and at.ticks_diff(now, when) >= 0:
                    del self._timers[name]
                    getattr(self, "_t_" + name)()
            self._pump()

    def ri(self):
        """The board saw an RI pulse: a URC (call, SMS) is waiting. Wakes the modem's UART."""
        self._emit(("ri",))
        if self._sleeping:
            self.wake()

    # ---- internals ---------------------------------------------------------------------------
    def _emit(self, ev):
        self._events.append(ev)

    def _set_state(self, state):
        if state != self.state:
            self.state = state
            self._emit(("state", state))

    def _timer(self, name, ms):
        self._timers[name] = at.ticks_add(self.now, ms)

    def _cancel(self, name):
        if name in self._timers:
            del self._timers[name]

    def _flush_out(self):
        data = self.at.data_to_send()
        if data:
            self._actions.append(("write", data))

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
        return self.cmd(text, prefix, timeout_ms, done=self._app_done)

    def _app_done(self, c, status, text, err):
        if text:
            for line in text.split("\n"):
                self._emit(("line", c.text, line))
        self._emit(("done", c.text, status, err))

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
                self._data(ev[1], ev[2])
            elif kind == "error":
                self._garbage += 1
                self._emit(("at_error", ev[1]))
                if self._garbage >= self.max_garbage and self.state not in ("off", "recovering"):
                    self._recover("garbage")
            elif kind == "unknown":
                self._emit(ev)
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
        self._actions.append(("dtr", 0))
        self._actions.append(("pwrkey", self.t_pwrkey_on))
        self._timer("boot", self.t_boot)

    def _t_boot(self):
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
            self._cancel("boot")
            self._set_state("probing_boot")
            self.cmd("AT", timeout_ms=1000, retries=4, done=self._boot_probe_done)

    def _boot_probe_done(self, c, status, text, err):
        if status == "OK":
            self._configure()
        elif status != "ABORTED":
            self._recover("no_response_after_boot")

    def power_off(self):
        """Orderly power-off with PWRKEY (the modem deregisters first)."""
        self.at.abort()
        self._pump()
        self._end_call_now(FAILED, "power_off")
        self._timers = {}
        self._held = []
        self._actions.append(("pwrkey", self.t_pwrkey_off))
        self._timer("off", self.t_off)
        self._set_state("powering_off")

    def _t_off(self):
        self._sleeping = False
        self.net_up = False
        self.udp_state = "closed"
        self.registered = False
        self._set_state("off")
        if getattr(self, "_cycle_pending", False):
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
        self._emit(("modem_reboot", name, self.reboots))
        self._booted()
        self._set_state("configuring")   # first: URCs after this one see the new state
        self.at.abort()
        self._end_call_now(FAILED, "modem_reboot")
        self._timers = {}
        if self._sleeping:
            self._sleeping = False
            self._actions.append(("dtr", 0))   # it restarts awake (sleep mode off)
        self.registered = False
        if self.udp_state != "closed":
            self.udp_result("closed", "modem_reboot")
        if self.net_up:
            self.net_up = False
            self._emit(("net", False, "modem_reboot"))
        self._configure()
        held = self._held
        self._held = []
        for c in held:
            self.at.send(c)

    def _recover(self, reason):
        self._cycles += 1
        self._timeouts = 0
        self._garbage = 0
        self._emit(("recovery", reason, self._cycles))
        if self._cycles > self.max_power_cycles:
            self.at.abort()
            self._pump()
            self._timers = {}
            self._set_state("off")
            self._emit(("failed", reason))
            return
        self.power_off()
        self._set_state("recovering")
        if self._cycles > 1:
            # PWRKEY did not bring it back: a board with a load switch cuts its supply too
            self._actions.append(("power_cut", self.t_off))
        self._cycle_pending = True

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
            self._emit(("config_failed", text, status, err, required))
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
                self._emit(("sim", "ready"))
                self._signal()
                return
            if value == "SIM PIN":
                if self.pin:
                    self._emit(("sim", "pin_required"))
                    self.cmd('AT+CPIN="%s"' % self.pin, timeout_ms=10000, done=self._pin_done)
                    return
                self._emit(("sim", "pin_required"))
                self._set_state("sim_locked")
                return
            if value == "SIM PUK" or value.startswith("PH"):
                self._emit(("sim", "puk_required"))
                self._set_state("sim_locked")
                return
            if value == "SIM REMOVED" or value == "NOT INSERTED":
                self._sim_absent()
                return
        if status == "CME" and err == 10:
            self._sim_absent()
            return
        # CME 13 (SIM failure), 14 (SIM busy), plain ERROR, timeout: not ready yet
        self._emit(("sim", "not_ready"))
        if at.ticks_diff(self._sim_deadline, self.now) > 0:
            self._timer("sim", 2000)
        else:
            self._emit(("sim", "failed"))
            self._set_state("no_sim")

    def _t_sim(self):
        if self.state == "sim":
            self._check_sim()

    def _pin_done(self, c, status, text, err):
        if status == "OK":
            self._timer("sim", 1000)
        elif status != "ABORTED":
            self._emit(("sim", "pin_rejected"))
            self._set_state("sim_locked")

    def _sim_absent(self):
        self._emit(("sim", "absent"))
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
            self._emit(("signal", self.rssi, rssi))

    def _poll_reg(self):
        self._reg_new = [0, 0]
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
        if self.state != "registering":
            return
        if self.registered:
            self._registered()
        elif at.ticks_diff(self._reg_deadline, self.now) <= 0:
            self._emit(("reg", "timeout", self.reg[0], self.reg[1]))
            self._set_state("no_network")
            self._timer("reg", 30000)
        else:
            self._timer("reg", 2000)

    def _t_reg(self):
        if self.state in ("registering", "no_network", "denied"):
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
            self._emit(("reg", status, creg, cereg))
        if status == "denied" and self.state == "registering":
            self._set_state("denied")
            self._timer("reg", 30000)

    def _registered(self):
        self._cycles = 0
        self.query_time()
        if self.reg_status == "sms_only":
            self._ready()
            return
        self._set_state("net")
        self.p.open_net(self, self.apn)

    def query_time(self):
        self.cmd("AT+CCLK?", "+CCLK", done=self._cclk_done)

    def _cclk_done(self, c, status, text, err):
        if status == "OK" and text:
            try:
                unix, tz = parse_cclk(first_line(text)[6:])
            except ValueError as exc:
                self._emit(("time", None, str(exc)))
                return
            self._emit(("time", unix, tz))

    def _ready(self):
        if self.state != "ready":
            self._set_state("ready")
            self._emit(("ready",))

    # ---- hooks for profiles ------------------------------------------------------------------
    def net_pending(self, ms):
        """Profile: a bearer activation is under way; fail it if no result within ms."""
        self._timer("net", ms)

    def _t_net(self):
        self.net_result(False, "timeout")

    def powered_down(self, reason):
        """Profile: the modem announced it is switching itself off (power-down URC)."""
        self.at.abort()
        self._pump()
        self._end_call_now(FAILED, reason)
        self._timers = {}
        self._sleeping = False
        self.net_up = False
        self.udp_state = "closed"
        self.registered = False
        self._emit(("powered_down", reason))
        self._set_state("off")

    def net_result(self, up, detail=None):
        """Profile: the packet-data bearer came up (detail = IP) or failed/went down."""
        self._cancel("net")
        self.net_up = up
        if up:
            self.ip = detail
        else:
            self.udp_state = "closed"
        self._emit(("net", up, detail))
        if self.state == "net":
            self._ready()
            if getattr(self, "_udp_wanted", None) and up:
                host, port = self._udp_wanted
                self._udp_wanted = None
                self.p.udp_open(self, host, port)

    def udp_result(self, state, detail=None):
        self.udp_state = "open" if state == "open" else "closed"
        self._emit(("udp", state, detail))

    def udp_received(self, payload, remote=None):
        self._emit(("udp_recv", payload, remote or self._recv_from))
        self._recv_from = None

    # ---- data --------------------------------------------------------------------------------
    def udp_open(self, host, port):
        if self.state not in ("ready", "net"):
            raise ModemError("udp_open in state %s: the modem is not up" % self.state)
        self.udp_remote = (host, port)
        if not self.net_up:
            self._udp_wanted = (host, port)
            self._set_state("net")
            self.p.open_net(self, self.apn)
            return
        self.p.udp_open(self, host, port)

    def udp_send(self, payload):
        if self.udp_state != "open":
            raise ModemError("udp_send with the socket %s; call udp_open first" % self.udp_state)
        if not payload:
            raise ModemError("udp_send of an empty datagram")
        self.p.udp_send(self, bytes(payload))

    def udp_close(self):
        self.p.udp_close(self)

    def _data(self, header, payload):
        self.p.on_data(self, header, payload)

    # ---- URCs --------------------------------------------------------------------------------
    def _urc(self, name, args, body):
        if self.p.on_urc(self, name, args, body):
            return
        if name in self.p.READY_URCS:
            self._ready_urc(name)
        elif name == "+CPIN":
            if args == "READY":
                if self.state == "sim":
                    self._cancel("sim")
                    self._check_sim()
                self._boot_tail(name, 1)
            elif args in ("SIM REMOVED", "NOT INSERTED"):
                self._sim_absent()
            else:
                self._emit(("sim", args.lower().replace(" ", "_")))
        elif name == "+CREG" or name == "+CEREG":
            stat = self._stat_of(args, False)
            if name == "+CREG":
                self._reg_update(stat, self.reg[1])
            else:
                self._reg_update(self.reg[0], stat)
            if self.state in ("registering", "no_network", "denied") and self.registered:
                self._cancel("reg")
                self._set_state("registering")
                self._registered()
            elif not self.registered and self.state == "ready":
                self.net_up = False
                self.udp_state = "closed"
                self._set_state("registering")
                self._reg_deadline = at.ticks_add(self.now, 180000)
                self._timer("reg", 2000)
        elif name == "+CMTI":
            self._cmti(args)
        elif name == "+CMT":
            self._sms_event(None, args, body)
        elif name == "+CDS":
            self._emit(("sms_report", args, body))
        elif name == "RING" or name == "+CRING":
            self._incoming(None)
        elif name == "+CLIP":
            parts = split_args(args)
            self._incoming(parts[0] if parts else None)
        elif name == "+CLCC":
            self._clcc(args)
        elif name == "NO CARRIER" or name == "BUSY" or name == "NO ANSWER":
            self._call_released(name)
        elif name == "+CEER":
            self._emit(("call_cause", args.strip('"')))
        else:
            if name == "SMS DONE":
                self._boot_tail(name, 2)
            elif name == "PB DONE":
                self._boot_tail(name, 4)
            self._emit(("urc", name, args, body))

    # ---- voice -------------------------------------------------------------------------------
    def dial(self, number, ring_timeout_ms=None):
        """Place a voice call. Ends with ("call_end", outcome, ring_s, talk_s, detail).

        Unless the callee confirms with a key within ring_timeout_ms (default: the driver's
        ring_timeout_ms; 0: none), the call is hung up and ends as no_answer, whatever the
        modem says meanwhile (see the module comment)."""
        if not self.features["voice"]:
            raise ModemError("this modem variant has no voice calls")
        if self.call != _CALL_IDLE:
            raise ModemError("dial while a call is %s" % CALL_STATES[self.call])
        if not number or not all(ch in "+0123456789*#" for ch in number):
            raise ModemError("bad number %r: digits, * # and a leading + only" % (number,))
        self.call = _CALL_DIALING
        self.call_number = number
        self._t_dial = self.now
        self._t_active = None
        self._confirmed = False
        self._outgoing = True
        self._hangup_reason = None
        self._emit(("call", "dialing", number))
        if ring_timeout_ms is None:
            ring_timeout_ms = self.ring_timeout_ms
        if ring_timeout_ms:
            self._timer("ring", ring_timeout_ms)
        self.cmd("ATD%s;" % number, timeout_ms=20000, done=self._dial_done)

    def _dial_done(self, c, status, text, err):
        if status == "OK" or status == "CONNECT":
            return  # call progress comes as URCs
        if status == "ABORTED":
            return
        if status == "BUSY":
            self._end_call_now(BUSY, status)
        elif status == "NO ANSWER":
            self._end_call_now(NO_ANSWER, status)
        elif status == "NO CARRIER":
            self._call_released(status)
        else:
            self._end_call_now(FAILED, "%s %s" % (status, err) if err is not None else status)

    def answer(self):
        if self.call != _CALL_INCOMING:
            raise ModemError("answer with no incoming call")
        self.cmd("ATA", timeout_ms=20000, done=self._ata_done)

    def _ata_done(self, c, status, text, err):
        if status == "OK" and self.call == _CALL_INCOMING:
            self._call_active()
        elif status not in ("OK", "ABORTED"):
            self._end_call_now(FAILED, status)

    def hangup(self, reason="cancel"):
        """Hang up; the call ends (call_end) when the modem confirms it (module comment)."""
        if self.call == _CALL_IDLE or self._hangups:
            return   # no call, or a hang-up already under way
        if self._hangup_reason is None:
            self._hangup_reason = reason
        self._send_hangup()

    def _send_hangup(self):
        # the profile's hang-up commands in turn; then wait for the end to be confirmed
        commands = self.p.HANGUPS
        self.cmd(commands[self._hangups % len(commands)], timeout_ms=20000,
                 done=self._hangup_done)
        self._hangups += 1

    def _hangup_done(self, c, status, text, err):
        if status == "ABORTED" or self.call == _CALL_IDLE:
            return
        if status != "OK":
            self._emit(("hangup_failed", c.text, status, err))
        self._timer("hangup", _HANGUP_CONFIRM_MS)

    def _t_hangup(self):
        if self.call != _CALL_IDLE:
            self.cmd("AT+CLCC", "+CLCC", timeout_ms=5000, done=self._clcc_query_done)

    def _clcc_query_done(self, c, status, text, err):
        if status == "ABORTED" or self.call == _CALL_IDLE:
            return
        if status == "OK":
            listed = False
            for line in text.split("\n"):
                parts = split_args(line[6:]) if line.startswith("+CLCC:") else ()
                if len(parts) > 2 and _int(parts[2]) != 6:
                    listed = True
            if not listed:
                self._call_released("hangup")   # the modem lists no call any more
                return
        if self._hangups < _HANGUP_TRIES:
            self._send_hangup()
        else:
            self._hangups = 0   # given up; hangup() may try again
            self._emit(("hangup_failed", "still up", status, err))

    def _t_ring(self):
        if self._outgoing and not self._confirmed and self.call in (
                _CALL_DIALING, _CALL_ALERTING, _CALL_ACTIVE):
            self.hangup("ring_timeout")

    def _incoming(self, number):
        if self.call == _CALL_IDLE:
            self.call = _CALL_INCOMING
            self._t_dial = self.now
            self._t_active = None
            self._confirmed = False
            self._outgoing = False
            self._hangup_reason = None
            self.call_number = number
            self._emit(("incoming", number))
        elif self.call == _CALL_INCOMING and number and not self.call_number:
            self.call_number = number
            self._emit(("incoming", number))

    def _clcc(self, args):
        parts = split_args(args)
        if len(parts) < 3:
            return
        stat = _int(parts[2])
        if self.call in (_CALL_DIALING, _CALL_ALERTING):
            if stat == 3 or stat == 2:
                if self.call != _CALL_ALERTING:
                    self.call = _CALL_ALERTING
                    self._emit(("call", "alerting", self.call_number))
            elif stat == 0:
                self._call_active()
            elif stat == 6:
                self._call_released("released")
        elif self.call == _CALL_ACTIVE and stat == 6:
            self._call_released("released")
        elif self.call == _CALL_INCOMING and stat == 0:
            self._call_active()

    def _call_active(self):
        # the modem says the call is connected: for an outgoing call that may be ring-back, so
        # the ring timeout keeps running (module comment)
        if self.call == _CALL_ACTIVE:
            return
        self.call = _CALL_ACTIVE
        self._t_active = self.now
        self._emit(("call", "active", self.call_number))

    def dtmf_received(self, digit):
        """Profile: the far end pressed a key: someone is on the line, the call is confirmed."""
        self._emit(("dtmf", digit))
        if self.call in (_CALL_DIALING, _CALL_ALERTING, _CALL_ACTIVE):
            self._call_active()   # even if the modem did not say active
            self._confirmed = True
            self._cancel("ring")

    def call_ended(self, detail):
        """Profile: the modem reported the end of the call (VOICE CALL: END etc.)."""
        self._call_released(detail)

    def _call_released(self, detail):
        c = self.call
        if c == _CALL_IDLE:
            return
        if detail == "BUSY":
            outcome = BUSY
        elif detail == "NO ANSWER":
            outcome = NO_ANSWER
        elif self._confirmed:
            outcome = CONFIRMED
        elif not self._outgoing:
            # answered by this card (ATA), else the caller gave up or we declined
            outcome = ANSWERED if c == _CALL_ACTIVE else CANCELLED
        elif self._hangup_reason == "ring_timeout":
            outcome = NO_ANSWER
        elif self._hangup_reason is not None:
            outcome = CANCELLED
        elif c == _CALL_ALERTING or c == _CALL_ACTIVE:
            outcome = REJECTED   # ended by the far end, unconfirmed (still ringing for us)
        else:
            outcome = FAILED
        self._end_call_now(outcome, detail)

    def _end_call_now(self, outcome, detail):
        if self.call == _CALL_IDLE:
            return
        end = self.now
        if self._t_active is not None:
            ring_ms = at.ticks_diff(self._t_active, self._t_dial)
            talk_ms = at.ticks_diff(end, self._t_active)
        else:
            ring_ms = at.ticks_diff(end, self._t_dial)
            talk_ms = 0
        self.call = _CALL_IDLE
        self._hangups = 0
        self._cancel("ring")
        self._cancel("hangup")
        self._emit(("call", "idle", self.call_number))
        self._emit(("call_end", outcome, ring_ms // 1000, talk_ms // 1000, detail))

    # ---- SMS ---------------------------------------------------------------------------------
    def sms_send_pdu(self, pdu_hex, tpdu_len, tag=None):
        """Send one SMS in PDU mode. pdu_hex: SMSC + TPDU as hex text (from smspdu);
        tpdu_len: TPDU length in octets (excludes the SMSC part), as AT+CMGS wants it."""
        if not self.features["sms"]:
            raise ModemError("this modem variant has no SMS")
        if isinstance(pdu_hex, str):
            pdu_hex = pdu_hex.encode()
        if not pdu_hex or len(pdu_hex) % 2 or not (1 <= tpdu_len <= 176) or tpdu_len * 2 > len(pdu_hex):
            raise ModemError("bad PDU: %d hex chars for a %d-octet TPDU" % (len(pdu_hex), tpdu_len))
        for ch in pdu_hex:
            if not (48 <= ch <= 57 or 65 <= ch <= 70 or 97 <= ch <= 102):
                raise ModemError("PDU is not hex text")
        c = self.cmd("AT+CMGS=%d" % tpdu_len, "+CMGS", timeout_ms=65000,
                     payload=pdu_hex + b"\x1a", done=self._cmgs_done)
        c.sms_tag = tag
        return c

    def _cmgs_done(self, c, status, text, err):
        tag = getattr(c, "sms_tag", None)
        if status == "OK":
            mr = _int(first_line(text)[6:].strip()) if text else -1
            self._emit(("sms_sent", mr, tag))
        else:
            self._emit(("sms_failed", err if err is not None else status, tag))

    def _cmti(self, args):
        parts = split_args(args)
        mem = parts[0] if parts else ""
        index = _int(parts[1]) if len(parts) > 1 else -1
        self._emit(("sms_new", mem, index))
        if self.auto_read_sms and index >= 0:
            self.sms_read(index)

    def sms_read(self, index):
        self.cmd("AT+CMGR=%d" % index, ("+CMGR",), timeout_ms=10000, done=self._cmgr_done)

    def _cmgr_done(self, c, status, text, err):
        if status != "OK" or not text:
            if status != "ABORTED":
                self._emit(("sms_read_failed", c.text, status, err))
            return
        index = _int(c.text[8:])
        end = text.find("\n")
        header = first_line(text)[6:].strip()
        body = text[end + 1:] if end >= 0 else ""   # the PDU (or text lines) after the header
        self._sms_event(index, header, body)

    def _sms_event(self, index, header, body):
        # PDU mode header: "<stat>,[<alpha>],<length>" / +CMT: "[<alpha>],<length>";
        # text mode header starts with a quoted status or originating address
        parts = split_args(header)
        mode = "text"
        if parts and _int(parts[-1]) >= 0 and body and _is_hex(body):
            if len(parts) <= 3 and (header[:1] != '"' or len(parts) == 2):
                mode = "pdu"
        self._emit(("sms", mode, index, header, body))

    def sms_delete(self, index):
        self.cmd("AT+CMGD=%d" % index, timeout_ms=10000, done=self._app_done)

    # ---- sleep -------------------------------------------------------------------------------
    def sleep(self):
        """Let the modem sleep (DRX, still reachable): AT+CSCLK=1 / AT+QSCLK=1, then DTR high."""
        if self.state != "ready":
            raise ModemError("sleep in state %s" % self.state)
        self.cmd(self.p.SLEEP_CMD, timeout_ms=2000, retries=1, done=self._sleep_done)

    def _sleep_done(self, c, status, text, err):
        if status == "OK":
            self._actions.append(("dtr", 1))
            self._sleeping = True
            self._emit(("sleep",))
        elif status != "ABORTED":
            self._emit(("sleep_failed", status, err))

    def wake(self):
        """DTR low; the UART is usable after the profile's wake time."""
        if not self._sleeping or "wake" in self._timers:
            return
        self._actions.append(("dtr", 0))
        self._timer("wake", self.t_wake)

    def _t_wake(self):
        self._sleeping = False
        self._emit(("awake",))
        held = self._held
        self._held = []
        for c in held:
            self.at.send(c)
        self._flush_out()


def _load_hwdata(name):
    import hwdata
    return hwdata.load(name)


def _is_hex(text):
    for ch in text:
        if ch not in "0123456789ABCDEFabcdef":
            return False
    return True


class Profile:
    """What a modem family must provide; subclasses: modem_a7670.A7670, modem_ec800m.EC800M.

    Class attributes:
      NAME         the protocol's name for it (one of ccspec.ENUMS["modem"])
      HW_NAME      its timing facts: hardware/<HW_NAME>.json (hwdata on the card)
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
        if self.NAME not in ccspec.ENUMS["modem"]:
            raise ValueError("profile name %r not in ccspec.ENUMS['modem']" % self.NAME)

    def attach(self, m):
        """Called by Modem.__init__: the driver this profile serves (used by callbacks)."""
        self._m = m

    def timing(self):
        """Timing figures (ms) from hwdata: pwrkey_on_ms, pwrkey_off_ms, boot_ms, ..."""
        facts = _load_hwdata(self.HW_NAME)["timing"]
        out = {}
        for key in facts:
            out[key] = facts[key]["value"]
        return out

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

    def on_urc(self, m, name, args, body):
        """Handle a vendor URC; return True when handled (else the generic handler runs)."""
        return False

    def on_data(self, m, header, payload):
        m.udp_received(payload)
