# Quectel EC800M (EC800/EC200 class, LTE Cat-1) profile for modem.Modem.
#
# What differs from the A7670, per Quectel's EC200x/EC800x TCP/IP and AT command manuals (the
# Quectel replies in shared/data/at/issues/ show the same standard +CREG/+CPIN/+CSQ forms):
# - boot URC "RDY", then "+CPIN: READY", "+QIND: SMS DONE" / "+QIND: PB DONE";
# - URCs go to the USB AT port by default: AT+QURCCFG="urcport","uart1" routes them to the UART;
# - packet data: AT+QICSGP=1,1,"<apn>","","",1 then AT+QIACT=1 (up to 150 s), AT+QIACT? for the
#   address; UDP: AT+QIOPEN=1,<id>,"UDP","<host>",<port>,0,1 (direct push) then
#   "+QIOPEN: <id>,<err>"; AT+QISEND=<id>,<len>, "> " prompt, data, "SEND OK" / "SEND FAIL";
#   received: '+QIURC: "recv",<id>,<len>' + raw bytes (push) or '+QIURC: "recv",<id>' then
#   AT+QIRD=<id>,1500 -> "+QIRD: <len>" + raw bytes (buffer); closed: '+QIURC: "closed",<id>',
#   bearer lost: '+QIURC: "pdpdeact",<ctx>';
# - sleep: AT+QSCLK=1 with DTR; DTMF detection: AT+QTONEDET=1 -> "+QTONEDET: <ASCII code>";
# - "POWERED DOWN" before it switches itself off.
import modem

_CTX = 1
_ID = 0


