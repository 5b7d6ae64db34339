# SIMCom A7670 (A76xx family) profile for modem.Modem.
#
# What is specific to it, from the captures in shared/data/at/ and SIMCom's A76xx AT manual:
# - boot URC "*ATREADY: 1" (lilygo-t-a76xx logs, issue 299), then +CPIN: READY, SMS DONE, PB DONE;
# - voice: "VOICE CALL: BEGIN" (may arrive at ring-back, before anyone answers) and
#   "VOICE CALL: END: 000017" / "VOICE CALL:END:000004" (duration, both spellings seen);
#   ATH only hangs up after AT+CVHU=0; "MISSED_CALL: ..." for calls we did not take;
# - TCP/IP: AT+NETOPEN then "+NETOPEN: 0"; AT+CIPOPEN=<link>,"UDP",,,<lport> then
#   "+CIPOPEN: <link>,<err>"; AT+CIPSEND=<link>,<len>,"<ip>",<port> with the "> " prompt, OK,
#   then "+CIPSEND: <link>,<req>,<sent>"; received data as "RECV FROM:<ip>:<port>" (AT+CIPSRIP=1)
#   followed by "+IPD<len>" or "+RECEIVE,<link>,<len>" and the raw bytes, or in buffer mode
#   "+CIPRXGET: 1,<link>" and AT+CIPRXGET=2; closed: "+IPCLOSE: <link>,<reason>",
#   "+CIPEVENT: NETWORK CLOSED UNEXPECTEDLY", "+CGEV: NW PDN DEACT <cid>".
# - DTMF from the far end: AT+DDET=1 enables "+RXDTMF: <key>" (0-9, *, #, A-D) on firmware that
#   has it (SIMCom's SIM7500/SIM7600 AT manual; ModemManager's SIMCom plugin parses the same URC,
#   also with "\r\r\n" around it; a SIM7600G-H session log shows VOICE CALL: BEGIN, +RXDTMF: 1,
#   VOICE CALL: END). Not in a capture of an A7670 here, so the feature is only switched on when
#   the modem accepts AT+DDET=1; without it the application's fallback rule applies (cardapp).
# - Text-to-speech to the far end (the prompt asking a callee to press a key): AT+CDTAM=1 sends
#   what the TTS engine plays to the remote side instead of the local speaker, AT+CTTS=1,"<UCS-2
#   hex>" plays a text (OK at once), "+CTTS: 0" when it finished (SIMCom A76XX AT manual, TTS
#   commands). No capture here has them; the feature is on only when the modem accepts
#   AT+CDTAM=1 (variants without audio refuse it).
import modem
import modem_voice

_LINK = 0
_LINK_IN_USE = "4"  # +CIPOPEN <err>: the link is already open


