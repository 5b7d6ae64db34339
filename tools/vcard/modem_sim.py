"""A simulated SIMCom A7670 modem: the A76xx AT dialect, sans-I/O, on a virtual clock.

`ModemSim` is fed the bytes a card writes to its modem UART (`receive`) and the time
(`advance(now_ms)`), and produces the bytes the modem would send back (`take_output`). Everything
the modem does in the world goes through callbacks and control calls, so the same core runs in
virtual time under the virtual card and in real time behind a pty (carecard.tools.vcard.pty_modem).

What it speaks, and where each form comes from (../shared/data/at/):
- boot: "*ATREADY: 1", "+CPIN: READY", "+CGEV: EPS PDN ACT 1", "SMS DONE", "+CGEV: ME PDN ACT 8,1",
  "PB DONE", spaced as in
  the A7670E-FASE boot log (issues/simcom_a7670e_boot_cgnsspwr_LilyGo-Modem-Series-299);
  identity (ATI, AT+SIMCOMATI, AT+CGMI/CGMM/CGMR/CGSN/CIMI/CICCID) in the forms of issues 299/337;
- SIM and registration: AT+CPIN?, AT+CSQ, AT+CREG?/CEREG?/CGREG? and their URCs (+CREG: <stat>
  with <n>=1), AT+COPS?; coverage loss sends "+CGEV: NW PDN DEACT 1" (A7672SA notes) and
  +CREG/+CEREG: 2 (searching), recovery +CREG/+CEREG: 1;
- network time: AT+CCLK? as local time with the zone in quarter hours;
- the SIM: absent (AT+CPIN? answers +CME ERROR: 10) or locked by its PIN ("+CPIN: SIM PIN" until
  AT+CPIN="<pin>"; a wrong PIN is +CME ERROR: 16), and its phonebook (AT+CPBS, AT+CPBW, AT+CPBR;
  the text in the +CSCS character set, "UCS2" as hex; 250 entries, numbers up to 40 digits, text
  up to 14 bytes as stored on the SIM: 14 GSM characters or 6 UCS-2 ones, 3GPP TS 31.102 alpha
  identifiers); the phonebook is on the SIM, so it outlives power cycles;
- voice: ATD<n>; answers OK at once, then +CLCC (AT+CLCC=1) dialing -> alerting; on the network's
  ring-back (early media, on by default) "VOICE CALL: BEGIN" and +CLCC stat 0 arrive BEFORE anyone
  answers (unattributed/simcom_a7672sa_claro_call_traces); the end is +CLCC stat 6, NO CARRIER and
  "VOICE CALL: END: 000017" (issues/..._T-SIM7600X-65) or, now and then, "VOICE CALL:END:000004"
  without spaces (the A7672SA notes); the callee's key press as "+RXDTMF: <key>" once AT+DDET=1;
  ATH hangs up only after AT+CVHU=0, AT+CHUP always; incoming calls as RING / +CLIP, ATA answers;
- text-to-speech (SIMCom A76XX AT manual, TTS commands): AT+CDTAM=1 plays it to the far end,
  AT+CTTS=1,"<UCS-2 hex>" answers OK and "+CTTS: 0" when the text was spoken (a quarter second
  a character); what was spoken to whom is in `spoken`. A confirming callee who hears a prompt
  presses the key once it ended (else key_after_s after answering);
- SMS in PDU mode (AT+CMGF=0; text mode for clients that want it): AT+CMGS with the "> " prompt,
  "+CMGS: <mr>"; received messages stored and announced as +CMTI: "SM",<index> (AT+CNMI=2,1),
  read with AT+CMGR (SMS-DELIVER PDUs made by the firmware's own smspdu.encode_deliver);
- UDP: AT+NETOPEN (OK, then "+NETOPEN: 0"), AT+IPADDR, AT+CIPOPEN=<link>,"UDP",,,<port>,
  AT+CIPSEND=<link>,<len>,"<ip>",<port> with the "> " prompt, "+CIPSEND: <link>,<req>,<sent>";
  datagrams in as "RECV FROM:<ip>:<port>" (AT+CIPSRIP=1) then "+IPD<len>" and the raw bytes;
- sleep: AT+CSCLK=1, then the DTR line high lets the modem sleep (DRX) once its UART was idle for
  `sleep_entry_ms`; asleep it ignores the UART, holds its URCs and pulses RI; DTR low wakes it.

Lines a pty does not have are control calls: DTR (`set_dtr`), PWRKEY (`power_key`), the supply
(`power_cut`), and RI is reported through `on_ri`. The world is control calls too: coverage,
incoming calls and SMS, datagrams from the network, and a modem that stops answering (`hang`).

Power states for the energy model are reported through `on_power(state, now_ms)`: "off",
"booting", "idle" (awake, UART on), "sleep" (DRX), "searching" (asleep without a network),
"tx" (sending a datagram), "call".
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from carecard.tools import fwlib

CTRL_Z = 0x1A
ESC = 0x1B

# CALL_KINDS: how a called number behaves (the scenario sets one per number)
CONFIRMS = "confirms"            # answers, then presses a key (DTMF): the reliable "answered"
ANSWERS = "answers"              # answers without a key (voicemail, someone who says nothing)
BUSY = "busy"
NO_ANSWER = "no_answer"          # rings until the network gives up
UNREACHABLE = "unreachable"      # the network plays "cannot be reached" (early media) and ends
REJECTS = "rejects"              # rings, then the callee declines
CALL_KINDS = (CONFIRMS, ANSWERS, BUSY, NO_ANSWER, UNREACHABLE, REJECTS)

# the SIM in the modem: SIM_READY, SIM_ABSENT (no SIM in the holder), SIM_PIN (asks for its PIN)
SIM_READY = "ready"
SIM_ABSENT = "absent"
SIM_PIN = "pin"
SIM_STATES = (SIM_READY, SIM_ABSENT, SIM_PIN)
PHONEBOOK_SIZE = 250
PHONEBOOK_NLENGTH = 40
PHONEBOOK_TLENGTH = 14


@dataclass
class Callee:
    """How a number behaves when the card calls it."""

    kind: str = CONFIRMS
    ring_s: float = 8.0          # ring-back time before answering / rejecting
    key: str = "1"               # the DTMF key a confirming callee presses
    key_after_s: float = 3.0     # after answering
    talk_s: float = 30.0         # after answering: the callee hangs up (0: never)

    def __post_init__(self) -> None:
        if self.kind not in CALL_KINDS:
            raise ValueError(f"callee kind {self.kind!r} is not one of {', '.join(CALL_KINDS)}")
        if self.key not in "0123456789*#ABCD" or len(self.key) != 1:
            raise ValueError(f"DTMF key {self.key!r} is not one of 0-9 * # A-D")


@dataclass
class Identity:
    """What the modem says about itself (forms of the A7670E-FASE logs, issues 299/337)."""

    manufacturer: str = "SIMCOM INCORPORATED"
    model: str = "A7670E-FASE"
    revision: str = "A110B01A7670M7_F"
    build: str = "A7670M7_B01V01_240105"
    imei: str = "862771076818015"
    imsi: str = "460001234567890"
    iccid: str = "89860012345678901234"
    operator: str = "CHINA MOBILE"


@dataclass
class Timing:
    """Modem timings (ms). boot_ms: PWRKEY to *ATREADY (design brief: ~11 s to UART ready);
    the boot tail offsets follow the A7670E boot log (issue 299); sleep_entry_ms within the
    SIMCom sleep note's 10-20 s."""

    boot_ms: int = 11000
    cpin_after_ms: int = 1500
    pdn_after_ms: int = 3900
    sms_done_after_ms: int = 4500
    ims_pdn_after_ms: int = 5050
    pb_done_after_ms: int = 7900
    register_after_ms: int = 2500      # after the SIM is ready, when there is coverage
    power_off_ms: int = 2000
    sleep_entry_ms: int = 15000
    wake_ms: int = 50                  # DTR low to UART on
    netopen_ms: int = 800
    cipsend_ms: int = 300
    tx_ms: int = 1000                  # radio transmitting per datagram (energy)
    sms_send_ms: int = 2500
    dial_alert_ms: int = 1500
    early_media_ms: int = 2000
    network_no_answer_s: float = 60.0  # the network ends an unanswered call
    unreachable_s: float = 8.0         # length of the "cannot be reached" announcement
    ring_period_ms: int = 3000         # RING repeats for an incoming call
    ri_pulse_ms: int = 120


