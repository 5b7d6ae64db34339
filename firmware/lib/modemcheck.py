# Factory checks of the card's modem through the card's own driver (modem.Modem and its
# profile): who the modem is (IMEI, ICCID), whether the SIM is ready and the network took it,
# and the SIM phonebook the modem's own emergency dialling uses. The factory runs this on the
# card over the raw REPL (host/factory/cardstep.py); nothing here prints.
#
#     import board, modemcheck
#     s = modemcheck.Session(board.open_board(), profile="a7670", pin=None)
#     s.check(wait_ms)  -> {"state", "sim", "registration", "imei", "iccid", "model",
#                           "rssi_dbm", "gave_up"}   (see Session.check)
#     s.phonebook([(key, number, name), ...], keys=4)
#                       -> {"entries": [[index, number, type, name], ...] as read back with
#                           AT+CPBR, "shortened": [key, ...], "error": None or text}
#
# Phonebook: entry k is the contact of key k (the SIM's "SM" book); keys without a contact are
# cleared. Names go in UCS-2 (AT+CSCS="UCS2": the text as hex, four digits a character; the
# number stays digits), cut to what the SIM stores: <tlength> bytes from AT+CPBW=?, i.e. that
# many GSM characters or (tlength - 1) // 2 UCS-2 ones (3GPP TS 31.102 alpha identifier, 0x80
# coding). The character set is put back to "IRA" after.
import modem

_BUF = 256
# driver states where the bring-up stopped or got far enough to judge the SIM and network
_SETTLED = ("no_sim", "sim_locked", "net", "ready", "no_network", "denied", "off")
# the ICCID command of each profile and its answer's prefix
_ICCID = {"a7670": ("AT+CICCID", "+ICCID"), "ec800m": ("AT+QCCID", "+QCCID")}


def _profile(name):
    if name == "a7670":
        from modem_a7670 import A7670

        return A7670()
    if name == "ec800m":
        from modem_ec800m import EC800M

        return EC800M()
    raise ValueError("no modem profile %r (a7670, ec800m)" % name)


def ucs2_hex(text):
    """Text as UCS-2 hex, four digits a character; ValueError beyond the BMP."""
    out = []
    for ch in text:
        code = ord(ch)
        if code > 0xFFFF:
            raise ValueError("%r is outside UCS-2" % ch)
        out.append("%04X" % code)
    return "".join(out)


def from_ucs2_hex(text):
    """UCS-2 hex -> text; ValueError when it is not."""
    if len(text) % 4:
        raise ValueError("UCS-2 hex of %d digits" % len(text))
    return "".join(chr(int(text[i:i + 4], 16)) for i in range(0, len(text), 4))


