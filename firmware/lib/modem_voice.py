# Voice calls for modem.Modem: dial, answer, hang up, call progress and outcomes, DTMF.
#
# Outgoing calls: the modem's "active" (VOICE CALL: BEGIN, +CLCC stat 0, +COLP) is NOT an answer.
# A76xx modems report it at ring-back on real networks, before anyone picks up (design.md
# section 5; shared/data/at/unattributed). So an outgoing call counts as ringing until the
# callee confirms with a key (DTMF, ("dtmf", digit) events; Modem.features["dtmf"] says whether
# the modem reports keys: the profile switches it on when the modem accepts its DTMF detection
# command, A7670 AT+DDET=1 -> "+RXDTMF: <key>", EC800M AT+QTONEDET=1 -> "+QTONEDET: <ASCII>"):
# the ring timeout keeps running through the modem's "active" and hangs the call up unless
# confirmed. The outcome is CONFIRMED after a key, NO_ANSWER when the ring timeout ran out (or the
# network said NO ANSWER), REJECTED when the far end ended it unconfirmed (the modem's "active"
# changes nothing: its time counts as talk_s, and detail keeps the modem's words), BUSY,
# CANCELLED (hung up by the application) or FAILED; never ANSWERED.
# ANSWERED is only for an incoming call this card answered (ATA); an incoming call that ended
# before it was answered is MISSED. A call that must not be hung up unconfirmed (the application
# decides itself, e.g. on a modem without DTMF detection) is dialled with ring_timeout_ms=0: no
# ring timeout; the application ends it with hangup().
# Hanging up: the profile's HANGUPS commands are tried in turn (AT+CHUP first where the modem has
# it: ATH ends a voice call only while AT+CVHU=0 holds); "OK" to them is not taken as the end:
# the end is confirmed by +CLCC stat 6, VOICE CALL: END (either spelling), NO CARRIER, or an
# AT+CLCC query that no longer lists the call.
#
# Incoming calls: ("incoming", number) when one starts (number None until +CLIP gives it; then
# once more with the number), ("ring", count, number) at each RING.
#
# Outcomes are this driver's words; the application maps them to its protocol's codes.
import at
from modem import ModemError, split_args, _int

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

ANSWERED = "answered"
CONFIRMED = "confirmed"
BUSY = "busy"
NO_ANSWER = "no_answer"
REJECTED = "rejected"
FAILED = "failed"
CANCELLED = "cancelled"
MISSED = "missed"
OUTCOMES = (ANSWERED, CONFIRMED, BUSY, NO_ANSWER, REJECTED, FAILED, CANCELLED, MISSED)

IDLE = const(0)
DIALING = const(1)
ALERTING = const(2)
ACTIVE = const(3)
INCOMING = const(4)
CALL_STATES = ("idle", "dialing", "alerting", "active", "incoming")

_HANGUP_CONFIRM_MS = const(5000)   # after a hang-up command, the end is waited for this long
                                   # before the driver asks the modem (AT+CLCC)
_HANGUP_TRIES = const(3)           # hang-up commands sent before "hangup_failed"
_DIAL_CHARS = "+0123456789*#"