@dataclass
class _Call:
    number: str
    outgoing: bool
    callee: Callee | None
    stat: int                  # +CLCC stat: 0 active, 2 dialing, 3 alerting, 4 incoming, 6 ended
    begun_ms: int | None = None  # VOICE CALL: BEGIN (duration counts from it)
    answered: bool = False
    confirmed: bool = False    # the callee pressed a key
    epoch: int = 0             # timers of an ended call do nothing


@dataclass
class SentSms:
    at_ms: int
    pdu_hex: str | None        # PDU mode: SMSC + TPDU as hex
    number: str | None         # text mode destination
    text: str | None           # text mode body


@dataclass
class SentDatagram:
    at_ms: int
    host: str
    port: int
    payload: bytes


class ModemSim:
    """The simulated modem. See the module comment."""

    def __init__(self, *, identity: Identity | None = None, timing: Timing | None = None,
                 callees: dict[str, Callee] | None = None, coverage: bool = True,
                 seed: int = 0, utc_offset_quarters: int = 32, clock_unix_s: float = 1_780_000_000,
                 rssi: int = 20, early_media: bool = True, powered: bool = False,
                 sim: str = SIM_READY, sim_pin: str = "1234",
                 on_udp_send: Callable[[str, int, bytes], None] | None = None,
                 on_ri: Callable[[int], None] | None = None,
                 on_power: Callable[[str, int], None] | None = None) -> None:
        self.identity = identity or Identity()
        self.t = timing or Timing()
        self.callees = dict(callees or {})
        self.default_callee = Callee(NO_ANSWER)
        self.coverage = coverage
        if sim not in SIM_STATES:
            raise ValueError(f"sim {sim!r} is not one of {', '.join(SIM_STATES)}")
        self.sim = sim
        self.sim_pin = sim_pin
        self.phonebook: dict[int, tuple[str, int, str]] = {}   # index -> (number, type, text)
        self.rng = random.Random(seed)
        self.tz = utc_offset_quarters
        self.unix_at_zero = clock_unix_s   # network time at now_ms == 0
        self.rssi = rssi
        self.early_media = early_media
        self.on_udp_send = on_udp_send
        self.on_ri = on_ri
        self.on_power = on_power
        self.now = 0
        self._timers: list[tuple[int, int, int, Callable[[], None]]] = []
        self._seq = 0
        self._epoch = 0            # bumped at power-off: the timers of the last session lapse
        self._out = bytearray()
        self._in = bytearray()
        self.transcript: list[tuple[int, str, bytes]] = []   # (ms, "in"/"out", bytes)
        self.sent_sms: list[SentSms] = []
        self.spoken: list[tuple[int, str, str]] = []   # (ms it ended, to whom, the text) per TTS
        self.sent_datagrams: list[SentDatagram] = []
        self.stats = {"commands": 0, "unknown_commands": 0, "dropped_asleep": 0, "dropped_off": 0}
        self._power_state = ""
        self._reset_session()
        if powered:
            self._boot(immediate=True)
        else:
            self._set_power("off")

    # ---- session state -----------------------------------------------------------------------
    def _reset_session(self) -> None:
        self.on = False
        self.ready = False         # *ATREADY sent: the UART answers
        self.hung = False
        self.echo = True
        self.cmee = 0
        self.creg_n = 0
        self.cereg_n = 0
        self.cgreg_n = 0
        self.clcc_urc = False
        self.clip = False
        self.cvhu = 1              # A76xx default: ATH does not end voice calls
        self.ddet = False
        self.cdtam = 0             # TTS played: 0 local speaker, 1 the far end of the call
        self._tts_until: int | None = None   # the text being spoken ends then
        self.cmgf = 0
        self.cnmi_mt = 1
        self.csclk = 0
        self.cipsrip = 0
        self.ctzu = 0
        self.cscs = "IRA"
        self.cpbs = "SM"
        self.sim_ready = False
        self.sim_unlocked = False  # the right PIN was entered in this session
        self.registered = False
        self.net_open = False
        self.ip = None
        self.links: dict[int, int] = {}      # link -> local port
        self.call: _Call | None = None
        self.dtr = 0
        self.asleep = False
        self._held: list[bytes] = []
        self._last_uart_ms = self.now
        self._mode = "command"     # "command", "sms" (waiting for text + Ctrl-Z), "data" (n bytes)
        self._pending: tuple = ()
        self.storage: dict[int, tuple[str, str]] = {}   # index -> (status, PDU hex)
        self._tx_until = 0
        self._in.clear()

    # ---- clock and I/O -----------------------------------------------------------------------
    def receive(self, data: bytes, now_ms: int | None = None) -> None:
        """Bytes the card wrote to the modem's UART."""
        if now_ms is not None:
            self.advance(now_ms)
        if not data:
            return
        self.transcript.append((self.now, "in", bytes(data)))
        if not self.on or not self.ready or self.hung:
            self.stats["dropped_off"] += len(data)
            return
        if self.asleep:
            self.stats["dropped_asleep"] += len(data)
            return
        self._last_uart_ms = self.now
        self._schedule_sleep_check()
        self._in += data
        self._parse_input()

    def advance(self, now_ms: int) -> None:
        """Run everything due up to now_ms (virtual or real milliseconds)."""
        while self._timers and self._timers[0][0] <= now_ms:
            when, _, epoch, fn = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if epoch == self._epoch:
                fn()
        self.now = max(self.now, now_ms)
        if self._tx_until and self.now >= self._tx_until:
            self._tx_until = 0
            self._update_power()

    def next_deadline(self) -> int | None:
        while self._timers and self._timers[0][2] != self._epoch:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        if out:
            self.transcript.append((self.now, "out", out))
        return out

    def _after(self, ms: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (self.now + int(ms), self._seq, self._epoch, fn))

    def _write(self, data: bytes) -> None:
        self._out += data

    def _urc(self, line: str, raw: bytes = b"", ring: bool = False) -> None:
        """An unsolicited result code (plus raw bytes after it); held while asleep."""
        if not self.on or self.hung or not self.ready:
            return
        data = b"\r\n" + line.encode() + b"\r\n" + raw
        if ring:
            self._ri()
        if self.asleep:
            self._held.append(data)
            return
        self._write(data)

    def _ri(self) -> None:
        if self.on_ri is not None:
            self.on_ri(self.t.ri_pulse_ms)

    def _respond(self, lines: list[str] | tuple[str, ...] = (), final: str = "OK") -> None:
        out = b""
        if lines:
            out += b"\r\n" + "\r\n".join(lines).encode() + b"\r\n"
        if final:
            out += b"\r\n" + final.encode() + b"\r\n"
        self._write(out)

    def _error(self, cme: int | None = None, text: str = "") -> None:
        if cme is None or self.cmee == 0:
            self._respond(final="ERROR")
        elif self.cmee == 2 and text:
            self._respond(final=f"+CME ERROR: {text}")
        else:
            self._respond(final=f"+CME ERROR: {cme}")

    # ---- power -------------------------------------------------------------------------------
    def _set_power(self, state: str) -> None:
        if state != self._power_state:
            self._power_state = state
            if self.on_power is not None:
                self.on_power(state, self.now)

    @property
    def power_state(self) -> str:
        return self._power_state

    def _update_power(self) -> None:
        if not self.on:
            state = "off"
        elif not self.ready:
            state = "booting"
        elif self.call is not None:
            state = "call"
        elif self._tx_until:
            state = "tx"
        elif self.asleep:
            state = "sleep" if self.registered else "searching"   # no network: scanning
        else:
            state = "idle"
        self._set_power(state)

    def power_key(self, held_ms: int, now_ms: int | None = None) -> None:
        """PWRKEY held low for held_ms: >= 50 ms powers an off modem on; >= 2500 ms powers an
        on modem off (SIMCom A7670 hardware design manual, as cited in design.md)."""
        if now_ms is not None:
            self.advance(now_ms)
        if not self.on and held_ms >= 50:
            self._boot()
        elif self.on and held_ms >= 2500 and not self.hung:
            self._urc("NORMAL POWER DOWN")
            self._after(self.t.power_off_ms, self._power_down)

    def power_cut(self, now_ms: int | None = None) -> None:
        """The supply removed (a load switch, or the battery): off at once, settings lost."""
        if now_ms is not None:
            self.advance(now_ms)
        self._power_down()

    def _power_down(self) -> None:
        self._epoch += 1
        self._reset_session()
        self._set_power("off")

    def _boot(self, immediate: bool = False) -> None:
        self._epoch += 1
        self._reset_session()
        self.on = True
        self._set_power("booting")
        if immediate:
            self._ready()
        else:
            self._after(self.t.boot_ms, self._ready)

    def reboot(self, now_ms: int | None = None) -> None:
        """The modem restarts by itself (a brown-out): the boot URCs come again."""
        if now_ms is not None:
            self.advance(now_ms)
        self._boot()

    def hang(self, now_ms: int | None = None) -> None:
        """The modem stops answering (firmware lock-up): nothing comes out until its power is
        cycled (power_cut, or PWRKEY after a cut: a hung modem ignores PWRKEY off)."""
        if now_ms is not None:
            self.advance(now_ms)
        self.hung = True

    def _ready(self) -> None:
        self.ready = True
        self._last_uart_ms = self.now
        self._update_power()
        self._urc("*ATREADY: 1")
        self._after(self.t.cpin_after_ms, self._sim_up)
        self._schedule_sleep_check()

    def _sim_up(self) -> None:
        if self.sim == SIM_ABSENT:
            return
        if self.sim == SIM_PIN and not self.sim_unlocked:
            self._urc("+CPIN: SIM PIN")
            return
        self.sim_ready = True
        self._urc("+CPIN: READY")
        base = self.t.cpin_after_ms
        if self.coverage:
            self._after(self.t.pdn_after_ms - base, lambda: self.coverage and self._urc("+CGEV: EPS PDN ACT 1"))
        self._after(self.t.sms_done_after_ms - base, lambda: self._urc("SMS DONE"))
        if self.coverage:
            self._after(self.t.ims_pdn_after_ms - base,
                        lambda: self.coverage and self._urc("+CGEV: ME PDN ACT 8,1"))
        self._after(self.t.pb_done_after_ms - base, lambda: self._urc("PB DONE"))
        if self.coverage:
            self._after(self.t.register_after_ms, self._register)

    def _register(self) -> None:
        if not self.coverage or self.registered:
            return
        self.registered = True
        self._reg_urcs(1)

    def _reg_urcs(self, stat: int) -> None:
        if self.creg_n:
            self._urc(f"+CREG: {stat}")
        if self.cereg_n:
            self._urc(f"+CEREG: {stat}")
        if self.cgreg_n:
            self._urc(f"+CGREG: {stat}")

    # ---- DTR and sleep -----------------------------------------------------------------------
    def set_dtr(self, level: int, now_ms: int | None = None) -> None:
        """The DTR line (a pty has none: a control call). High lets the modem sleep after
        AT+CSCLK=1; low wakes it and keeps it awake."""
        if now_ms is not None:
            self.advance(now_ms)
        self.dtr = 1 if level else 0
        if self.dtr:
            self._schedule_sleep_check()
        elif self.asleep:
            self._after(self.t.wake_ms, self._wake)

    def _wake(self) -> None:
        if not self.asleep or self.dtr:
            return
        self.asleep = False
        self._last_uart_ms = self.now
        held, self._held = self._held, []
        for data in held:
            self._write(data)
        self._update_power()

    def _schedule_sleep_check(self) -> None:
        if self.csclk == 1 and self.dtr and not self.asleep:
            self._after(self.t.sleep_entry_ms, self._sleep_check)

    def _sleep_check(self) -> None:
        if (self.on and self.ready and not self.hung and self.csclk == 1 and self.dtr
                and not self.asleep and self.call is None and self._mode == "command"
                and self.now - self._last_uart_ms >= self.t.sleep_entry_ms):
            self.asleep = True
            self._update_power()

    # ---- the world ---------------------------------------------------------------------------
    def set_coverage(self, up: bool, now_ms: int | None = None) -> None:
        """Coverage lost or back. Lost: the PDN context drops, sockets close, a call fails."""
        if now_ms is not None:
            self.advance(now_ms)
        if up == self.coverage:
            return
        self.coverage = up
        if not self.on or not self.sim_ready:
            return
        if not up:
            self.registered = False
            if self.call is not None:
                self._end_call(cause="NO CARRIER")
            if self.net_open:
                self.net_open = False
                self.links.clear()
                self._urc("+CGEV: NW PDN DEACT 1")
            self._reg_urcs(2)
        else:
            self._after(self.t.register_after_ms, self._register)

    def incoming_call(self, number: str, ring_for_s: float = 30.0, talk_s: float = 60.0,
                      now_ms: int | None = None) -> bool:
        """A call from `number`: it rings for ring_for_s (then the caller gives up: a missed
        call) or, once answered with ATA, lasts talk_s. False when the card cannot be reached
        (off, no coverage, busy)."""
        if now_ms is not None:
            self.advance(now_ms)
        if not (self.on and self.ready and self.registered and not self.hung) or self.call is not None:
            return False
        call = _Call(number, outgoing=False, callee=Callee(ANSWERS, talk_s=talk_s), stat=4)
        self.call = call
        call.epoch = self._seq
        self._update_power()
        self._clcc(call)
        self._ring(call, ring_for_s * 1000)
        self._after(ring_for_s * 1000, lambda: self._caller_gives_up(call))
        return True

    def _ring(self, call: _Call, left_ms: float) -> None:
        if self.call is not call or call.answered or left_ms <= 0:
            return
        self._urc("RING", ring=True)
        if self.clip:
            self._urc(f'+CLIP: "{call.number}",{_toa(call.number)},"",0,"",0')
        self._after(self.t.ring_period_ms, lambda: self._ring(call, left_ms - self.t.ring_period_ms))

    def _caller_gives_up(self, call: _Call) -> None:
        if self.call is not call or call.answered:
            return
        call.stat = 6
        self._clcc(call)
        self.call = None
        self._update_power()
        local = self._local_time()
        self._urc(f"MISSED_CALL: {local[11:16]} {call.number}")
        self._urc("NO CARRIER")

    def incoming_sms(self, sender: str, text: str, now_ms: int | None = None) -> list[int]:
        """An SMS from `sender` (one entry per part): stored on the SIM, announced with +CMTI
        (AT+CNMI=2,1). Returns the storage indexes; [] when the card cannot be reached."""
        if now_ms is not None:
            self.advance(now_ms)
        if not (self.on and self.ready and self.registered and not self.hung):
            return []
        unix = int(self._unix_now())
        indexes = []
        for _length, pdu in fwlib.smspdu().encode_deliver(sender, text, unix, self.tz,
                                                          smsc="+8613800250500"):
            index = 0
            while index in self.storage:
                index += 1
            self.storage[index] = ("REC UNREAD", pdu.decode())
            indexes.append(index)
            self._urc(f'+CMTI: "SM",{index}', ring=True)
        return indexes

    def deliver_udp(self, host: str, port: int, payload: bytes, now_ms: int | None = None) -> bool:
        """A datagram from the network for the card's open socket; False when it cannot arrive
        (no bearer, no socket)."""
        if now_ms is not None:
            self.advance(now_ms)
        if not (self.on and self.ready and self.net_open and self.links and not self.hung):
            return False
        head = f"RECV FROM:{host}:{port}" if self.cipsrip else ""
        if head:
            self._urc(head, ring=True)
            self._urc_raw(f"+IPD{len(payload)}".encode() + b"\r\n" + payload)
        else:
            self._urc(f"+IPD{len(payload)}", raw=payload, ring=True)
        return True

    def _urc_raw(self, data: bytes) -> None:
        if self.asleep:
            self._held.append(data)
        else:
            self._write(data)

    # ---- time --------------------------------------------------------------------------------
    def _unix_now(self) -> float:
        return self.unix_at_zero + self.now / 1000

    def _local_time(self) -> str:
        import time as _time

        local = _time.gmtime(int(self._unix_now()) + self.tz * 900)
        return _time.strftime("%y/%m/%d,%H:%M:%S", local)

    # ---- input parsing -----------------------------------------------------------------------
    def _parse_input(self) -> None:
        while self._in:
            if self._mode == "data":
                need = self._pending[0]
                if len(self._in) < need:
                    return
                payload = bytes(self._in[:need])
                del self._in[:need]
                self._mode = "command"
                self._cipsend_payload(payload)
                continue
            if self._mode == "sms":
                end = -1
                for i, byte in enumerate(self._in):
                    if byte in (CTRL_Z, ESC):
                        end = i
                        break
                if end < 0:
                    return
                body = bytes(self._in[:end])
                cancelled = self._in[end] == ESC
                del self._in[:end + 1]
                self._mode = "command"
                if self.echo:
                    self._write(body)
                if cancelled:
                    self._respond(final="OK")
                else:
                    self._sms_body(body)
                continue
            cr = self._in.find(b"\r")
            if cr < 0:
                if len(self._in) > 1024:
                    self._in.clear()   # no line end in 1 KB: garbage, as a modem's buffer would
                return
            raw = bytes(self._in[:cr])
            del self._in[:cr + 1]
            if self._in[:1] == b"\n":
                del self._in[:1]
            if self.echo:
                self._write(raw + b"\r")
            line = raw.decode("latin-1").strip()
            start = line.upper().find("AT")
            if start > 0:
                line = line[start:]   # a modem discards what comes before "AT" (ESC, noise)
            if not line:
                continue
            self._command(line)

    def _command(self, line: str) -> None:
        self.stats["commands"] += 1
        upper = line.upper()
        if not upper.startswith("AT"):
            self._respond(final="ERROR")
            return
        body = line[2:]
        head = upper[2:]
        if head == "":
            self._respond()
            return
        if head[0] in "+*^$&":
            name, _, rest = _split_extended(body)
            self._extended(name.upper(), rest)
            return
        self._basic(head, body)

    def _basic(self, head: str, body: str) -> None:
        if head in ("E0", "E1"):
            self.echo = head == "E1"
            self._respond()
        elif head in ("Z", "Z0", "&F", "&F0"):
            self.echo = True
            self.cmee = 0
            self._respond()
        elif head == "I" or head == "I0":
            ident = self.identity
            self._respond([f"Manufacturer: {ident.manufacturer}", f"Model: {ident.model}",
                           f"Revision: {ident.revision}", f"IMEI: {ident.imei}",
                           "+GCAP: +CGSM,+FCLASS,+DS"])
        elif head.startswith("D"):
            self._dial(body[1:])
        elif head == "A":
            self._answer()
        elif head in ("H", "H0"):
            if self.call is not None and self.cvhu == 0:
                self._respond()
                self._end_call(cause="local")
            else:
                self._respond()   # OK, and (AT+CVHU=1) the voice call goes on
        elif head in ("V1", "Q0", "X4", "&W", "&D1", "&D2", "&C1"):
            self._respond()
        else:
            self.stats["unknown_commands"] += 1
            self._respond(final="ERROR")

    def _extended(self, name: str, rest: str) -> None:
        handler = getattr(self, "_cmd_" + name[1:].replace("+", "_"), None) if name[0] == "+" else None
        if name == "*SIMCOMATI" or name == "+SIMCOMATI":
            ident = self.identity
            self._respond([f"Manufacturer: {ident.manufacturer}", f"Model: {ident.model}",
                           f"Revision: {ident.revision}", ident.build, "QCN: ",
                           f"IMEI: {ident.imei}", "MEID: ", "+GCAP: +CGSM,+FCLASS,+DS",
                           "DeviceInfo: "])
            return
        if handler is None:
            self.stats["unknown_commands"] += 1
            self._respond(final="ERROR")
            return
        handler(rest)

    # ---- simple settings ---------------------------------------------------------------------
    def _setting(self, rest: str, name: str, allowed: tuple[int, ...], attr: str) -> None:
        if rest == "?":
            self._respond([f"{name}: {getattr(self, attr)}"])
        elif rest == "=?":
            self._respond([f"{name}: ({','.join(str(a) for a in allowed)})"])
        elif rest.startswith("="):
            try:
                value = int(rest[1:].split(",")[0])
            except ValueError:
                self._error(53, "parameter invalid")
                return
            if value not in allowed:
                self._error(53, "parameter invalid")
                return
            setattr(self, attr, value)
            self._respond()
        else:
            self._error(53, "parameter invalid")

    def _cmd_CMEE(self, rest: str) -> None:
        self._setting(rest, "+CMEE", (0, 1, 2), "cmee")

    def _cmd_CVHU(self, rest: str) -> None:
        self._setting(rest, "+CVHU", (0, 1), "cvhu")

    def _cmd_CMGF(self, rest: str) -> None:
        self._setting(rest, "+CMGF", (0, 1), "cmgf")

    def _cmd_CSCLK(self, rest: str) -> None:
        self._setting(rest, "+CSCLK", (0, 1, 2), "csclk")
        self._schedule_sleep_check()

    def _cmd_CIPSRIP(self, rest: str) -> None:
        self._setting(rest, "+CIPSRIP", (0, 1), "cipsrip")

    def _cmd_CTZU(self, rest: str) -> None:
        self._setting(rest, "+CTZU", (0, 1), "ctzu")

    def _cmd_DDET(self, rest: str) -> None:
        if rest.startswith("="):
            self.ddet = rest[1:].split(",")[0].strip() == "1"
            self._respond()
        elif rest == "?":
            self._respond([f"+DDET: {int(self.ddet)}"])
        else:
            self._respond(["+DDET: (0,1)"])

    def _cmd_CDTAM(self, rest: str) -> None:
        self._setting(rest, "+CDTAM", (0, 1), "cdtam")

    def _cmd_CTTS(self, rest: str) -> None:
        if rest == "?":
            self._respond([f"+CTTS: {6 if self._tts_until is not None else 0}"])
            return
        if not rest.startswith("="):
            self._respond()
            return
        mode, _, arg = rest[1:].partition(",")
        if mode.strip() == "0":
            self._tts_until = None
            self._respond()
            return
        hexed = arg.strip().strip('"')
        if mode.strip() != "1" or not hexed or len(hexed) % 4:
            self._error(4, "operation not supported")
            return
        try:
            text = bytes.fromhex(hexed).decode("utf-16-be")
        except ValueError:
            self._error(4, "operation not supported")
            return
        self._respond()
        end = self.now + 250 * len(text)
        self._tts_until = end
        call = self.call
        to = call.number if call is not None and self.cdtam == 1 else "local"

        def done() -> None:
            if self._tts_until == end:
                self._tts_until = None
                self.spoken.append((self.now, to, text))
                self._urc("+CTTS: 0")
                if call is not None and self.call is call and call.answered and to != "local":
                    callee = call.callee
                    if callee is not None and callee.kind == CONFIRMS and not call.confirmed:
                        self._after(callee.key_after_s * 1000, lambda: self._dtmf(call, callee.key))

        self._after(250 * len(text), done)

    def _cmd_CLIP(self, rest: str) -> None:
        if rest.startswith("="):
            self.clip = rest[1:].strip() == "1"
            self._respond()
        else:
            self._respond([f"+CLIP: {int(self.clip)},1"])

    def _cmd_CRC(self, rest: str) -> None:
        self._respond()

    def _cmd_CNMI(self, rest: str) -> None:
        if rest.startswith("="):
            parts = rest[1:].split(",")
            if len(parts) > 1 and parts[1].strip().isdigit():
                self.cnmi_mt = int(parts[1])
            self._respond()
        else:
            self._respond([f"+CNMI: 2,{self.cnmi_mt},0,0,0"])

    def _cmd_CSMP(self, rest: str) -> None:
        self._respond(["+CSMP: 17,167,0,0"] if rest == "?" else ())

    def _cmd_CSCS(self, rest: str) -> None:
        if rest == "=?":
            self._respond(['+CSCS: ("IRA","GSM","UCS2")'])
        elif rest == "?":
            self._respond([f'+CSCS: "{self.cscs}"'])
        elif rest.startswith("=") and rest[1:].strip().strip('"').upper() in ("IRA", "GSM", "UCS2"):
            self.cscs = rest[1:].strip().strip('"').upper()
            self._respond()
        else:
            self._error(53, "parameter invalid")

    def _cmd_CPMS(self, rest: str) -> None:
        used = len(self.storage)
        if rest == "=?":
            self._respond(['+CPMS: ("SM","ME","SM_P","ME_P","MT"),("SM","ME","SM_P","ME_P","MT"),'
                           '("SM","ME","SM_P","ME_P","MT")'])
        elif rest == "?":
            self._respond([f'+CPMS: "SM",{used},30,"SM",{used},30,"SM",{used},30'])
        else:
            self._respond([f"+CPMS: {used},30,{used},30,{used},30"])

    def _cmd_CSCA(self, rest: str) -> None:
        self._respond(['+CSCA: "+8613800250500",145'] if rest == "?" else ())

    def _cmd_CFUN(self, rest: str) -> None:
        self._respond(["+CFUN: 1"] if rest == "?" else ())

    def _cmd_COPS(self, rest: str) -> None:
        if rest == "?":
            if self.registered:
                self._respond([f'+COPS: 0,0,"{self.identity.operator}",7'])
            else:
                self._respond(["+COPS: 0"])
        else:
            self._respond()

    def _cmd_CLAC(self, rest: str) -> None:
        names = ["AT+CGMI", "AT+CGMM", "AT+CGMR", "AT+CGSN", "AT+CIMI", "AT+CICCID", "AT+CPIN",
                 "AT+CSQ", "AT+CREG", "AT+CEREG", "AT+CGREG", "AT+COPS", "AT+CCLK", "AT+CLCC",
                 "AT+CHUP", "AT+CVHU", "AT+CLIP", "AT+DDET", "AT+VTS", "AT+CMGF", "AT+CMGS",
                 "AT+CMGR", "AT+CMGD", "AT+CMGL", "AT+CNMI", "AT+CPMS", "AT+CSCA", "AT+CSMP",
                 "AT+CSCS", "AT+CSCLK", "AT+NETOPEN", "AT+NETCLOSE", "AT+IPADDR", "AT+CIPOPEN",
                 "AT+CIPSEND", "AT+CIPCLOSE", "AT+CIPSRIP", "AT+CTZU", "AT+CFUN", "AT+CMEE"]
        self._respond(names)

    def _cmd_VTS(self, rest: str) -> None:
        if self.call is None:
            self._error(3, "operation not allowed")
        else:
            self._respond()

    # ---- identity ----------------------------------------------------------------------------
    def _cmd_CGMI(self, rest: str) -> None:
        self._respond([self.identity.manufacturer])

    def _cmd_GMI(self, rest: str) -> None:
        self._cmd_CGMI(rest)

    def _cmd_CGMM(self, rest: str) -> None:
        self._respond([self.identity.model])

    def _cmd_GMM(self, rest: str) -> None:
        self._cmd_CGMM(rest)

    def _cmd_CGMR(self, rest: str) -> None:
        self._respond([f"+CGMR: {self.identity.revision}"])

    def _cmd_GMR(self, rest: str) -> None:
        self._cmd_CGMR(rest)

    def _cmd_CGSN(self, rest: str) -> None:
        self._respond([self.identity.imei])

    def _cmd_GSN(self, rest: str) -> None:
        self._cmd_CGSN(rest)

    def _sim_error(self) -> bool:
        """Answer a command that needs the SIM with the error of its state; True when it did."""
        if self.sim == SIM_ABSENT and self.on:
            self._error(10, "SIM not inserted")
        elif self.sim == SIM_PIN and not self.sim_unlocked:
            self._error(11, "SIM PIN required")
        elif not self.sim_ready:
            self._error(14, "SIM busy")
        else:
            return False
        return True

    def _cmd_CIMI(self, rest: str) -> None:
        if not self.sim_ready:
            self._error(14, "SIM busy")
        else:
            self._respond([self.identity.imsi])

    def _cmd_CICCID(self, rest: str) -> None:
        if self.sim == SIM_PIN and not self.sim_ready and self.ready:
            # EF_ICCID is readable without the PIN
            self._respond([f"+ICCID: {self.identity.iccid}"])
        elif self._sim_error():
            return
        else:
            self._respond([f"+ICCID: {self.identity.iccid}"])

    def _cmd_CCID(self, rest: str) -> None:
        self._cmd_CICCID(rest)

    # ---- SIM, signal, registration, time ----------------------------------------------------
    def _cmd_CPIN(self, rest: str) -> None:
        locked = self.sim == SIM_PIN and not self.sim_unlocked
        if rest == "?":
            if self.sim_ready:
                self._respond(["+CPIN: READY"])
            elif locked and self.ready:
                self._respond(["+CPIN: SIM PIN"])
            elif self._sim_error():
                return
        elif rest.startswith("=") and locked:
            if rest[1:].split(",")[0].strip().strip('"') == self.sim_pin:
                self.sim_unlocked = True
                self._respond()
                self._sim_up()
            else:
                self._error(16, "incorrect password")
        elif rest.startswith("=") and self._sim_error():
            return
        else:
            self._respond()

    # ---- the SIM phonebook -------------------------------------------------------------------
    def _cmd_CPBS(self, rest: str) -> None:
        if rest == "?":
            if not self._sim_error():
                self._respond([f'+CPBS: "{self.cpbs}",{len(self.phonebook)},{PHONEBOOK_SIZE}'])
        elif rest == "=?":
            self._respond(['+CPBS: ("SM","FD","ON","LD","MC","RC","EN")'])
        elif rest.startswith("=") and rest[1:].strip().strip('"').upper() == "SM":
            self.cpbs = "SM"
            self._respond()
        else:
            self._error(53, "parameter invalid")   # only the SIM's own phonebook here

    def _pb_text_in(self, text: str) -> str | None:
        """<text> as the TE sent it (+CSCS) -> str; None when it is not valid in that set."""
        if self.cscs != "UCS2":
            return text
        if len(text) % 4 or any(c not in "0123456789ABCDEFabcdef" for c in text):
            return None
        return bytes.fromhex(text).decode("utf-16-be", "replace")

    def _pb_text_out(self, text: str) -> str:
        return text.encode("utf-16-be").hex().upper() if self.cscs == "UCS2" else text

    @staticmethod
    def _pb_stored_bytes(text: str) -> int:
        # GSM default alphabet: a byte a character (ASCII here); else UCS-2: 0x80 + 2 a character
        return len(text) if text.isascii() else 1 + 2 * len(text)

    def _cmd_CPBW(self, rest: str) -> None:
        if rest == "=?":
            self._respond([f"+CPBW: (1-{PHONEBOOK_SIZE}),{PHONEBOOK_NLENGTH},(129,145,161),"
                           f"{PHONEBOOK_TLENGTH}"])
            return
        if not rest.startswith("=") or self._sim_error():
            if not rest.startswith("="):
                self._error(53, "parameter invalid")
            return
        args = _split_args(rest[1:])
        try:
            index = int(args[0])
        except (ValueError, IndexError):
            self._error(21, "invalid index")
            return
        if not 1 <= index <= PHONEBOOK_SIZE:
            self._error(21, "invalid index")
            return
        if len(args) == 1:
            self.phonebook.pop(index, None)
            self._respond()
            return
        number = args[1]
        kind = 145 if number.startswith("+") else 129
        if len(args) > 2 and args[2]:
            try:
                kind = int(args[2])
            except ValueError:
                self._error(53, "parameter invalid")
                return
        text = self._pb_text_in(args[3]) if len(args) > 3 else ""
        if not number or any(c not in "0123456789*#+" for c in number) or text is None:
            self._error(25, "invalid characters in text string")
        elif len(number.lstrip("+")) > PHONEBOOK_NLENGTH:
            self._error(26, "dial string too long")
        elif self._pb_stored_bytes(text) > PHONEBOOK_TLENGTH:
            self._error(24, "text string too long")
        else:
            self.phonebook[index] = (number, kind, text)
            self._respond()

    def _cmd_CPBR(self, rest: str) -> None:
        if rest == "=?":
            self._respond([f"+CPBR: (1-{PHONEBOOK_SIZE}),{PHONEBOOK_NLENGTH},{PHONEBOOK_TLENGTH}"])
            return
        if not rest.startswith("=") or self._sim_error():
            if not rest.startswith("="):
                self._error(53, "parameter invalid")
            return
        try:
            bounds = [int(a) for a in rest[1:].split(",")]
        except ValueError:
            self._error(21, "invalid index")
            return
        first, last = bounds[0], bounds[-1]
        if not 1 <= first <= last <= PHONEBOOK_SIZE or len(bounds) > 2:
            self._error(21, "invalid index")
            return
        lines = [f'+CPBR: {i},"{n}",{k},"{self._pb_text_out(t)}"'
                 for i, (n, k, t) in sorted(self.phonebook.items()) if first <= i <= last]
        self._respond(lines)

    def _cmd_CSQ(self, rest: str) -> None:
        rssi = self.rssi if self.coverage else 99
        self._respond([f"+CSQ: {rssi},99"])

    def _reg(self, rest: str, name: str, attr: str) -> None:
        if rest == "?":
            stat = 1 if self.registered else (2 if self.sim_ready else 0)
            self._respond([f"{name}: {getattr(self, attr)},{stat}"])
        elif rest == "=?":
            self._respond([f"{name}: (0-2)"])
        elif rest.startswith("="):
            self._setting(rest, name, (0, 1, 2), attr)
        else:
            self._error(53, "parameter invalid")

    def _cmd_CREG(self, rest: str) -> None:
        self._reg(rest, "+CREG", "creg_n")

    def _cmd_CEREG(self, rest: str) -> None:
        self._reg(rest, "+CEREG", "cereg_n")

    def _cmd_CGREG(self, rest: str) -> None:
        self._reg(rest, "+CGREG", "cgreg_n")

    def _cmd_CCLK(self, rest: str) -> None:
        if rest != "?":
            self._respond()
            return
        if not self.registered and self.sim_ready is False:
            self._respond(['+CCLK: "70/01/01,00:00:00+00"'])
            return
        sign = "+" if self.tz >= 0 else "-"
        self._respond([f'+CCLK: "{self._local_time()}{sign}{abs(self.tz):02d}"'])

    # ---- voice -------------------------------------------------------------------------------
    def _clcc(self, call: _Call) -> None:
        if self.clcc_urc:
            self._urc(self._clcc_line(call))

    @staticmethod
    def _clcc_line(call: _Call) -> str:
        return (f'+CLCC: 1,{0 if call.outgoing else 1},{call.stat},0,0,"{call.number}",'
                f"{_toa(call.number)}")

    def _cmd_CLCC(self, rest: str) -> None:
        if rest.startswith("="):
            self.clcc_urc = rest[1:].strip() == "1"
            self._respond()
        elif rest == "?":
            self._respond([f"+CLCC: {int(self.clcc_urc)}"])
        else:
            self._respond([self._clcc_line(self.call)] if self.call is not None else ())

    def _dial(self, rest: str) -> None:
        number = rest.strip()
        if not number.endswith(";"):
            self._respond(final="NO CARRIER")   # data calls: not on this card
            return
        number = number[:-1]
        if not self.registered:
            self._respond(final="NO CARRIER")
            return
        if self.call is not None:
            self._error(3, "operation not allowed")
            return
        callee = self.callees.get(number, self.default_callee)
        call = _Call(number, outgoing=True, callee=callee, stat=2)
        self.call = call
        self._update_power()
        self._respond()
        self._clcc(call)
        self._after(self.t.dial_alert_ms, lambda: self._alerting(call))

    def _alerting(self, call: _Call) -> None:
        if self.call is not call:
            return
        callee = call.callee
        assert callee is not None
        if callee.kind == BUSY:
            self._after(1500, lambda: self._end_call(call, cause="BUSY"))
            return
        call.stat = 3
        self._clcc(call)
        if callee.kind == UNREACHABLE or self.early_media:
            # ring-back or an announcement as early media: the modem says "connected" now
            self._after(self.t.early_media_ms - self.t.dial_alert_ms, lambda: self._begin(call))
        if callee.kind == UNREACHABLE:
            self._after(self.t.unreachable_s * 1000, lambda: self._end_call(call, cause="NO CARRIER"))
        elif callee.kind == NO_ANSWER:
            self._after(self.t.network_no_answer_s * 1000, lambda: self._end_call(call, cause="NO CARRIER"))
        elif callee.kind == REJECTS:
            self._after(callee.ring_s * 1000, lambda: self._end_call(call, cause="NO CARRIER"))
        else:
            self._after(callee.ring_s * 1000, lambda: self._callee_answers(call))

    def _begin(self, call: _Call) -> None:
        if self.call is not call or call.begun_ms is not None:
            return
        call.begun_ms = self.now
        call.stat = 0
        self._urc("VOICE CALL: BEGIN")
        self._clcc(call)

    def _callee_answers(self, call: _Call) -> None:
        if self.call is not call:
            return
        call.answered = True
        self._begin(call)   # without early media, this is when the modem says so
        callee = call.callee
        assert callee is not None
        if callee.kind == CONFIRMS:
            self._after(callee.key_after_s * 1000, lambda: self._dtmf_unless_prompted(call, callee.key))
        if callee.talk_s:
            self._after(callee.talk_s * 1000, lambda: self._end_call(call, cause="NO CARRIER"))

    def _dtmf_unless_prompted(self, call: _Call, key: str) -> None:
        # a prompt being spoken to the callee: the key comes after it (_cmd_CTTS)
        if self._tts_until is None or self.cdtam != 1:
            self._dtmf(call, key)

    def _dtmf(self, call: _Call, key: str) -> None:
        if self.call is call and self.ddet and not call.confirmed:
            call.confirmed = True
            self._urc(f"+RXDTMF: {key}")

    def _answer(self) -> None:
        call = self.call
        if call is None or call.outgoing or call.answered:
            self._respond(final="NO CARRIER")
            return
        call.answered = True
        self._respond()
        self._begin(call)
        callee = call.callee
        if callee is not None and callee.talk_s:
            self._after(callee.talk_s * 1000, lambda: self._end_call(call, cause="NO CARRIER"))

    def _cmd_CHUP(self, rest: str) -> None:
        self._respond()
        if self.call is not None:
            self._end_call(cause="local")

    def _end_call(self, call: _Call | None = None, cause: str = "NO CARRIER") -> None:
        call = call or self.call
        if call is None or self.call is not call:
            return
        self.call = None
        call.stat = 6
        self._clcc(call)
        if cause == "BUSY":
            self._urc("BUSY")
        elif cause != "local" or call.begun_ms is None:
            self._urc("NO CARRIER")
        if call.begun_ms is not None:
            seconds = (self.now - call.begun_ms) // 1000
            if self.rng.random() < 0.25:
                self._urc(f"VOICE CALL:END:{seconds:06d}")   # the A7672SA's other spelling
            else:
                self._urc(f"VOICE CALL: END: {seconds:06d}")
        self._update_power()

    # ---- SMS ---------------------------------------------------------------------------------
    def _cmd_CMGS(self, rest: str) -> None:
        if not rest.startswith("="):
            self._error(302, "operation not allowed")
            return
        arg = rest[1:].strip()
        if self.cmgf == 0:
            try:
                length = int(arg)
            except ValueError:
                self._respond(final="+CMS ERROR: 304")
                return
            self._pending = ("pdu", length)
        else:
            self._pending = ("text", arg.split(",")[0].strip('"'))
        self._mode = "sms"
        self._write(b"\r\n> ")

    def _sms_body(self, body: bytes) -> None:
        kind, arg = self._pending
        text = body.decode("latin-1").strip()
        if kind == "pdu":
            try:
                octets = bytes.fromhex(text)
            except ValueError:
                self._respond(final="+CMS ERROR: 304")
                return
            if not octets or len(octets) < arg or len(octets) - octets[0] - 1 != arg:
                self._respond(final="+CMS ERROR: 304")
                return
            record = SentSms(self.now, text.upper(), None, None)
        else:
            record = SentSms(self.now, None, arg, body.decode("utf-8", "replace"))
        if not self.registered:
            self._after(self.t.sms_send_ms, lambda: self._respond(final="+CMS ERROR: 331"))
            return
        self.sent_sms.append(record)
        mr = len(self.sent_sms) % 256
        self._tx_until = self.now + self.t.sms_send_ms
        self._update_power()
        self._after(self.t.sms_send_ms, lambda: self._respond([f"+CMGS: {mr}"]))

    def _cmd_CMGR(self, rest: str) -> None:
        try:
            index = int(rest.lstrip("=").strip())
        except ValueError:
            self._respond(final="+CMS ERROR: 321")
            return
        entry = self.storage.get(index)
        if entry is None:
            self._respond(final="+CMS ERROR: 321")
            return
        status, pdu = entry
        stat = 0 if status == "REC UNREAD" else 1
        self.storage[index] = ("REC READ", pdu)
        tpdu_len = len(pdu) // 2 - int(pdu[:2], 16) - 1
        self._respond([f"+CMGR: {stat},,{tpdu_len}", pdu])

    def _cmd_CMGD(self, rest: str) -> None:
        parts = rest.lstrip("=").split(",")
        try:
            index = int(parts[0])
            flag = int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            self._respond(final="+CMS ERROR: 321")
            return
        if flag >= 1:
            keep = {"REC UNREAD"} if flag == 1 else set()
            self.storage = {i: e for i, e in self.storage.items() if e[0] in keep and flag < 4}
        else:
            self.storage.pop(index, None)
        self._respond()

    def _cmd_CMGL(self, rest: str) -> None:
        lines = []
        for index in sorted(self.storage):
            status, pdu = self.storage[index]
            stat = 0 if status == "REC UNREAD" else 1
            tpdu_len = len(pdu) // 2 - int(pdu[:2], 16) - 1
            lines += [f"+CMGL: {index},{stat},,{tpdu_len}", pdu]
        self._respond(lines)

    # ---- packet data -------------------------------------------------------------------------
    def _cmd_CGDCONT(self, rest: str) -> None:
        self._respond(['+CGDCONT: 1,"IP","cmnet","0.0.0.0",0,0,0,0'] if rest == "?" else ())

    def _cmd_CGACT(self, rest: str) -> None:
        self._respond([f"+CGACT: 1,{int(self.net_open)}"] if rest == "?" else ())

    def _cmd_CGATT(self, rest: str) -> None:
        self._respond([f"+CGATT: {int(self.registered)}"] if rest == "?" else ())

    def _cmd_NETOPEN(self, rest: str) -> None:
        if rest == "?":
            self._respond([f"+NETOPEN: {int(self.net_open)}"])
            return
        if self.net_open:
            self._respond(["+IP ERROR: Network is already opened"], final="ERROR")
            return
        self._respond()

        def opened() -> None:
            if self.registered:
                self.net_open = True
                self.ip = "10.%d.%d.%d" % (self.rng.randrange(256), self.rng.randrange(256),
                                           self.rng.randrange(1, 255))
                self._urc("+NETOPEN: 0")
            else:
                self._urc("+NETOPEN: 1")
        self._after(self.t.netopen_ms, opened)

    def _cmd_NETCLOSE(self, rest: str) -> None:
        if not self.net_open:
            self._respond(["+NETCLOSE: 2"], final="ERROR")
            return
        self.net_open = False
        self.links.clear()
        self._respond()
        self._urc("+NETCLOSE: 0")

    def _cmd_IPADDR(self, rest: str) -> None:
        if not self.net_open:
            self._respond(["+IP ERROR: Network not opened"], final="ERROR")
        else:
            self._respond([f"+IPADDR: {self.ip}"])

    def _cmd_CIPOPEN(self, rest: str) -> None:
        parts = [p.strip().strip('"') for p in rest.lstrip("=").split(",")]
        try:
            link = int(parts[0])
        except ValueError:
            self._respond(final="ERROR")
            return
        if not self.net_open:
            self._respond([f"+CIPOPEN: {link},1"], final="ERROR")   # "network failure"
            return
        if link in self.links:
            self._respond([f"+CIPOPEN: {link},4"], final="ERROR")
            return
        if len(parts) < 2 or parts[1].upper() != "UDP":
            self._respond([f"+CIPOPEN: {link},3"], final="ERROR")
            return
        port = int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else 0
        self.links[link] = port
        self._respond()
        self._urc(f"+CIPOPEN: {link},0")

    def _cmd_CIPCLOSE(self, rest: str) -> None:
        try:
            link = int(rest.lstrip("=").strip())
        except ValueError:
            self._respond(final="ERROR")
            return
        if self.links.pop(link, None) is None:
            self._respond([f"+CIPCLOSE: {link},4"], final="ERROR")
            return
        self._respond()
        self._urc(f"+CIPCLOSE: {link},0")

    def _tx_end(self) -> None:
        # a timer, so a clock that jumps from deadline to deadline stops where TX ends
        if self._tx_until and self.now >= self._tx_until:
            self._tx_until = 0
            self._update_power()

    def _cmd_CIPSEND(self, rest: str) -> None:
        parts = [p.strip().strip('"') for p in rest.lstrip("=").split(",")]
        try:
            link, length = int(parts[0]), int(parts[1])
            host, port = parts[2], int(parts[3])
        except (ValueError, IndexError):
            self._respond(final="ERROR")
            return
        if link not in self.links or not self.net_open or not (1 <= length <= 1500):
            self._respond(final="ERROR")
            return
        self._pending = (length, link, host, port)
        self._mode = "data"
        self._write(b"\r\n> ")

    def _cipsend_payload(self, payload: bytes) -> None:
        _, link, host, port = self._pending
        self._respond()
        self._tx_until = self.now + self.t.tx_ms
        self._update_power()
        self._after(self.t.tx_ms, self._tx_end)

        def sent() -> None:
            if link in self.links and self.net_open:
                self.sent_datagrams.append(SentDatagram(self.now, host, port, payload))
                if self.on_udp_send is not None:
                    self.on_udp_send(host, port, payload)
                self._urc(f"+CIPSEND: {link},{len(payload)},{len(payload)}")
            else:
                self._urc(f"+CIPSEND: {link},{len(payload)},-1")
        self._after(self.t.cipsend_ms, sent)


def _split_args(text: str) -> list[str]:
    """'1,"+86138",145,"4E00"' -> ['1', '+86138', '145', '4E00'] (quotes removed)."""
    items: list[str] = []
    current = ""
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    items.append(current.strip())
    return items


def _toa(number: str) -> int:
    return 145 if number.startswith("+") else 129


def _split_extended(body: str) -> tuple[str, str, str]:
    """'+CREG?' -> ('+CREG', '', '?'); '+CMGS=24' -> ('+CMGS', '', '=24')."""
    for i, ch in enumerate(body):
        if ch in "=?" and i > 0:
            return body[:i], "", body[i:]
    return body, "", ""