class A7670(modem.Profile):
    NAME = "a7670"
    HW_NAME = "modem_a7670"
    READY_URCS = ("*ATREADY", "RDY")
    # AT+CHUP ends a voice call whatever AT+CVHU says; ATH (with AT+CVHU=0, set at bring-up)
    # as the second try (SIMCom A76xx AT manual)
    HANGUPS = ("AT+CHUP", "ATH")
    SLEEP_CMD = "AT+CSCLK=1"
    _stale_link = False  # closing a link left open by a reset of the card, to open it again
    # its URC names as one table, b"\nNAME\nNAME\n" (at.ATEngine searches it with find: no
    # per-name objects on the heap)
    URCS = (
        b"\n*ATREADY\nRDY\n+CPIN\nSMS DONE\nPB DONE\n+CGEV\n+CREG\n+CEREG\n+CGREG\n+CIREG\n+CMTI\n"
        b"+CMT\n+CDS\n+CBM\nRING\n+CRING\n+CLIP\n+CLCC\nNO CARRIER\nBUSY\nNO ANSWER\nVOICE CALL\n"
        b"MISSED_CALL\n+CEER\n+COLP\n+RXDTMF\n+DTMF\n+NETOPEN\n+NETCLOSE\n+CIPOPEN\n+CIPCLOSE\n"
        b"+CTTS\n+CIPSEND\n+IPCLOSE\n+CIPEVENT\nRECV FROM\n+CIPRXGET\n+CGNSSPWR\n+CGNSSINFO\n+CGNSSAGPS\n"
        b"+CTZV\n*PSUTTZ\n+CTZE\nDST\n+CUSD\n+CPING\n+CMQTTSTART\n+CMQTTCONNECT\n+CMQTTSUB\n"
        b"+CMQTTREL\nNORMAL POWER DOWN\nUNDER-VOLTAGE WARNING\nUNDER-VOLTAGE POWER DOWN\n"
        b"OVER-VOLTAGE WARNING\nOVER-VOLTAGE POWER DOWN\n"
    )

    def config_commands(self):
        return [
            ("AT+CVHU=0", False),        # make ATH hang up voice calls
            ("AT+CLIP=1", False),        # caller number with RING
            ("AT+CLCC=1", False),        # +CLCC URC on every call state change
            ("AT+CMGF=0", False),        # SMS in PDU mode
            ("AT+CNMI=2,1,0,0,0", False),  # new SMS -> +CMTI (stored, survives our reboot)
            ("AT+CREG=1", False),        # +CREG: <stat> URCs
            ("AT+CEREG=1", False),
            ("AT+CTZU=1", False),        # network time zone updates the clock
            ("AT+CIPSRIP=1", False),     # "RECV FROM:<ip>:<port>" before received data
            ("AT+DDET=1", False),        # DTMF detection, where the firmware has it
            ("AT+CDTAM=1", False),       # TTS played to the far end of a call
        ]

    def config_result(self, m, text, ok):
        if text == "AT+CVHU=0" and not ok:
            m.features["voice"] = False   # variants without voice refuse voice commands
        elif text == "AT+CMGF=0" and not ok:
            m.features["sms"] = False
        elif text == "AT+DDET=1":
            m.features["dtmf"] = ok
        elif text == "AT+CDTAM=1":
            m.features["tts"] = ok

    # ---- packet data -------------------------------------------------------------------------
    def open_net(self, m, apn):
        if apn:
            m.cmd('AT+CGDCONT=1,"IP","%s"' % apn, timeout_ms=5000, done=self._cgdcont_done)
        # "+IP ERROR: Network is already opened" is NETOPEN's own answer when the bearer outlived
        # a reset of the card: it must reach _netopen_done, not go by as an unknown line.
        m.cmd("AT+NETOPEN", ("+NETOPEN", "+IP ERROR"), timeout_ms=30000, done=self._netopen_done)

    def _cgdcont_done(self, c, status, text, err):
        if status not in ("OK", "ABORTED"):
            self._m.emit(("config_failed", c.text, status, err, False))

    def _netopen_done(self, c, status, text, err):
        m = self._m
        if status == "ABORTED":
            return
        if status == "OK":
            for line in text.split("\n"):
                if line.startswith("+NETOPEN:"):
                    self._netopen_code(m, line[9:].strip())
                    return
            m.data.net_pending(30000)  # "+NETOPEN: 0" follows as a URC
            return
        for line in text.split("\n"):
            if "already opened" in line:
                self._ipaddr(m)
                return
        m.data.net_result(False, "NETOPEN %s %s" % (status, err))

    def _netopen_code(self, m, code):
        if code.strip() == "0":
            self._ipaddr(m)
        else:
            m.data.net_result(False, "NETOPEN error %s" % code)

    def _ipaddr(self, m):
        m.cmd("AT+IPADDR", "+IPADDR", timeout_ms=5000, done=self._ipaddr_done)

    def _ipaddr_done(self, c, status, text, err):
        m = self._m
        if status == "OK" and text:
            m.data.net_result(True, modem.first_line(text)[8:].strip())
        elif status != "ABORTED":
            m.data.net_result(True, None)  # bearer up (NETOPEN said so), address unknown

    def udp_open(self, m, host, port):
        m.cmd('AT+CIPOPEN=%d,"UDP",,,%d' % (_LINK, self.local_port), "+CIPOPEN",
              timeout_ms=30000, done=self._cipopen_done)

    def _cipopen_done(self, c, status, text, err):
        m = self._m
        for line in text.split("\n"):
            if line.startswith("+CIPOPEN:"):
                self._cipopen_code(m, line[9:].strip())
                return
        if status not in ("OK", "ABORTED"):
            m.data.udp_result("failed", "CIPOPEN %s %s" % (status, err))

    def _cipopen_code(self, m, args):
        parts = args.split(",")
        code = parts[1].strip() if len(parts) > 1 else "?"
        if code == "0":
            self._stale_link = False
            m.data.udp_result("open", None)
        elif code == _LINK_IN_USE and not self._stale_link:
            # the link outlived a reset of the card (the modem kept it): close it, open it again
            self._stale_link = True
            m.cmd("AT+CIPCLOSE=%d" % _LINK, "+CIPCLOSE", timeout_ms=15000, done=self._stale_closed)
        else:
            self._stale_link = False
            m.data.udp_result("failed", "CIPOPEN error %s" % code)

    def _stale_closed(self, c, status, text, err):
        if status != "ABORTED":
            self.udp_open(self._m, None, None)

    def udp_send(self, m, payload):
        host, port = m.data.udp_remote
        m.cmd('AT+CIPSEND=%d,%d,"%s",%d' % (_LINK, len(payload), host, port), "+CIPSEND",
              timeout_ms=15000, payload=payload, done=self._cipsend_done)

    def _cipsend_done(self, c, status, text, err):
        m = self._m
        for line in text.split("\n"):
            if line.startswith("+CIPSEND:"):
                self._cipsend_code(m, line[9:].strip())
                return
        if status not in ("OK", "ABORTED"):
            m.data.send_result(-1, status, err)

    def _cipsend_code(self, m, args):
        parts = args.split(",")
        sent = modem._int(parts[2].strip()) if len(parts) > 2 else -1
        if sent < 0:
            m.data.send_result(-1, "link", args)
        else:
            m.data.send_result(sent)

    def say(self, m, ucs2_hex):
        m.cmd('AT+CTTS=1,"%s"' % ucs2_hex, timeout_ms=5000, done=self._ctts_done)

    def _ctts_done(self, c, status, text, err):
        if status not in ("OK", "ABORTED"):
            self._m.emit(("tts_done", False))

    def udp_close(self, m):
        m.cmd("AT+CIPCLOSE=%d" % _LINK, "+CIPCLOSE", timeout_ms=15000, done=self._cipclose_done)

    def _cipclose_done(self, c, status, text, err):
        if status != "ABORTED":
            self._m.data.udp_result("closed", "local")

    # ---- URCs --------------------------------------------------------------------------------
    def on_urc(self, m, name, args, body):
        if name == "VOICE CALL":
            word = args.replace(" ", "")
            if word.startswith("BEGIN"):
                if m.voice.call != modem_voice.IDLE:
                    m.voice.connected()
            elif word.startswith("END"):
                m.voice.released("END:" + word[4:] if len(word) > 3 else "END")
            else:
                m.emit(("urc", name, args, body))
            return True
        if name == "MISSED_CALL":
            m.emit(("missed_call", args))
            return True
        if name == "+CTTS":
            if args.strip() == "0":   # playback ended
                m.emit(("tts_done", True))
            return True
        if name == "+RXDTMF" or name == "+DTMF":
            digit = args.strip()
            if digit:
                m.voice.dtmf(digit[0])
            return True
        if name == "+NETOPEN":
            if m.data.net_activating():
                self._netopen_code(m, args)
            return True
        if name == "+NETCLOSE" or name == "+CIPEVENT":
            m.data.net_result(False, name + " " + args)
            return True
        if name == "+CIPOPEN":
            self._cipopen_code(m, args)
            return True
        if name == "+CIPSEND":
            self._cipsend_code(m, args)
            return True
        if name == "+CIPCLOSE" or name == "+IPCLOSE":
            if not (self._stale_link and name == "+CIPCLOSE"):  # not our close of a stale link
                m.data.udp_result("closed", args)
            return True
        if name == "RECV FROM":
            m.data.recv_from = args
            return True
        if name == "+CIPRXGET":
            if args.startswith("1"):
                m.cmd("AT+CIPRXGET=2,%d,1500" % _LINK, "+CIPRXGET", timeout_ms=5000)
            return True
        if name == "+CGEV":
            if "PDN DEACT 1" in args or args.endswith("DEACT 1"):
                m.data.net_result(False, name + ": " + args)
                return True
            return False
        if name.endswith("POWER DOWN"):
            m.powered_down(name)
            return True
        return False