class EC800M(modem.Profile):
    NAME = "ec800m"
    HW_NAME = "modem_ec800m"
    READY_URCS = ("RDY",)
    # AT+CHUP ends a voice call; ATH (with AT+CVHU=0, set at bring-up) as the second try
    # (Quectel EC200x/EC800x AT commands manual)
    HANGUPS = ("AT+CHUP", "ATH")
    SLEEP_CMD = "AT+QSCLK=1"
    # its URC names as one table, b"\nNAME\nNAME\n" (at.ATEngine searches it with find: no
    # per-name objects on the heap)
    URCS = (
        b"\nRDY\n+CPIN\n+QIND\n+QUSIM\n+CFUN\n+CREG\n+CEREG\n+CGREG\n+CGEV\n+CMTI\n+CMT\n+CDS\n"
        b"+CBM\nRING\n+CRING\n+CLIP\n+CLCC\nNO CARRIER\nBUSY\nNO ANSWER\n+CEER\n+COLP\n+QTONEDET\n"
        b"+QIOPEN\n+QIURC\n+CTZE\n+CTZV\n+QNTP\n+CUSD\nPOWERED DOWN\n+QGPSURC\n"
    )

    def config_commands(self):
        return [
            ('AT+QURCCFG="urcport","uart1"', False),  # URCs on the UART we listen to
            ("AT+CVHU=0", False),
            ("AT+CLIP=1", False),
            ("AT+CMGF=0", False),
            ("AT+CNMI=2,1,0,0,0", False),
            ("AT+CREG=1", False),
            ("AT+CEREG=1", False),
            ("AT+CTZU=1", False),
            ("AT+QTONEDET=1", False),
        ]

    def config_result(self, m, text, ok):
        if text == "AT+CMGF=0" and not ok:
            m.features["sms"] = False
        elif text == "AT+CVHU=0" and not ok:
            m.features["voice"] = False
        elif text == "AT+QTONEDET=1":
            m.features["dtmf"] = ok

    # ---- packet data -------------------------------------------------------------------------
    def open_net(self, m, apn):
        m.cmd('AT+QICSGP=%d,1,"%s","","",1' % (_CTX, apn or ""), timeout_ms=5000,
              done=self._qicsgp_done)
        m.cmd("AT+QIACT=%d" % _CTX, timeout_ms=150000, done=self._qiact_done)
        m.data.net_pending(160000)

    def _qicsgp_done(self, c, status, text, err):
        if status not in ("OK", "ABORTED"):
            self._m.emit(("config_failed", c.text, status, err, False))

    def _qiact_done(self, c, status, text, err):
        if status == "ABORTED":
            return
        # ERROR also when the context is already active: ask what is active
        self._m.cmd("AT+QIACT?", "+QIACT", timeout_ms=5000, done=self._qiact_query_done)

    def _qiact_query_done(self, c, status, text, err):
        m = self._m
        if status == "ABORTED":
            return
        for line in text.split("\n"):
            parts = line[7:].split(",")
            if len(parts) >= 4 and parts[0].strip() == str(_CTX) and parts[1].strip() == "1":
                m.data.net_result(True, parts[3].strip().strip('"'))
                return
        m.data.net_result(False, "QIACT: context %d not active (%s)" % (_CTX, status))

    def udp_open(self, m, host, port):
        m.cmd('AT+QIOPEN=%d,%d,"UDP","%s",%d,0,1' % (_CTX, _ID, host, port), "+QIOPEN",
              timeout_ms=150000, done=self._qiopen_done)

    def _qiopen_done(self, c, status, text, err):
        for line in text.split("\n"):
            if line.startswith("+QIOPEN:"):
                self._qiopen_code(line[8:].strip())
                return
        if status not in ("OK", "ABORTED"):
            self._m.data.udp_result("failed", "QIOPEN %s %s" % (status, err))

    def _qiopen_code(self, args):
        parts = args.split(",")
        code = parts[1].strip() if len(parts) > 1 else "?"
        if code == "0":
            self._m.data.udp_result("open", None)
        else:
            self._m.data.udp_result("failed", "QIOPEN error %s" % code)

    def udp_send(self, m, payload):
        m.cmd("AT+QISEND=%d,%d" % (_ID, len(payload)), timeout_ms=15000, payload=payload,
              done=self._qisend_done)

    def _qisend_done(self, c, status, text, err):
        m = self._m
        if status == "SEND OK":
            m.data.send_result(len(c.payload))
        elif status != "ABORTED":
            m.data.send_result(-1, status, err)

    def udp_close(self, m):
        m.cmd("AT+QICLOSE=%d" % _ID, timeout_ms=15000, done=self._qiclose_done)

    def _qiclose_done(self, c, status, text, err):
        if status != "ABORTED":
            self._m.data.udp_result("closed", "local")

    # ---- URCs --------------------------------------------------------------------------------
    def on_urc(self, m, name, args, body):
        if name == "+QIOPEN":
            self._qiopen_code(args)
            return True
        if name == "+QIURC":
            kind = args.split(",")[0].strip('"')
            if kind == "recv":
                # buffer access mode: data waits in the modem, read it
                m.cmd("AT+QIRD=%d,1500" % _ID, "+QIRD", timeout_ms=5000)
            elif kind == "closed":
                m.data.udp_result("closed", "remote")
            elif kind == "pdpdeact":
                m.data.net_result(False, "pdpdeact")
            else:
                m.emit(("urc", name, args, body))
            return True
        if name == "+QIND":
            word = args.strip('"')
            if word == "SMS DONE" or word == "PB DONE":
                m.urc(word, "", body)   # the boot URCs the A7670 sends bare
                return True
            return False
        if name == "+QTONEDET":
            code = modem._int(args.strip())
            if 32 < code < 127:
                m.voice.dtmf(chr(code))
            return True
        if name == "POWERED DOWN":
            m.powered_down(name)
            return True
        return False

    def on_data(self, m, header, payload):
        remote = None
        if header.startswith("+QIRD:") or header.startswith("+QIURC:"):
            parts = header.split(",")
            if header.startswith("+QIRD:") and len(parts) >= 3:
                remote = "%s:%s" % (parts[1].strip('"'), parts[2].strip())
            elif len(parts) >= 5:
                remote = "%s:%s" % (parts[3].strip('"'), parts[4].strip())
        m.data.udp_received(payload, remote)
