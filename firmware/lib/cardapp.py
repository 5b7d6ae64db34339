# The card application, sans-I/O: keys, calls, the SOS cascade, SMS, check-in prompts and the
# downlink commands. The scheduler feeds it and carries out what it returns:
#
#   app = CardApp(cfg, modem, now_ms, save_config=None, tz_quarters=32, timing=None)
#   app.on_key(ev, now_ms)            a keys.Keys event (kind, key0, t_ms, held_ms)
#   app.on_modem_event(ev, now_ms)    every modem.Modem event (the rest is ignored)
#   app.on_fix(lat_e7, lon_e7, fix, hdop_x10, sats, fix_ms)   the last known position
#   app.on_battery(pct)               state of charge (for the SOS frame)
#   app.on_commands(commands, now_ms) the commands of a decoded ack (ccproto.Decoder)
#   app.set_clock(unix_s, now_ms)     Unix time at now_ms (the modem's "time" events do it too)
#   app.poll(now_ms)                  at app.next_deadline() at least (None: nothing pending)
#   a = app.next_action()             a tuple, or None:
#       ("uplink", mtype, values, prio)   a protocol message: encode it and put it in the outbox
#                                         now (prio: outbox.PRIO_*)
#       ("alert", kind, on)               "checkin" (buzz and blink until off), "sos" (the SOS is
#                                         under way), "key" (a press was taken: a short buzz)
#       ("locate", reason)                take a fix now ("downlink", "sos")
#       ("config", cfg)                   the configuration changed (intervals, contacts)
#       ("set_time", unix_s)              set the real-time clock
#       ("reboot", delay_s)               reboot after delay_s (its command result is queued first)
#   app.idle()                        True while no call, dial or SMS is under way (the
#                                     modem may sleep)
#   app.stats                         counters of what was ignored or went wrong
#
# It drives the modem's controllers itself: modem.voice (dial, answer, hangup) and modem.sms
# (send_pdu, delete). Keys are 0-based in keys.Keys and 1-based (contact keys) here.
#
# What the card does (issue 13):
# - A short press of key N calls contact N (a key without a contact: a "no_number" call record).
#   During a call this session started from a key or answered, a short press hangs it up; during
#   the SOS cascade short presses are ignored (counted). A press answers a ringing call.
# - A long press of any key is SOS: the SOS frame with the last known position is the first
#   action returned, then the contacts are called in key order until one confirms, for
#   cfg "sos_rounds" rounds. If no call is confirmed, or data is down when the SOS starts, an SMS
#   (Chinese, UCS-2) with the time, the place and a map link goes to every contact. A contact who
#   calls the card during the cascade is answered at once and counts as reached.
# - Who confirms: a key pressed by the callee (DTMF) where the modem reports keys
#   (modem.features["dtmf"]). Fallback rule where it cannot: the call is dialled without a ring
#   timeout (the card never hangs up on what may be a real answer) and, if the modem reported it
#   active for at least timing "no_dtmf_reached_s" and neither BUSY nor NO ANSWER ended it, it
#   counts as reached for the cascade; the SMS still goes to every contact, because nobody
#   confirmed (ring-back looks the same to such a modem). The call record keeps the driver's
#   outcome ("rejected": ended by the far end unconfirmed; "no_answer"; ...).
# - Incoming: a contact's call is answered after cfg "auto_answer_rings" rings (0: never); any
#   ringing call is answered by a key press; other numbers are not auto-answered and are counted.
#   An SMS "定位", "位置" or "WHERE" (any case, spaces ignored) from a contact is answered with the
#   position by SMS; SMS from other numbers are ignored and counted. Read SMS are deleted.
# - Every call ends in a "call" record: key (the key pressed, or the contact's key of an
#   incoming call), number, outcome, ring and talk seconds. Incoming calls from numbers that are
#   not contacts are recorded only when a key answered them.
# - Check-in prompt: ("alert", "checkin", True) until answered or timed out; a short press in the
#   window answers "ok", a long press "help" (and the SOS runs as always); no press: "no_response".
# - Downlink commands are applied once per seq (a repeated seq is confirmed again, not applied
#   again), persisted through config.save, and confirmed with a command_result.
import config
from modem import split_args
import modem_voice as voice
import outbox
import ccspec

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