def fit_name(name, tlength):
    """The longest start of `name` the SIM stores in `tlength` bytes: GSM characters a byte
    each (ASCII here), else UCS-2 (one byte of coding, two a character)."""
    ascii_only = True
    for ch in name:
        if ord(ch) > 0x7E or ord(ch) < 0x20:
            ascii_only = False
            break
    if ascii_only:
        return name[:tlength]
    return name[:max(0, (tlength - 1) // 2)]


class Session:
    """The card's modem under its driver, pumped on the board until each step settles."""

    def __init__(self, hw, profile="a7670", pin=None):
        import hwdata

        p = _profile(profile)
        self.hw = hw
        self.profile = profile
        self.m = modem.Modem(p, hwdata.load(p.HW_NAME), pin=pin)
        self.sim = "unknown"
        self.failed = None
        self.rssi = None
        self.powered = False
        self._buf = bytearray(_BUF)
        self._mv = memoryview(self._buf)
        self._done = None

    # ---- the loop ------------------------------------------------------------------------------
    def _pump(self, until, limit_ms):
        """Feed the driver from the UART and carry out its actions until `until()` or limit_ms;
        True when `until()` came true."""
        hw = self.hw
        m = self.m
        end = hw.now_ms() + limit_ms
        while True:
            n = hw.modem_read(self._buf)
            now = hw.now_ms()
            if n:
                m.receive_data(bytes(self._mv[:n]))
            m.tick(now)
            while True:
                act = m.next_action()
                if act is None:
                    break
                self._act(act)
            while True:
                ev = m.next_event()
                if ev is None:
                    break
                self._event(ev)
            if until():
                return True
            if now >= end:
                return False
            if not n:
                hw.idle(10, False)

    def _wait(self, ms):
        end = self.hw.now_ms() + ms
        while self.hw.now_ms() < end:
            self.hw.idle(end - self.hw.now_ms(), False)

    def _act(self, act):
        hw = self.hw
        kind = act[0]
        if kind == "write":
            hw.modem_write(act[1])
        elif kind == "pwrkey":
            hw.modem_pwrkey(True)
            self._wait(act[1])
            hw.modem_pwrkey(False)
        elif kind == "dtr":
            hw.modem_dtr(act[1])
        elif kind == "power_cut":
            if hw.modem_power(False):
                self._wait(act[1])
                hw.modem_power(True)

    def _event(self, ev):
        kind = ev[0]
        if kind == "sim":
            self.sim = ev[1]
        elif kind == "signal":
            self.rssi = ev[1]
        elif kind == "failed":
            self.failed = ev[1]

    def ask(self, text, prefix=None, timeout_ms=5000):
        """Send one command through the driver and wait for it: (status, text, err)."""
        self._done = None
        self.m.cmd(text, prefix, timeout_ms, done=self._answer)
        self._pump(lambda: self._done is not None, timeout_ms + 2000)
        return self._done or ("TIMEOUT", "", None)

    def _answer(self, c, status, text, err):
        self._done = (status, text, err)

    # ---- the checks --------------------------------------------------------------------------
    def power_up(self, wait_ms):
        """Bring the modem up until the SIM and network are judged or wait_ms ran out."""
        if not self.powered:
            self.powered = True
            self.m.power_on(self.hw.now_ms())
        return self._pump(lambda: self.m.state in _SETTLED, wait_ms)

    def check(self, wait_ms=60000):
        """{"state": the driver's state when it settled (or wait_ms ran out),
            "sim": the driver's last SIM word ("ready", "absent", "pin_required",
                   "puk_required", "pin_rejected", "not_ready", "failed", "unknown"),
            "registration": modem.REG_NAMES-style status ("home", "roaming", "sms_only",
                   "searching", "denied", "not_registered"),
            "imei", "iccid", "model": as the modem says (None: no answer),
            "rssi_dbm": the last +CSQ in dBm (None: unknown), "gave_up": the driver's reason
                   when it gave the modem up (no answer after power cycles), else None}"""
        self.power_up(wait_ms)
        m = self.m
        out = {"state": m.state, "sim": self.sim, "registration": m.reg_status,
               "imei": None, "iccid": None, "model": None, "rssi_dbm": self.rssi,
               "gave_up": self.failed}
        if m.state in ("off", "probing", "booting", "probing_boot", "recovering"):
            return out   # nobody to ask
        status, text, err = self.ask("AT+CGSN")
        if status == "OK":
            digits = "".join(ch for ch in modem.first_line(text) if "0" <= ch <= "9")
            out["imei"] = digits or None
        status, text, err = self.ask("AT+CGMM")
        if status == "OK" and text:
            out["model"] = modem.first_line(text).strip()
        command, prefix = _ICCID.get(self.profile, ("AT+CCID", "+CCID"))
        status, text, err = self.ask(command, prefix)
        if status == "OK" and text:
            value = modem.first_line(text)
            value = value[value.find(":") + 1:].strip().strip('"')
            out["iccid"] = value or None
        out["state"] = m.state
        out["registration"] = m.reg_status
        out["rssi_dbm"] = self.rssi
        return out

    def phonebook(self, contacts, keys=4):
        """Write contacts [(key, number, name)] as SIM phonebook entries 1..keys (the others of
        those cleared) and read them back. Returns {"entries": [[index, number, type, name]],
        "shortened": [keys whose name was cut to fit], "error": None or what failed}."""
        out = {"entries": [], "shortened": [], "error": None}
        steps = (('AT+CSCS="UCS2"', None), ('AT+CPBS="SM"', None))
        for text, prefix in steps:
            status, _, err = self.ask(text, prefix)
            if status != "OK":
                out["error"] = "%s: %s %s" % (text, status, err)
                return out
        tlength = 14
        status, text, err = self.ask("AT+CPBW=?", "+CPBW")
        if status == "OK" and text:
            parts = modem.split_args(modem.first_line(text)[6:])
            # "(1-250),40,(129,145,161),14": the last item is <tlength>
            try:
                tlength = int(parts[-1])
            except (ValueError, IndexError):
                pass
        given = {}
        for key, number, name in contacts:
            given[key] = (number, name)
        try:
            for key in range(1, keys + 1):
                if key not in given:
                    command = "AT+CPBW=%d" % key
                else:
                    number, name = given[key]
                    short = fit_name(name, tlength)
                    if short != name:
                        out["shortened"].append(key)
                    command = 'AT+CPBW=%d,"%s",%d,"%s"' % (
                        key, number, 145 if number[:1] == "+" else 129, ucs2_hex(short))
                status, _, err = self.ask(command, None, 10000)
                if status != "OK":
                    out["error"] = "%s: %s %s" % (command, status, err)
                    return out
            status, text, err = self.ask("AT+CPBR=1,%d" % keys, "+CPBR", 10000)
            if status != "OK":
                out["error"] = "AT+CPBR=1,%d: %s %s" % (keys, status, err)
                return out
            for line in text.split("\n") if text else ():
                if not line.startswith("+CPBR:"):
                    continue
                parts = modem.split_args(line[6:])
                if len(parts) < 4:
                    out["error"] = "AT+CPBR: unreadable line %r" % line
                    return out
                try:
                    out["entries"].append([int(parts[0]), parts[1], int(parts[2]),
                                           from_ucs2_hex(parts[3])])
                except ValueError:
                    out["error"] = "AT+CPBR: unreadable line %r" % line
                    return out
            return out
        finally:
            self.ask('AT+CSCS="IRA"')