class Voice:
    def __init__(self, modem, ring_timeout_ms):
        self.m = modem
        self.ring_timeout_ms = ring_timeout_ms
        self.call = IDLE
        self.number = None
        self.outgoing = False
        self.confirmed = False
        self._t_dial = 0
        self._t_active = None
        self._hangup_reason = None
        self._hangups = 0
        self.rings = 0            # RINGs of the incoming call so far
        self._answering = False   # ATA sent, not finished
        self._t_ring = modem.add_timer(self._on_ring_timer)
        self._t_hangup = modem.add_timer(self._on_hangup_timer)

    @property
    def state(self):
        return CALL_STATES[self.call]

    # ---- application-facing ------------------------------------------------------------------
    def dial(self, number, ring_timeout_ms=None):
        """Place a voice call. Ends with ("call_end", outcome, ring_s, talk_s, detail).

        Unless the callee confirms with a key within ring_timeout_ms (default: the driver's
        ring_timeout_ms; 0: none), the call is hung up and ends as NO_ANSWER, whatever the
        modem says meanwhile (see the module comment)."""
        m = self.m
        if not m.features["voice"]:
            raise ModemError("this modem variant has no voice calls")
        if self.call != IDLE:
            raise ModemError("dial while a call is %s" % CALL_STATES[self.call])
        if not number or not all(ch in _DIAL_CHARS for ch in number):
            raise ModemError("bad number %r: digits, * # and a leading + only" % (number,))
        self._begin(DIALING, number, True)
        m.emit(("call", "dialing", number))
        if ring_timeout_ms is None:
            ring_timeout_ms = self.ring_timeout_ms
        if ring_timeout_ms:
            m.timer(self._t_ring, ring_timeout_ms)
        m.cmd("ATD%s;" % number, timeout_ms=20000, done=self._dial_done)

    def answer(self):
        """Answer the incoming call (once: a second answer while ATA is under way does nothing)."""
        if self.call != INCOMING:
            raise ModemError("answer with no incoming call")
        if self._answering:
            return
        self._answering = True
        self.m.cmd("ATA", timeout_ms=20000, done=self._ata_done)

    def hangup(self, reason="cancel"):
        """Hang up; the call ends (call_end) when the modem confirms it (module comment)."""
        if self.call == IDLE or self._hangups:
            return   # no call, or a hang-up already under way
        if self._hangup_reason is None:
            self._hangup_reason = reason
        self._send_hangup()

    # ---- for the core and profiles -----------------------------------------------------------
    def on_urc(self, name, args):
        """A standard call URC; True when it was one."""
        if name == "RING" or name == "+CRING":
            self.incoming(None)
            if self.call == INCOMING:
                self.rings += 1
                self.m.emit(("ring", self.rings, self.number))
        elif name == "+CLIP":
            parts = split_args(args)
            self.incoming(parts[0] if parts else None)
        elif name == "+CLCC":
            self._clcc(args)
        elif name == "NO CARRIER" or name == "BUSY" or name == "NO ANSWER":
            self.released(name)
        elif name == "+CEER":
            self.m.emit(("call_cause", args.strip('"')))
        else:
            return False
        return True

    def incoming(self, number):
        if self.call == IDLE:
            self._begin(INCOMING, number, False)
            self.m.emit(("incoming", number))
        elif self.call == INCOMING and number and not self.number:
            self.number = number
            self.m.emit(("incoming", number))

    def connected(self):
        """The modem says the call is connected: for an outgoing call that may be ring-back, so
        the ring timeout keeps running (module comment)."""
        if self.call == ACTIVE or self.call == IDLE:
            return
        self.call = ACTIVE
        self._t_active = self.m.now
        self.m.emit(("call", "active", self.number))

    def say(self, ucs2_hex):
        """Speak a text (UCS-2, hex) to the far end of the active call, where the modem can
        (features["tts"]); ("tts_done", ok) follows. False when it cannot be spoken now."""
        if self.call != ACTIVE or not self.m.features["tts"]:
            return False
        self.m.p.say(self.m, ucs2_hex)
        return True

    def dtmf(self, digit):
        """Profile: the far end pressed a key: someone is on the line, the call is confirmed."""
        self.m.emit(("dtmf", digit))
        if self.call in (DIALING, ALERTING, ACTIVE):
            self.connected()   # even if the modem did not say active
            self.confirmed = True
            self.m.cancel(self._t_ring)

    def released(self, detail):
        """The modem reported the end of the call (VOICE CALL: END, NO CARRIER, ...)."""
        c = self.call
        if c == IDLE:
            return
        if detail == "BUSY":
            outcome = BUSY
        elif detail == "NO ANSWER":
            outcome = NO_ANSWER
        elif self.confirmed:
            outcome = CONFIRMED
        elif not self.outgoing:
            # answered by this card (ATA), else the caller gave up or we declined
            outcome = ANSWERED if c == ACTIVE else MISSED
        elif self._hangup_reason == "ring_timeout":
            outcome = NO_ANSWER
        elif self._hangup_reason is not None:
            outcome = CANCELLED
        elif c == ALERTING or c == ACTIVE:
            outcome = REJECTED   # ended by the far end, unconfirmed (still ringing for us)
        else:
            outcome = FAILED
        self._end(outcome, detail)

    def lost(self, reason):
        """The core: the modem's session ended (power-off, reboot): a call in progress failed."""
        self._end(FAILED, reason)

    # ---- internals ---------------------------------------------------------------------------
    def _begin(self, state, number, outgoing):
        self.call = state
        self.number = number
        self.outgoing = outgoing
        self.confirmed = False
        self._t_dial = self.m.now
        self._t_active = None
        self._hangup_reason = None
        self.rings = 0
        self._answering = False

    def _dial_done(self, c, status, text, err):
        if status == "OK" or status == "CONNECT" or status == "ABORTED":
            return  # call progress comes as URCs
        if status == "BUSY":
            self._end(BUSY, status)
        elif status == "NO ANSWER":
            self._end(NO_ANSWER, status)
        elif status == "NO CARRIER":
            self.released(status)
        else:
            self._end(FAILED, "%s %s" % (status, err) if err is not None else status)

    def _ata_done(self, c, status, text, err):
        self._answering = False
        if status == "OK" and self.call == INCOMING:
            self.connected()
        elif status not in ("OK", "ABORTED") and self.call == INCOMING:
            self._end(FAILED, status)

    def _send_hangup(self):
        # the profile's hang-up commands in turn; then wait for the end to be confirmed
        commands = self.m.p.HANGUPS
        self.m.cmd(commands[self._hangups % len(commands)], timeout_ms=20000,
                   done=self._hangup_done)
        self._hangups += 1

    def _hangup_done(self, c, status, text, err):
        if status == "ABORTED" or self.call == IDLE:
            return
        if status != "OK":
            self.m.emit(("hangup_failed", c.text, status, err))
        self.m.timer(self._t_hangup, _HANGUP_CONFIRM_MS)

    def _on_hangup_timer(self):
        if self.call != IDLE:
            self.m.cmd("AT+CLCC", "+CLCC", timeout_ms=5000, done=self._clcc_query_done)

    def _clcc_query_done(self, c, status, text, err):
        if status == "ABORTED" or self.call == IDLE:
            return
        if status == "OK":
            listed = False
            for line in text.split("\n"):
                parts = split_args(line[6:]) if line.startswith("+CLCC:") else ()
                if len(parts) > 2 and _int(parts[2]) != 6:
                    listed = True
            if not listed:
                self.released("hangup")   # the modem lists no call any more
                return
        if self._hangups < _HANGUP_TRIES:
            self._send_hangup()
        else:
            self._hangups = 0   # given up; hangup() may try again
            self.m.emit(("hangup_failed", "still up", status, err))

    def _on_ring_timer(self):
        if self.outgoing and not self.confirmed and self.call in (DIALING, ALERTING, ACTIVE):
            self.hangup("ring_timeout")

    def _clcc(self, args):
        parts = split_args(args)
        if len(parts) < 3:
            return
        stat = _int(parts[2])
        if self.call in (DIALING, ALERTING):
            if stat == 3 or stat == 2:
                if self.call != ALERTING:
                    self.call = ALERTING
                    self.m.emit(("call", "alerting", self.number))
            elif stat == 0:
                self.connected()
            elif stat == 6:
                self.released("released")
        elif self.call == ACTIVE and stat == 6:
            self.released("released")
        elif self.call == INCOMING and stat == 0:
            self.connected()

    def _end(self, outcome, detail):
        if self.call == IDLE:
            return
        m = self.m
        end = m.now
        if self._t_active is not None:
            ring_ms = at.ticks_diff(self._t_active, self._t_dial)
            talk_ms = at.ticks_diff(end, self._t_active)
        else:
            ring_ms = at.ticks_diff(end, self._t_dial)
            talk_ms = 0
        self.call = IDLE
        self._hangups = 0
        m.cancel(self._t_ring)
        m.cancel(self._t_hangup)
        m.emit(("call", "idle", self.number))
        m.emit(("call_end", outcome, ring_ms // 1000, talk_ms // 1000, detail))