# Timings of the application (ms unless the name says s); a caller may replace any of them.
DEFAULT_TIMING = {
    "dial_wait_ms": 60000,          # a call waits this long for the modem to come up
    "sos_gap_ms": 2000,             # between two calls of the cascade (the modem settles)
    "ring_interval_ms": 6000,       # RINGs come every ~5 s: the auto-answer's time fallback
    "no_dtmf_reached_s": 20,        # fallback rule (module comment)
    "no_dtmf_max_call_ms": 600000,  # an unconfirmed call on a modem without DTMF is ended here
    "sms_retry_ms": 30000,          # a failed SMS is sent once more after this
    "prompt_pause_ms": 1500,        # between two plays of the confirmation prompt
}

# The driver's outcomes -> the protocol's (ccspec.ENUMS["call_outcome"]): checked at import.
_OUTCOMES = {
    voice.ANSWERED: "answered", voice.CONFIRMED: "confirmed", voice.BUSY: "busy",
    voice.NO_ANSWER: "no_answer", voice.REJECTED: "rejected", voice.FAILED: "failed",
    voice.CANCELLED: "cancelled", voice.MISSED: "missed",
}
for _name in voice.OUTCOMES:
    if _OUTCOMES.get(_name) not in ccspec.ENUMS["call_outcome"]:
        raise ImportError("call outcome %r has no protocol code in ccspec.ENUMS['call_outcome']"
                          % _name)
NO_NUMBER = "no_number"

SMS_COMMANDS = ("定位", "位置", "WHERE")
MAP_LINK = "https://uri.amap.com/marker?position=%s,%s&coordinate=wgs84"
_U16_UNKNOWN = const(65535)
_SEQ_MEMORY = const(16)   # command seqs remembered (a repeated ack carries the same commands)

# call sessions
_KEY = const(1)        # a short press called a contact
_SOS = const(2)        # a call of the SOS cascade
_INCOMING = const(3)   # an incoming call


def same_number(a, b):
    """Whether two phone numbers are the same line: equal digits, or one ends with the other
    when the shorter has at least 7 digits ("+8613800000000" and "13800000000")."""
    if not a or not b:
        return False
    a = a[1:] if a[0] == "+" else a
    b = b[1:] if b[0] == "+" else b
    if a == b:
        return True
    if len(a) > len(b):
        a, b = b, a
    return len(a) >= 7 and b.endswith(a)


