# SMS for modem.Modem, in PDU mode: send (AT+CMGS), new-message URCs (+CMTI, +CMT, +CDS), read
# (AT+CMGR) and delete (AT+CMGD). PDUs are made and read by smspdu; this module moves them.
#
# Events: ("sms_sent", mr, tag), ("sms_failed", err, tag), ("sms_new", mem, index),
# ("sms", mode, index, header, body) (mode "pdu": body is the PDU as hex; "text": text-mode lines),
# ("sms_read_failed", command, status, err), ("sms_report", header, body).
from modem import Fifo, ModemError, split_args, first_line, _int


def _is_hex(text):
    for ch in text:
        if ch not in "0123456789ABCDEFabcdef":
            return False
    return True


class Sms:
    def __init__(self, modem, auto_read=True):
        self.m = modem
        self.auto_read = auto_read
        self._tags = Fifo()   # the tag of each AT+CMGS in flight, in the order they were sent

    def send_pdu(self, pdu_hex, tpdu_len, tag=None):
        """Send one SMS in PDU mode. pdu_hex: SMSC + TPDU as hex text (from smspdu);
        tpdu_len: TPDU length in octets (excludes the SMSC part), as AT+CMGS wants it.
        Ends with ("sms_sent", mr, tag) or ("sms_failed", err, tag)."""
        if not self.m.features["sms"]:
            raise ModemError("this modem variant has no SMS")
        if isinstance(pdu_hex, str):
            pdu_hex = pdu_hex.encode()
        if not pdu_hex or len(pdu_hex) % 2 or not (1 <= tpdu_len <= 176) or tpdu_len * 2 > len(pdu_hex):
            raise ModemError("bad PDU: %d hex chars for a %d-octet TPDU" % (len(pdu_hex), tpdu_len))
        for ch in pdu_hex:
            if not (48 <= ch <= 57 or 65 <= ch <= 70 or 97 <= ch <= 102):
                raise ModemError("PDU is not hex text")
        c = self.m.cmd("AT+CMGS=%d" % tpdu_len, "+CMGS", timeout_ms=65000,
                       payload=pdu_hex + b"\x1a", done=self._cmgs_done)
        self._tags.put(tag)
        return c

    def read(self, index):
        self.m.cmd("AT+CMGR=%d" % index, ("+CMGR",), timeout_ms=10000, done=self._cmgr_done)

    def delete(self, index):
        self.m.cmd("AT+CMGD=%d" % index, timeout_ms=10000, done=self.m.app_done)

    def on_urc(self, name, args, body):
        """A standard SMS URC; True when it was one."""
        if name == "+CMTI":
            self._cmti(args)
        elif name == "+CMT":
            self._sms_event(None, args, body)
        elif name == "+CDS":
            self.m.emit(("sms_report", args, body))
        else:
            return False
        return True

    def _cmgs_done(self, c, status, text, err):
        tag = self._tags.get()
        if status == "OK":
            mr = _int(first_line(text)[6:].strip()) if text else -1
            self.m.emit(("sms_sent", mr, tag))
        else:
            self.m.emit(("sms_failed", err if err is not None else status, tag))

    def _cmti(self, args):
        parts = split_args(args)
        mem = parts[0] if parts else ""
        index = _int(parts[1]) if len(parts) > 1 else -1
        self.m.emit(("sms_new", mem, index))
        if self.auto_read and index >= 0:
            self.read(index)

    def _cmgr_done(self, c, status, text, err):
        if status != "OK" or not text:
            if status != "ABORTED":
                self.m.emit(("sms_read_failed", c.text, status, err))
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
        self.m.emit(("sms", mode, index, header, body))