def degrees(e7):
    """1e-7 degree -> "24.93012" (5 decimals, about a metre; no floats)."""
    sign = "-" if e7 < 0 else ""
    e7 = -e7 if e7 < 0 else e7
    e5 = (e7 + 50) // 100
    return "%s%d.%05d" % (sign, e5 // 100000, e5 % 100000)


class CardApp:
    def __init__(self, cfg, modem, now_ms, save_config=None, tz_quarters=32, timing=None):
        self.cfg = cfg
        self.modem = modem
        self.voice = modem.voice
        self.sms = modem.sms
        self.now = now_ms
        self.tz = tz_quarters
        self.t = dict(DEFAULT_TIMING)
        if timing:
            for name in timing:
                if name not in DEFAULT_TIMING:
                    raise ValueError("cardapp timing %r is unknown (known: %s)"
                                     % (name, ", ".join(sorted(DEFAULT_TIMING))))
                self.t[name] = timing[name]
        self._save = save_config
        self._actions = []
        self._head = 0
        self.stats = {"keys_ignored": 0, "keys_stuck": 0, "calls_unknown": 0, "sms_unknown": 0,
                      "sms_other": 0, "sms_unreadable": 0, "sms_failed": 0, "sms_sent": 0,
                      "commands_repeated": 0, "commands_failed": 0, "dial_errors": 0}
        # clock
        self._unix = None          # Unix seconds at self._unix_ms
        self._unix_ms = 0
        # last known position: (lat_e7, lon_e7, fix, hdop_x10, sats, fix_ms) or None
        self.fix = None
        self.battery_pct = 255
        # the call session
        self._session = 0
        self._key = 0              # the key recorded with the call
        self._number = ""
        self._pending = None       # (session, key, number) waiting for the modem
        self._pending_until = None
        self._hangup_at = None     # an unconfirmed call without DTMF ends here
        self._answer_at = None     # auto-answer of an incoming call (time fallback)
        self._ringing_from = 0     # the contact key of the incoming call (0: not a contact)
        self._answered_by_key = 0
        self._say_at = None        # when to play the confirmation prompt (again)
        # the SOS cascade
        self.sos_active = False
        self._sos_round = 0
        self._sos_index = 0
        self._sos_reached = False
        self._sos_confirmed = False
        self._sos_sms_sent = False
        self._sos_next_at = None
        self._sos_at = 0           # when the SOS was raised (its SMS gives that time)
        # SMS to send: [(number, text)], one at a time
        self._sms_queue = []
        self._sms_parts = []       # (tpdu_len, hex) of the message being sent
        self._sms_busy = False
        self._sms_retry_at = None
        self._sms_retried = False
        self._sms_ref = 0
        # check-in prompt
        self._prompt_id = None
        self._prompt_at = 0
        self._prompt_until = None
        # downlink commands applied: [(seq, result)]
        self._seqs = []

    # ---- outputs -----------------------------------------------------------------------------
    def next_action(self):
        actions = self._actions
        if self._head >= len(actions):
            return None
        a = actions[self._head]
        actions[self._head] = None
        self._head += 1
        if self._head == len(actions):
            del actions[:]
            self._head = 0
        return a

    def _act(self, action):
        self._actions.append(action)

    def _uplink(self, mtype, values, prio):
        self._act(("uplink", mtype, values, prio))

    def idle(self):
        return (self.voice.call == voice.IDLE and self._pending is None and not self._sms_busy
                and not self._sms_queue)

    def next_deadline(self):
        best = None
        for t in (self._pending_until, self._hangup_at, self._answer_at, self._sos_next_at,
                  self._sms_retry_at, self._prompt_until, self._say_at):
            if t is not None and (best is None or t < best):
                best = t
        return best

    # ---- inputs ------------------------------------------------------------------------------
    def set_clock(self, unix_s, now_ms):
        self._unix = unix_s
        self._unix_ms = now_ms

    def unix(self, now_ms):
        """Unix seconds at now_ms, or None while the clock is not known."""
        if self._unix is None:
            return None
        return self._unix + (now_ms - self._unix_ms) // 1000

    def on_fix(self, lat_e7, lon_e7, fix, hdop_x10, sats, fix_ms):
        self.fix = (lat_e7, lon_e7, fix, hdop_x10, sats, fix_ms)

    def on_battery(self, pct):
        self.battery_pct = pct if 0 <= pct <= 100 else 255

    def on_key(self, ev, now_ms):
        self.now = now_ms
        kind, key0 = ev[0], ev[1]
        key = key0 + 1
        if kind == "short":
            self._act(("alert", "key", True))
            self._short(key)
        elif kind == "sos":
            self._act(("alert", "key", True))
            if self._prompt_id is not None:
                self._checkin_answer("help")
            self.sos(now_ms)
        elif kind == "stuck":
            self.stats["keys_stuck"] += 1

    def on_modem_event(self, ev, now_ms):
        self.now = now_ms
        kind = ev[0]
        if kind == "call_end":
            self._say_at = None
            self._call_end(ev[1], ev[2], ev[3])
        elif kind == "call" or kind == "tts_done":
            self._prompt_later(kind == "call" and ev[1] == "active", now_ms)
        elif kind == "incoming":
            self._incoming(ev[1])
        elif kind == "ring":
            self._ring(ev[1])
        elif kind == "ready":
            self._run_pending()
        elif kind == "time":
            if ev[1] is not None:
                self.set_clock(ev[1], now_ms)
                self.tz = ev[2]
        elif kind == "sms":
            self._sms_in(ev[1], ev[2], ev[3], ev[4])
        elif kind == "sms_sent":
            self.stats["sms_sent"] += 1
            self._sms_part_done(True)
        elif kind == "sms_failed":
            self._sms_part_done(False)
        elif kind == "failed" or kind == "powered_down":
            if self._pending is not None:   # the modem is gone: the waiting call fails now
                self._pending_until = now_ms
                self.poll(now_ms)

    def poll(self, now_ms):
        self.now = now_ms
        if self._pending_until is not None and now_ms >= self._pending_until:
            self._pending_until = None
            pending = self._pending
            self._pending = None
            if pending is not None:
                self._record(pending[1], pending[2], "failed", 0, 0)
                self._after_call(pending[0], voice.FAILED, 0)
        if self._hangup_at is not None and now_ms >= self._hangup_at:
            self._hangup_at = None
            self.voice.hangup("no_dtmf_limit")
        if self._answer_at is not None and now_ms >= self._answer_at:
            self._answer_at = None
            self._answer()
        if self._sos_next_at is not None and now_ms >= self._sos_next_at:
            self._sos_next_at = None
            self._sos_next()
        if self._sms_retry_at is not None and now_ms >= self._sms_retry_at:
            self._sms_retry_at = None
            self._sms_send_part()
        if self._prompt_until is not None and now_ms >= self._prompt_until:
            self._checkin_answer("no_response")
        if self._say_at is not None and now_ms >= self._say_at:
            self._say_at = None
            if self._session == _SOS and not self.voice.confirmed:
                self.voice.say(self._confirm_prompt())

    # ---- the confirmation prompt -------------------------------------------------------------
    def _prompt_later(self, connected, now_ms):
        """An SOS call connected (or the prompt ended): speak the prompt asking the callee to
        press a key, now (connected) or after a pause, until a key confirms the call. The modem's
        "active" may come at ring-back, so it plays again until someone answers with a key."""
        m = self.modem
        if self._session != _SOS or not m.features["tts"] or not m.features["dtmf"] \
                or self.voice.confirmed or self.voice.call != voice.ACTIVE:
            self._say_at = None
            return
        if connected or self._say_at is None:
            self._say_at = now_ms if connected else now_ms + self.t["prompt_pause_ms"]

    def _confirm_prompt(self):
        """The prompt as UCS-2 hex (AT+CTTS=1): whose card, and which key confirms."""
        owner = self.cfg.values.get("owner_name")
        text = "紧急求助。这是" + (owner or "") + "的爱心卡,请按任意键确认。"
        return "".join("%04X" % ord(c) for c in text)

    # ---- keys and calls ----------------------------------------------------------------------
    def _short(self, key):
        if self._prompt_id is not None:
            self._checkin_answer("ok")
            return
        call = self.voice.call
        if call == voice.INCOMING:
            self._answered_by_key = key
            self._answer()
            return
        if self.sos_active:
            self.stats["keys_ignored"] += 1   # the cascade goes on whatever is pressed
            return
        if call != voice.IDLE or self._pending is not None:
            if self._session in (_KEY, _INCOMING) and call != voice.IDLE:
                self.voice.hangup("key")
            elif self._pending is not None:
                self._pending = None
                self._pending_until = None
            else:
                self.stats["keys_ignored"] += 1
            return
        contact = self.cfg.contact(key)
        if contact is None or not contact[1]:
            self._record(key, "", NO_NUMBER, 0, 0)
            return
        self._dial(_KEY, key, contact[1])

    def _dial(self, session, key, number):
        """Dial now if the modem can, else wait for it (dial_wait_ms)."""
        m = self.modem
        if not m.features["voice"]:
            self._record(key, number, "failed", 0, 0)
            self._after_call(session, voice.FAILED, 0)
            return
        if self.voice.call != voice.IDLE or m.state not in ("ready", "net"):
            self._pending = (session, key, number)
            if self._pending_until is None:
                self._pending_until = self.now + self.t["dial_wait_ms"]
            return
        self._pending = None
        self._pending_until = None
        self._session = session
        self._key = key
        self._number = number
        # a call from a key is the elder's own: never hung up for want of a confirmation (the
        # network ends an unanswered one); an SOS call is, where the modem reports keys
        ring = None if session == _SOS and m.features["dtmf"] else 0
        try:
            self.voice.dial(number, ring)
        except Exception:   # a bad number or a full AT queue: a failed call, never a crash
            self.stats["dial_errors"] += 1
            self._session = 0
            self._record(key, number, "failed", 0, 0)
            self._after_call(session, voice.FAILED, 0)
            return
        if session == _SOS and ring == 0:
            self._hangup_at = self.now + self.t["no_dtmf_max_call_ms"]

    def _run_pending(self):
        if self._pending is not None and self.voice.call == voice.IDLE:
            session, key, number = self._pending
            self._dial(session, key, number)

    def _call_end(self, outcome, ring_s, talk_s):
        session = self._session
        self._session = 0
        self._hangup_at = None
        self._answer_at = None
        if session == _INCOMING:
            key = self._ringing_from or self._answered_by_key
            if key:   # a contact's call, or one a key answered
                self._record(key, self._number, _OUTCOMES[outcome], ring_s, talk_s)
            if self.sos_active and outcome == voice.ANSWERED and self._ringing_from:
                self._sos_reached = True   # family called back and was answered
            self._after_call(session, outcome, talk_s)
        elif session:
            self._record(self._key, self._number, _OUTCOMES[outcome], ring_s, talk_s)
            self._after_call(session, outcome, talk_s)
        self._run_pending()

    def _record(self, key, number, outcome, ring_s, talk_s):
        self._uplink("call", {"key": key, "number": number, "outcome": outcome,
                              "ring_s": min(ring_s, 0xFFFF), "talk_s": min(talk_s, 0xFFFF)},
                     outbox.PRIO_CALL)

    def _incoming(self, number):
        if self.voice.call != voice.INCOMING:
            return
        if self._session != _INCOMING:
            self._session = _INCOMING
            self._answered_by_key = 0
            self._ringing_from = 0
            self._number = number or ""
        if number:
            self._number = number
            self._ringing_from = self._contact_key(number)
            if not self._ringing_from:
                self.stats["calls_unknown"] += 1
            elif self.sos_active:
                self._answer()   # family calling back during the SOS
            elif self.cfg.values.get("auto_answer_rings", 0) and self._answer_at is None:
                rings = self.cfg.values["auto_answer_rings"]
                self._answer_at = self.now + rings * self.t["ring_interval_ms"]
                self._ring(self.voice.rings)

    def _ring(self, count):
        rings = self.cfg.values.get("auto_answer_rings", 0)
        if self._ringing_from and rings and count >= rings and self.voice.call == voice.INCOMING:
            self._answer()

    def _answer(self):
        self._answer_at = None
        if self.voice.call == voice.INCOMING:
            try:
                self.voice.answer()
            except Exception:
                self.stats["dial_errors"] += 1

    def _contact_key(self, number):
        for key, _name, contact in self.cfg.contacts:
            if same_number(number, contact):
                return key
        return 0

    # ---- SOS ---------------------------------------------------------------------------------
    def sos(self, now_ms, trigger="long_press"):
        """Raise an SOS: the frame first, then the cascade (once: a running SOS goes on)."""
        self.now = now_ms
        if self.sos_active:
            self.stats["keys_ignored"] += 1
            return
        lat = lon = 0
        fix = "none"
        age = _U16_UNKNOWN
        if self.fix is not None:
            lat, lon, fix = self.fix[0], self.fix[1], self.fix[2]
            age_s = (now_ms - self.fix[5]) // 1000
            age = age_s if 0 <= age_s < _U16_UNKNOWN else _U16_UNKNOWN
        self._uplink("sos", {"trigger": trigger, "lat_e7": lat, "lon_e7": lon, "fix": fix,
                             "fix_age_s": age, "battery_pct": self.battery_pct}, outbox.PRIO_SOS)
        self._act(("alert", "sos", True))
        if self.fix is None or age == _U16_UNKNOWN or age > 300:
            self._act(("locate", "sos"))
        self.sos_active = True
        self._sos_round = 0
        self._sos_index = 0
        self._sos_reached = False
        self._sos_confirmed = False
        self._sos_sms_sent = False
        self._sos_at = now_ms
        data_down = not self.modem.data.net_up
        self._sos_start()
        if data_down:
            self._sos_sms()   # the SOS frame may not get out: the family hears it by SMS now

    def _sos_start(self):
        if self._pending is not None and self._pending[0] == _KEY:
            self._record(self._pending[1], self._pending[2], "cancelled", 0, 0)
            self._pending = None
            self._pending_until = None
        if self.voice.call != voice.IDLE:
            if self.voice.call == voice.INCOMING and self._ringing_from:
                self._answer()   # a contact is calling: the SOS starts with them
            elif self._session != _INCOMING or self.voice.call == voice.INCOMING:
                self.voice.hangup("sos")   # make way for the cascade
            # the cascade goes on when this call ends (_after_call)
            return
        self._sos_next()

    def _sos_next(self):
        if not self.sos_active:
            return
        if self.voice.call != voice.IDLE or self._pending is not None:
            return   # _after_call continues the cascade
        contacts = [c for c in self.cfg.contacts if c[2]]
        if self._sos_reached or not contacts:
            self._sos_done()
            return
        if self._sos_index >= len(contacts):
            self._sos_index = 0
            self._sos_round += 1
        if self._sos_round >= self.cfg.values.get("sos_rounds", 3):
            self._sos_done()
            return
        key, _name, number = contacts[self._sos_index]
        self._sos_index += 1
        self._dial(_SOS, key, number)

    def _after_call(self, session, outcome, talk_s):
        if not self.sos_active:
            return
        if session == _SOS:
            if outcome == voice.CONFIRMED:
                self._sos_reached = True
                self._sos_confirmed = True
            elif (not self.modem.features["dtmf"] and talk_s >= self.t["no_dtmf_reached_s"]
                  and outcome in (voice.REJECTED, voice.CANCELLED)):
                self._sos_reached = True   # the fallback rule (module comment)
        self._sos_next_at = self.now + self.t["sos_gap_ms"]

    def _sos_done(self):
        self.sos_active = False
        self._sos_next_at = None
        self._act(("alert", "sos", False))
        if not self._sos_confirmed:
            self._sos_sms()

    def _sos_sms(self):
        if self._sos_sms_sent:
            return
        self._sos_sms_sent = True
        owner = self.cfg.values.get("owner_name")
        who = (owner + "按了爱心卡的求助键。") if owner else "爱心卡的主人按了求助键。"
        text = "【紧急求助】" + who + self._when_where(self._sos_at) + "请马上联系或上门查看。"
        for _key, _name, number in self.cfg.contacts:
            if number:
                self._sms_out(number, text)

    def _when_where(self, at_ms):
        unix = self.unix(at_ms)
        if unix is None:
            when = "时间:未知。"
        else:
            when = "时间:%s。" % self._local(unix)
        f = self.fix
        if f is None:
            return when + "位置:暂无定位。"
        lat, lon = degrees(f[0]), degrees(f[1])
        age_min = (self.now - f[5]) // 60000
        age = "刚刚" if age_min < 1 else "%d分钟前" % age_min
        return (when + "位置(%s):%s,%s 地图:" % (age, lat, lon)
                + MAP_LINK % (lon, lat) + " 。")

    def _local(self, unix):
        t = unix + self.tz * 900
        days = t // 86400
        secs = t - days * 86400
        import smspdu   # here, not at the top: a card carries it only once it handles an SMS

        y, mo, d = smspdu.civil_from_days(days)
        return "%d-%02d-%02d %02d:%02d" % (y, mo, d, secs // 3600, secs % 3600 // 60)

    # ---- SMS ---------------------------------------------------------------------------------
    def _sms_out(self, number, text):
        self._sms_queue.append((number, text))
        if not self._sms_busy:
            self._sms_next()

    def _sms_next(self):
        import smspdu

        self._sms_busy = False
        self._sms_retried = False
        while self._sms_queue:
            number, text = self._sms_queue.pop(0)
            self._sms_ref = (self._sms_ref + 1) & 0xFF
            try:
                self._sms_parts = smspdu.encode_submit(number, text, concat_ref=self._sms_ref)
            except ValueError:
                self.stats["sms_failed"] += 1
                continue
            self._sms_busy = True
            self._sms_send_part()
            return

    def _sms_send_part(self):
        if not self._sms_parts:
            self._sms_next()
            return
        tpdu_len, pdu = self._sms_parts[0]
        try:
            self.sms.send_pdu(pdu, tpdu_len)
        except Exception:
            self.stats["sms_failed"] += 1
            self._sms_parts = []
            self._sms_next()

    def _sms_part_done(self, ok):
        if not self._sms_busy:
            return
        if ok:
            self._sms_parts.pop(0)
            self._sms_retried = False
            self._sms_send_part()
        elif not self._sms_retried:
            self._sms_retried = True
            self._sms_retry_at = self.now + self.t["sms_retry_ms"]
        else:
            self.stats["sms_failed"] += 1
            self._sms_parts = []
            self._sms_next()

    def _sms_in(self, mode, index, header, body):
        import smspdu

        sender = text = None
        if mode == "pdu":
            try:
                msg = smspdu.decode(body)
                if msg.kind == "deliver":
                    sender, text = msg.number, msg.text
            except ValueError:
                pass
        elif header[:1] == '"':
            # text mode: +CMGR '"REC UNREAD","<number>",...', +CMT '"<number>",...'
            for part in split_args(header):
                if part and (part[0] == "+" or "0" <= part[0] <= "9") and "/" not in part:
                    sender = part
                    break
            text = body
        if index is not None and index >= 0:
            self.sms.delete(index)   # storage is small; the message has been taken
        if sender is None or text is None:
            self.stats["sms_unreadable"] += 1
            return
        if not self._contact_key(sender):
            self.stats["sms_unknown"] += 1
            return
        word = text.replace(" ", "").replace("\n", "").replace("\r", "").upper()
        if word in SMS_COMMANDS:
            self._sms_out(sender, "【位置】" + self._when_where(self.now))
            if self.fix is None or self.now - self.fix[5] > 300000:
                self._act(("locate", "sms"))
        else:
            self.stats["sms_other"] += 1

    # ---- check-in ----------------------------------------------------------------------------
    def _checkin_prompt(self, prompt_id, timeout_s):
        if self._prompt_id is not None:
            self._checkin_answer("no_response")   # a new prompt replaces an unanswered one
        self._prompt_id = prompt_id
        self._prompt_at = self.now
        self._prompt_until = self.now + timeout_s * 1000
        self._act(("alert", "checkin", True))

    def _checkin_answer(self, answer):
        prompt_id = self._prompt_id
        self._prompt_id = None
        self._prompt_until = None
        self._act(("alert", "checkin", False))
        response_s = (self.now - self._prompt_at) // 1000
        self._uplink("checkin", {"prompt_id": prompt_id, "answer": answer,
                                 "response_s": min(response_s, 0xFFFF)},
                     outbox.PRIO_SOS if answer == "help" else outbox.PRIO_CALL)

    # ---- downlink commands -------------------------------------------------------------------
    def on_commands(self, commands, now_ms):
        self.now = now_ms
        for command in commands:
            seq = command.get("seq") if isinstance(command, dict) else None
            if not isinstance(seq, int) or not 0 <= seq <= 0xFFFF:
                self.stats["commands_failed"] += 1   # nothing to confirm it with: dropped
                continue
            done = None
            for s, result in self._seqs:
                if s == seq:
                    done = result
            if done is not None:
                self.stats["commands_repeated"] += 1
                self._result(seq, done)
                continue
            reboot = None
            try:
                result, reboot = self._apply(command)
            except Exception:   # a command must never take the card down
                self.stats["commands_failed"] += 1
                result = "rejected"
            self._seqs.append((seq, result))
            if len(self._seqs) > _SEQ_MEMORY:
                self._seqs.pop(0)
            self._result(seq, result)
            if reboot is not None:
                self._act(("reboot", reboot))

    def _result(self, seq, result):
        self._uplink("command_result", {"seq": seq, "result": result}, outbox.PRIO_CALL)

    def _apply(self, command):
        name = command.get("cmd")
        if name == "locate_now":
            self._act(("locate", "downlink"))
            return "done", None
        if name == "checkin_prompt":
            self._checkin_prompt(command["prompt_id"], command["timeout_s"])
            return "done", None
        if name == "set_intervals":
            return self._save_values({"position_s": command["position_s"],
                                      "status_s": command["status_s"],
                                      "gnss_timeout_s": command["gnss_timeout_s"]}), None
        if name == "set_contacts":
            contacts = []
            for c in command["contacts"]:
                if c["number"]:   # an empty number: nobody behind that key
                    contacts.append({"key": c["key"], "name": c["name"], "number": c["number"]})
            return self._save_values({"contacts": contacts}), None
        if name == "set_time":
            self.set_clock(command["unix"], self.now)
            self._act(("set_time", command["unix"]))
            return "done", None
        if name == "reboot":
            return "done", command["delay_s"]
        return "unsupported", None

    def _save_values(self, changes):
        values = {}
        for name in self.cfg.values:
            values[name] = self.cfg.values[name]
        values["contacts"] = [{"key": k, "name": n, "number": num}
                              for k, n, num in self.cfg.contacts]
        for name in changes:
            values[name] = changes[name]
        check = config.validate(values)
        for name in changes:
            if name in check.bad_fields:
                return "bad_value"
        if not check.ok:
            return "rejected"   # the stored config itself is not valid (safe mode)
        try:
            if self._save is not None:
                cfg = self._save(values)
            else:
                cfg = config.save(values, self.cfg.source or "/config.json")
        except (OSError, ValueError):
            return "rejected"
        cfg.source = self.cfg.source
        self.cfg = cfg
        self._act(("config", cfg))
        return "done"
