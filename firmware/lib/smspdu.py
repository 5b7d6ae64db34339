# SMS PDUs for the card (3GPP TS 23.040 TPDUs, TS 23.038 alphabets), sans-I/O, MicroPython.
#
# encode_submit(number, text, ...) -> [(tpdu_length, hex_bytes), ...]   one entry per part,
#     ready for `AT+CMGS=<tpdu_length>` then the hex and Ctrl-Z. GSM 7-bit (default alphabet and
#     its extension table) when every character fits, else UCS-2 (Chinese), UTF-16 surrogate pairs
#     for characters beyond U+FFFF; concatenated (UDH IEI 0, 8-bit reference) when too long.
# encode_deliver(sender, text, ts, tz, ...) -> same shape, an SMS-DELIVER (what a network hands a
#     phone; the simulated modem uses it for +CMT / +CMGR).
# decode(hex) / decode_octets(buf) -> Sms: SMS-DELIVER, SMS-SUBMIT and SMS-STATUS-REPORT with the
#     SMSC prefix of +CMGR/+CMT (smsc=False when the PDU has none): addresses (international,
#     national, alphanumeric), timestamps as Unix seconds plus the time zone in quarter hours,
#     DCS (7-bit, 8-bit, UCS-2, message class), user-data header (concatenation 8/16-bit), text.
#
# Every malformed input raises PduError (a ValueError) with the offset and the reason; nothing
# else escapes. Damage that leaves the message readable (user data shorter than its length says,
# a dangling UCS-2 byte, an impossible timestamp, a broken header element) does not throw the
# message away: the readable part is returned, `truncated` is set where it applies and the reason
# is in `warnings`.
import binascii

from civil import days_from_civil, valid_date

try:
    from micropython import const
except ImportError:  # CPython, for host-side tools

    def const(x):
        return x


_ENC_GSM7 = const(0)
_ENC_8BIT = const(1)
_ENC_UCS2 = const(2)
_ESC = const(0x1B)
_MAX_DIGITS = const(20)  # an address value is at most 10 octets (TS 23.040 9.1.2.5)
_MAX_SMSC_LEN = const(12)  # SMSC length octet counts the type octet and at most 11 value octets
_MAX_PDU = const(180)  # 12 (SMSC) + 1 + 1 + 12 + 1 + 1 + 7 + 1 + 140
_MAX_PARTS = const(255)
_UDH_CONCAT_LEN = const(6)  # UDHL + IEI 0 + length 3 + ref, total, seq

ENCODINGS = ("gsm7", "8bit", "ucs2")
NUMBER_TYPES = (
    "unknown", "international", "national", "network", "subscriber", "alphanumeric",
    "abbreviated", "reserved",
)
TOA_INTERNATIONAL = const(0x91)
TOA_UNKNOWN = const(0x81)
TOA_NATIONAL = const(0xA1)
TOA_ALPHANUMERIC = const(0xD0)

# GSM 7-bit default alphabet (TS 23.038 6.2.1), index = septet. 0x1B is the escape to the
# extension table; shown as a space when a stray one is received.
_GSM = (
    "@\u00a3$\u00a5\u00e8\u00e9\u00f9\u00ec\u00f2\u00c7\n\u00d8\u00f8\r\u00c5\u00e5"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e \u00c6\u00e6\u00df\u00c9"
    " !\"#\u00a4%&'()*+,-./0123456789:;<=>?"
    "\u00a1ABCDEFGHIJKLMNOPQRSTUVWXYZ\u00c4\u00d6\u00d1\u00dc\u00a7"
    "\u00bfabcdefghijklmnopqrstuvwxyz\u00e4\u00f6\u00f1\u00fc\u00e0"
)
_GSM_CP = tuple(ord(c) for c in _GSM)
# Extension table (TS 23.038 6.2.1.1): code after the escape, and the character.
_EXT_CODES = b"\x0a\x14\x28\x29\x2f\x3c\x3d\x3e\x40\x65"
_EXT_CP = (0x0C, 0x5E, 0x7B, 0x7D, 0x5C, 0x5B, 0x7E, 0x5D, 0x7C, 0x20AC)
# Semi-octet digits of addresses (TS 23.040 9.1.2.3): 0-9, then * # a b c; F is the filler.
_DIGITS = b"0123456789*#abc"
_HEX = b"0123456789ABCDEF"


def _ascii_map():
    m = bytearray(b"\xff" * 128)
    for i in range(127, -1, -1):
        cp = _GSM_CP[i]
        if cp < 128 and i != _ESC:
            m[cp] = i
    return bytes(m)


_ASCII_TO_GSM = _ascii_map()


class PduError(ValueError):
    """A PDU (or something to encode) that is not valid: `reason` says why, `offset` where."""

    def __init__(self, reason, offset=-1):
        if offset >= 0:
            super().__init__("SMS PDU octet %d: %s" % (offset, reason))
        else:
            super().__init__("SMS PDU: " + reason)
        self.reason = reason
        self.offset = offset


class Sms:
    """One decoded TPDU. Fields not present in the message type stay None."""

    def __init__(self):
        self.kind = None  # "deliver", "submit", "status_report"
        self.smsc = None  # service centre number ("+8613800270500"), None when absent
        self.smsc_toa = None
        self.number = None  # sender (deliver), destination (submit), recipient (status report)
        self.number_toa = None
        self.number_type = None  # one of NUMBER_TYPES
        self.mr = None  # TP-MR message reference (submit, status report)
        self.pid = None
        self.dcs = None
        self.encoding = None  # one of ENCODINGS, or "compressed" (text stays None)
        self.msg_class = None  # 0-3 or None
        self.ts = None  # service-centre time stamp, Unix seconds (UTC)
        self.tz = None  # its time zone, quarter hours east of UTC (-48 = UTC-12:00)
        self.validity = None  # submit, relative validity in seconds
        self.validity_ts = None  # submit, absolute validity: Unix seconds and zone
        self.validity_tz = None
        self.discharge_ts = None  # status report: when the recipient got it (or failed)
        self.discharge_tz = None
        self.status = None  # status report TP-ST (0 = delivered)
        self.status_report = False  # deliver: report was requested; submit: request one
        self.reject_duplicates = False
        self.reply_path = False
        self.more = False  # deliver/status report: more messages are waiting at the SMSC
        self.udl = None  # user data length as stated in the PDU
        self.udh = []  # user-data header elements: (iei, bytes)
        self.concat = None  # (reference, total, sequence) of a concatenated message
        self.text = None
        self.data = None  # raw user data (after the header) for 8-bit and compressed messages
        self.truncated = False  # user data shorter than stated: `text` is what was there
        self.warnings = []

    def __repr__(self):
        return "<Sms %s %s %r>" % (self.kind, self.number, self.text)


# ---------------------------------------------------------------------------------- time


def civil_from_days(z):
    """(year, month, day) of a day count since 1970-01-01 (inverse of civil.days_from_civil)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if m <= 2 else 0), m, d


def _swapped_bcd(v):
    lo = v & 0x0F
    hi = v >> 4
    if lo > 9 or hi > 9:
        return -1
    return lo * 10 + hi


def _scts(b, p):
    """(unix, tz) of a 7-octet time stamp at b[p], or None when it is not a real date.

    Years are 20YY: the card was built after 2000 and a service centre stamps the present.
    """
    y = _swapped_bcd(b[p])
    mo = _swapped_bcd(b[p + 1])
    d = _swapped_bcd(b[p + 2])
    h = _swapped_bcd(b[p + 3])
    mi = _swapped_bcd(b[p + 4])
    s = _swapped_bcd(b[p + 5])
    t = b[p + 6]
    tzu = t >> 4
    tz = (t & 0x07) * 10 + tzu
    if y < 0 or mo < 1 or mo > 12 or d < 1 or h < 0 or h > 23 or mi < 0 or mi > 59:
        return None
    if s < 0 or s > 59 or tzu > 9 or tz > 56:  # zones run from UTC-12 to UTC+14
        return None
    y += 2000
    if not valid_date(y, mo, d):
        return None
    if t & 0x08:
        tz = -tz
    return (days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - tz * 900, tz)


def _put_scts(buf, k, ts, tz):
    if tz < -56 or tz > 56:
        raise PduError("time zone %d quarter hours is outside UTC-14..+14" % tz)
    local = ts + tz * 900
    days = local // 86400
    sec = local - days * 86400
    y, m, d = civil_from_days(days)
    if y < 2000 or y > 2099:
        raise PduError("year %d cannot be sent (time stamps hold 2000-2099)" % y)
    for v in (y - 2000, m, d, sec // 3600, (sec // 60) % 60, sec % 60):
        buf[k] = (v % 10) << 4 | (v // 10)
        k += 1
    a = -tz if tz < 0 else tz
    buf[k] = (a % 10) << 4 | (a // 10) | (0x08 if tz < 0 else 0)
    return k + 1


def relative_validity(vp):
    """Seconds of a relative TP-VP octet (TS 23.040 9.2.3.12.1)."""
    if vp <= 143:
        return (vp + 1) * 300
    if vp <= 167:
        return 43200 + (vp - 143) * 1800
    if vp <= 196:
        return (vp - 166) * 86400
    return (vp - 192) * 604800


def validity_octet(seconds):
    """The smallest relative TP-VP octet that keeps a message at least `seconds` (max 63 weeks)."""
    if seconds <= 0:
        raise PduError("validity must be positive seconds, got %r" % (seconds,))
    if seconds <= 43200:
        return (seconds + 299) // 300 - 1
    if seconds <= 86400:
        return 143 + (seconds - 43200 + 1799) // 1800
    if seconds <= 30 * 86400:
        return 166 + (seconds + 86399) // 86400
    w = (seconds + 604799) // 604800
    return 192 + w if w <= 63 else 255


# ------------------------------------------------------------------------------ alphabets


def _put_utf8(buf, k, cp):
    if cp < 0x80:
        buf[k] = cp
        return k + 1
    if cp < 0x800:
        buf[k] = 0xC0 | (cp >> 6)
        buf[k + 1] = 0x80 | (cp & 0x3F)
        return k + 2
    if cp < 0x10000:
        buf[k] = 0xE0 | (cp >> 12)
        buf[k + 1] = 0x80 | ((cp >> 6) & 0x3F)
        buf[k + 2] = 0x80 | (cp & 0x3F)
        return k + 3
    buf[k] = 0xF0 | (cp >> 18)
    buf[k + 1] = 0x80 | ((cp >> 12) & 0x3F)
    buf[k + 2] = 0x80 | ((cp >> 6) & 0x3F)
    buf[k + 3] = 0x80 | (cp & 0x3F)
    return k + 4


def _septet(b, base, i):
    """Septet i of a packed stream starting at octet `base` (caller checks the bounds)."""
    bit = i * 7
    o = base + (bit >> 3)
    sh = bit & 7
    v = b[o] >> sh
    if sh > 1:
        v |= b[o + 1] << (8 - sh)
    return v & 0x7F


def _gsm_text(b, base, first, count):
    """Text of `count` packed septets from septet index `first` (escapes resolved)."""
    out = bytearray(3 * count)
    k = 0
    i = first
    end = first + count
    while i < end:
        c = _septet(b, base, i)
        i += 1
        if c == _ESC:
            if i >= end:  # a lone escape at the end: nothing to show
                break
            c = _septet(b, base, i)
            i += 1
            j = _EXT_CODES.find(bytes((c,)))
            # Unknown extension codes show the default-table character (TS 23.038 6.2.1.1).
            cp = _EXT_CP[j] if j >= 0 else _GSM_CP[c]
        else:
            cp = _GSM_CP[c]
        k = _put_utf8(out, k, cp)
    return str(out[:k], "utf-8")


def _ucs2_text(b, p, n, msg):
    """Text of n octets of UTF-16BE (UCS-2 with surrogate pairs) at b[p]."""
    if n & 1:
        msg.truncated = True
        msg.warnings.append("UCS-2 text has an odd octet count: last octet dropped")
        n -= 1
    out = bytearray(n + n // 2)
    k = 0
    end = p + n
    while p < end:
        u = b[p] << 8 | b[p + 1]
        p += 2
        if 0xD800 <= u <= 0xDBFF and p < end:
            lo = b[p] << 8 | b[p + 1]
            if 0xDC00 <= lo <= 0xDFFF:
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                p += 2
            else:
                u = 0xFFFD
        elif 0xD800 <= u <= 0xDFFF:
            u = 0xFFFD
        k = _put_utf8(out, k, u)
    return str(out[:k], "utf-8")


def _latin1_text(b, p, n):
    out = bytearray(2 * n)
    k = 0
    for i in range(p, p + n):
        k = _put_utf8(out, k, b[i])
    return str(out[:k], "utf-8")


def gsm7_units(text):
    """Unpacked septets of `text` in the GSM default alphabet (escapes included), or None when a
    character has no GSM 7-bit code."""
    out = bytearray(2 * len(text))
    k = 0
    for ch in text:
        cp = ord(ch)
        v = _ASCII_TO_GSM[cp] if cp < 128 else 0xFF
        if v == 0xFF:
            if cp == 0xE7:  # small c cedilla: the spec's table shows it at 0x09
                v = 0x09
            elif cp >= 128 and cp in _GSM_CP:
                v = _GSM_CP.index(cp)
            elif cp in _EXT_CP:
                out[k] = _ESC
                k += 1
                v = _EXT_CODES[_EXT_CP.index(cp)]
            else:
                return None
        out[k] = v
        k += 1
    return out[:k]


def ucs2_units(text):
    """UTF-16BE octets of `text` (surrogate pairs above U+FFFF)."""
    out = bytearray(4 * len(text))
    k = 0
    for ch in text:
        cp = ord(ch)
        if cp >= 0x10000:
            cp -= 0x10000
            hi = 0xD800 | (cp >> 10)
            lo = 0xDC00 | (cp & 0x3FF)
            out[k] = hi >> 8
            out[k + 1] = hi & 0xFF
            out[k + 2] = lo >> 8
            out[k + 3] = lo & 0xFF
            k += 4
        else:
            out[k] = cp >> 8
            out[k + 1] = cp & 0xFF
            k += 2
    return out[:k]


def decode_gsm7(packed, count=None):
    """Text of `count` septets packed in `packed` (default: every whole septet)."""
    n = len(packed)
    if count is None:
        count = n * 8 // 7
    if count < 0 or (count * 7 + 7) // 8 > n:
        raise PduError("%d septets need more than %d octets" % (count, n))
    return _gsm_text(packed, 0, 0, count)


def decode_ucs2(octets):
    """Text of UTF-16BE octets (strict: an odd octet count is an error)."""
    if len(octets) & 1:
        raise PduError("UCS-2 text has an odd octet count (%d)" % len(octets))
    return _ucs2_text(octets, 0, len(octets), None)


def pack_septets(units, buf=None, base=0, first=0):
    """Pack septets into octets (into `buf` at octet `base`, from septet index `first`, so a user
    data header's fill bits come for free). Returns the buffer."""
    n = len(units)
    if buf is None:
        buf = bytearray(((first + n) * 7 + 7) // 8)
    for i in range(n):
        bit = (first + i) * 7
        o = base + (bit >> 3)
        sh = bit & 7
        v = units[i] & 0x7F
        buf[o] |= (v << sh) & 0xFF
        if sh > 1:
            buf[o + 1] |= v >> (8 - sh)
    return buf


def unpack_septets(packed, count=None):
    """Unpacked septets of packed octets (`count` septets, default all whole ones)."""
    if count is None:
        count = len(packed) * 8 // 7
    if (count * 7 + 7) // 8 > len(packed):
        raise PduError("%d septets need more than %d octets" % (count, len(packed)))
    out = bytearray(count)
    for i in range(count):
        out[i] = _septet(packed, 0, i)
    return out


# -------------------------------------------------------------------------------- decoding


def _need(n, p, k, what):
    if p + k > n:
        raise PduError("%s needs %d octet(s), %d left" % (what, k, n - p if n > p else 0), p)


def _digits(b, p, count, what):
    """`count` semi-octet digits from b[p] (low nibble first)."""
    out = bytearray(count)
    for i in range(count):
        v = b[p + (i >> 1)]
        v = (v >> 4) if i & 1 else (v & 0x0F)
        if v == 0x0F:
            raise PduError("%s: filler digit F inside the number" % what, p + (i >> 1))
        out[i] = _DIGITS[v]
    return str(out, "ascii")


def _address(b, p, n, msg, what):
    """Originating/destination/recipient address at b[p]; returns the next offset."""
    _need(n, p, 2, what)
    count = b[p]
    toa = b[p + 1]
    if count > _MAX_DIGITS:
        raise PduError("%s of %d semi-octets is longer than 20" % (what, count), p)
    size = (count + 1) // 2
    _need(n, p + 2, size, what)
    ton = (toa >> 4) & 0x07
    if ton == 5:
        msg.number = _gsm_text(b, p + 2, 0, count * 4 // 7)
    else:
        if count and count & 1 == 0 and b[p + 1 + size] >> 4 == 0x0F:
            # The length counts the filler (seen from real phones): drop it, say so.
            count -= 1
            msg.warnings.append("%s length counts its filler digit" % what)
        number = _digits(b, p + 2, count, what)
        msg.number = "+" + number if ton == 1 and count else number
    msg.number_toa = toa
    msg.number_type = NUMBER_TYPES[ton]
    return p + 2 + size


def _smsc(b, n, msg):
    _need(n, 0, 1, "SMSC length")
    size = b[0]
    if size == 0:
        return 1
    if size > _MAX_SMSC_LEN:
        raise PduError("SMSC length %d is longer than 12 octets" % size, 0)
    _need(n, 1, size, "SMSC address")
    toa = b[1]
    count = 2 * (size - 1)
    if count and b[size] >> 4 == 0x0F:
        count -= 1
    number = _digits(b, 2, count, "SMSC address")
    msg.smsc = "+" + number if (toa >> 4) & 0x07 == 1 and count else number
    msg.smsc_toa = toa
    return 1 + size


def _dcs(msg, d):
    """Sets encoding and class from TP-DCS (TS 23.038 4); returns the encoding code or -1
    for compressed text."""
    msg.dcs = d
    g = d >> 4
    if g < 8:  # 00xx and 01xx: general data coding (01xx: automatic deletion)
        if d & 0x10:
            msg.msg_class = d & 3
        enc = (_ENC_GSM7, _ENC_8BIT, _ENC_UCS2, _ENC_GSM7)[(d >> 2) & 3]
        if d & 0x20:
            msg.encoding = "compressed"
            return -1
    elif g == 0x0F:
        msg.msg_class = d & 3
        enc = _ENC_8BIT if d & 4 else _ENC_GSM7
    elif g == 0x0E:  # message waiting indication, UCS-2 text
        enc = _ENC_UCS2
    else:  # message waiting groups and reserved groups: GSM 7-bit (TS 23.038 4)
        enc = _ENC_GSM7
    msg.encoding = ENCODINGS[enc]
    return enc


def _udh(b, p, end, msg):
    """Parses the user-data header at b[p] (UDHL first); returns the octet after it."""
    udhl = b[p]
    stop = p + 1 + udhl
    if stop > end:
        raise PduError("user-data header of %d octets overruns the user data" % udhl, p)
    q = p + 1
    while q < stop:
        if q + 2 > stop or q + 2 + b[q + 1] > stop:
            msg.warnings.append("user-data header element at octet %d overruns the header" % q)
            break
        iei = b[q]
        size = b[q + 1]
        data = bytes(b[q + 2:q + 2 + size])
        msg.udh.append((iei, data))
        concat = None
        if iei == 0x00 and size == 3:
            concat = (data[0], data[1], data[2])
        elif iei == 0x08 and size == 4:
            concat = (data[0] << 8 | data[1], data[2], data[3])
        if concat is not None:
            if concat[1] == 0 or concat[2] == 0 or concat[2] > concat[1]:
                # TS 23.040 9.2.3.24.1: such an element is ignored.
                msg.warnings.append("concatenation part %d of %d ignored" % (concat[2], concat[1]))
            else:
                msg.concat = concat
        q += 2 + size
    return stop


def _user_data(b, p, n, msg, udhi, enc):
    _need(n, p, 1, "user data length")
    udl = b[p]
    msg.udl = udl
    p += 1
    avail = n - p
    if enc == _ENC_GSM7:
        if udl > 160:
            raise PduError("7-bit user data length %d is over 160 septets" % udl, p - 1)
        size = (udl * 7 + 7) // 8
        septets = udl
        if size > avail:
            septets = avail * 8 // 7
    else:
        if udl > 140:
            # python-gsmmodem's test suite carries a real-world UCS-2 PDU stating 160 octets for
            # 10: tolerated below as truncated, not refused.
            msg.warnings.append("user data length %d is over 140 octets" % udl)
        size = udl
        septets = 0
    if size > avail:
        msg.truncated = True
        msg.warnings.append("user data length says %d, only %d octet(s) present" % (size, avail))
        size = avail
    elif size < avail:
        raise PduError("%d octet(s) after the user data" % (avail - size), p + size)
    end = p + size
    first = 0  # septet index where 7-bit text starts (after the header and its fill bits)
    start = p
    if udhi and size:
        start = _udh(b, p, end, msg)
        first = ((start - p) * 8 + 6) // 7
        if enc == _ENC_GSM7 and first > septets:
            raise PduError("user-data header is longer than the user data", p)
    elif udhi:
        raise PduError("header indicator set but no user data", p)
    if enc == _ENC_GSM7:
        msg.text = _gsm_text(b, p, first, septets - first)
    elif enc == _ENC_UCS2:
        msg.text = _ucs2_text(b, start, end - start, msg)
    else:
        msg.data = bytes(b[start:end])
        if enc == _ENC_8BIT:
            msg.text = _latin1_text(b, start, end - start)
    return end


def _timestamp(b, p, n, msg, what):
    _need(n, p, 7, what)
    t = _scts(b, p)
    if t is None:
        msg.warnings.append("%s at octet %d is not a valid date" % (what, p))
    return t


def decode_octets(b, smsc=True):
    """Decodes one TPDU from its octets (bytes, bytearray or memoryview)."""
    n = len(b)
    msg = Sms()
    p = _smsc(b, n, msg) if smsc else 0
    _need(n, p, 1, "first octet")
    fo = b[p]
    p += 1
    mti = fo & 3
    udhi = fo & 0x40
    msg.reply_path = bool(fo & 0x80)
    if mti == 0:
        msg.kind = "deliver"
        msg.more = not fo & 0x04
        msg.status_report = bool(fo & 0x20)
        p = _address(b, p, n, msg, "sender address")
        _need(n, p, 2, "PID and DCS")
        msg.pid = b[p]
        enc = _dcs(msg, b[p + 1])
        t = _timestamp(b, p + 2, n, msg, "service-centre time stamp")
        if t:
            msg.ts, msg.tz = t
        p = _user_data(b, p + 9, n, msg, udhi, enc)
    elif mti == 1:
        msg.kind = "submit"
        msg.reject_duplicates = bool(fo & 0x04)
        msg.status_report = bool(fo & 0x20)
        _need(n, p, 1, "message reference")
        msg.mr = b[p]
        p = _address(b, p + 1, n, msg, "destination address")
        _need(n, p, 2, "PID and DCS")
        msg.pid = b[p]
        enc = _dcs(msg, b[p + 1])
        p += 2
        vpf = (fo >> 3) & 3
        if vpf == 2:
            _need(n, p, 1, "validity period")
            msg.validity = relative_validity(b[p])
            p += 1
        elif vpf == 3:
            t = _timestamp(b, p, n, msg, "validity period")
            if t:
                msg.validity_ts, msg.validity_tz = t
            p += 7
        elif vpf == 1:
            _need(n, p, 7, "enhanced validity period")
            msg.warnings.append("enhanced validity period not interpreted")
            p += 7
        p = _user_data(b, p, n, msg, udhi, enc)
    elif mti == 2:
        msg.kind = "status_report"
        msg.more = not fo & 0x04
        _need(n, p, 1, "message reference")
        msg.mr = b[p]
        p = _address(b, p + 1, n, msg, "recipient address")
        t = _timestamp(b, p, n, msg, "service-centre time stamp")
        if t:
            msg.ts, msg.tz = t
        t = _timestamp(b, p + 7, n, msg, "discharge time")
        if t:
            msg.discharge_ts, msg.discharge_tz = t
        p += 14
        _need(n, p, 1, "status")
        msg.status = b[p]
        p += 1
        if p < n:  # optional parameter indicator(s), then the parameters they announce
            pi = b[p]
            p += 1
            while b[p - 1] & 0x80:
                _need(n, p, 1, "parameter indicator extension")
                p += 1
            if pi & 0x01:
                _need(n, p, 1, "PID")
                msg.pid = b[p]
                p += 1
            enc = _ENC_GSM7
            if pi & 0x02:
                _need(n, p, 1, "DCS")
                enc = _dcs(msg, b[p])
                p += 1
            if pi & 0x04:
                p = _user_data(b, p, n, msg, udhi, enc)
            elif p < n:
                raise PduError("%d octet(s) after the status report" % (n - p), p)
    else:
        raise PduError("message type indicator 3 is reserved", p - 1)
    return msg


def decode(pdu, smsc=True):
    """Decodes a hex PDU (str or bytes, as +CMGR/+CMT print it, surrounding blanks allowed)."""
    if isinstance(pdu, str):
        try:
            pdu = pdu.encode()
        except Exception:  # a str that cannot be encoded (lone surrogate on CPython)
            raise PduError("PDU text is not ASCII hex")
    try:
        pdu = bytes(pdu).strip()
    except Exception:
        raise PduError("PDU must be hex text, got %s" % type(pdu).__name__)
    if len(pdu) & 1:
        raise PduError("odd number of hex digits (%d): PDU cut short" % len(pdu))
    try:
        octets = binascii.unhexlify(pdu)
    except Exception:
        raise PduError("PDU is not hex")
    return decode_octets(octets, smsc)


# -------------------------------------------------------------------------------- encoding


def _put_address(buf, k, number, toa_plain, smsc, what):
    if not isinstance(number, str) or not number:
        raise PduError("%s must be a non-empty string" % what)
    toa = toa_plain
    start = 0
    if number[0] == "+":
        toa = TOA_INTERNATIONAL
        start = 1
    count = len(number) - start
    if count == 0 or count > _MAX_DIGITS:
        raise PduError("%s %r must have 1 to 20 digits" % (what, number))
    size = (count + 1) // 2
    buf[k] = 1 + size if smsc else count
    buf[k + 1] = toa
    k += 2
    for i in range(count):
        c = ord(number[start + i])
        v = _DIGITS.find(bytes((c,))) if c < 128 else -1
        if v < 0:
            raise PduError("%s %r: %r is not a digit, *, #, a, b or c" % (what, number, chr(c)))
        if i & 1:
            buf[k + (i >> 1)] |= v << 4
        else:
            buf[k + (i >> 1)] = v
    if count & 1:
        buf[k + size - 1] |= 0xF0
    return k + size


def _put_alnum_address(buf, k, name):
    units = gsm7_units(name)
    if units is None or not units or len(units) > 11:
        raise PduError("alphanumeric sender %r must be 1-11 GSM characters" % (name,))
    size = (len(units) * 7 + 7) // 8
    buf[k] = (len(units) * 7 + 3) // 4  # useful semi-octets
    buf[k + 1] = TOA_ALPHANUMERIC
    for i in range(size):
        buf[k + 2 + i] = 0
    pack_septets(units, buf, k + 2)
    return k + 2 + size


def _units(text, encoding):
    if not isinstance(text, str):
        raise PduError("text must be a str, got %s" % type(text).__name__)
    if encoding is None or encoding == "gsm7":
        units = gsm7_units(text)
        if units is not None:
            return units, _ENC_GSM7
        if encoding == "gsm7":
            raise PduError("text has characters outside the GSM 7-bit alphabet")
    elif encoding != "ucs2":
        raise PduError("encoding must be None, 'gsm7' or 'ucs2', got %r" % (encoding,))
    return ucs2_units(text), _ENC_UCS2


def split_units(units, enc):
    """(start, end) ranges of the parts: whole message when it fits, else chunks that fit beside
    a concatenation header, never splitting an escape pair or a surrogate pair."""
    n = len(units)
    if enc == _ENC_GSM7:
        single, multi = 160, 153
    else:
        single, multi = 140, 134
    if n <= single:
        return [(0, n)]
    parts = []
    a = 0
    while a < n:
        j = a
        while j < n:
            if enc == _ENC_GSM7:
                w = 2 if units[j] == _ESC and j + 1 < n else 1
            else:
                w = 4 if 0xD8 <= units[j] <= 0xDB and j + 3 < n else 2
            if j + w - a > multi:
                break
            j += w
        parts.append((a, j))
        a = j
    if len(parts) > _MAX_PARTS:
        raise PduError("text needs %d parts, at most 255 can be joined" % len(parts))
    return parts


def _hex(buf, n):
    out = bytearray(2 * n)
    for i in range(n):
        v = buf[i]
        out[2 * i] = _HEX[v >> 4]
        out[2 * i + 1] = _HEX[v & 0x0F]
    return bytes(out)


def _encode(deliver, number, text, smsc, mr, concat_ref, validity, status_report,
            reject_duplicates, msg_class, encoding, national_toa, pid, ts, tz):
    units, enc = _units(text, encoding)
    if msg_class is not None and msg_class not in (0, 1, 2, 3):
        raise PduError("message class must be 0-3 or None, got %r" % (msg_class,))
    if not 0 <= mr <= 255 or not 0 <= concat_ref <= 255 or not 0 <= pid <= 255:
        raise PduError("message reference, concatenation reference and PID are octets")
    dcs = 0x08 if enc == _ENC_UCS2 else 0x00
    if msg_class is not None:
        dcs |= 0x10 | msg_class
    parts = split_units(units, enc)
    multi = len(parts) > 1
    fo = 0x00 if deliver else 0x01
    vp = None
    if deliver:
        fo |= 0x04  # TP-MMS: no more messages waiting
        if status_report:
            fo |= 0x20
    else:
        if reject_duplicates:
            fo |= 0x04
        if status_report:
            fo |= 0x20
        if validity is not None:
            if isinstance(validity, tuple):
                fo |= 0x18
                vp = validity
            else:
                fo |= 0x10
                vp = validity_octet(validity)
    if multi:
        fo |= 0x40
    out = []
    buf = bytearray(_MAX_PDU)
    for i in range(len(parts)):
        a, z = parts[i]
        for j in range(_MAX_PDU):
            buf[j] = 0
        if smsc:
            k = _put_address(buf, 0, smsc, national_toa, True, "SMSC number")
        else:
            k = 1
        t0 = k
        buf[k] = fo
        k += 1
        if deliver:
            if isinstance(number, str) and number and not _is_number(number):
                k = _put_alnum_address(buf, k, number)
            else:
                k = _put_address(buf, k, number, national_toa, False, "sender")
        else:
            buf[k] = mr
            k = _put_address(buf, k + 1, number, national_toa, False, "destination number")
        buf[k] = pid
        buf[k + 1] = dcs
        k += 2
        if deliver:
            k = _put_scts(buf, k, ts, tz)
        elif isinstance(vp, tuple):
            k = _put_scts(buf, k, vp[0], vp[1])
        elif vp is not None:
            buf[k] = vp
            k += 1
        udl_at = k
        k += 1
        hdr = 0
        if multi:
            buf[k] = _UDH_CONCAT_LEN - 1
            buf[k + 1] = 0x00
            buf[k + 2] = 3
            buf[k + 3] = concat_ref
            buf[k + 4] = len(parts)
            buf[k + 5] = i + 1
            hdr = _UDH_CONCAT_LEN
        if enc == _ENC_GSM7:
            first = (hdr * 8 + 6) // 7
            pack_septets(memoryview(units)[a:z], buf, k, first)
            udl = first + z - a
            k += (udl * 7 + 7) // 8
        else:
            buf[k + hdr:k + hdr + z - a] = units[a:z]
            udl = hdr + z - a
            k += udl
        buf[udl_at] = udl
        out.append((k - t0, _hex(buf, k)))
    return out


def _is_number(s):
    start = 1 if s[0] == "+" else 0
    if start == len(s):
        return False
    for i in range(start, len(s)):
        c = ord(s[i])
        if c >= 128 or _DIGITS.find(bytes((c,))) < 0:
            return False
    return True


def encode_submit(number, text, smsc=None, mr=0, concat_ref=0, validity=None,
                  status_report=False, reject_duplicates=False, msg_class=None, encoding=None,
                  national_toa=TOA_UNKNOWN, pid=0):
    """SMS-SUBMIT PDU(s) for `text` to `number` ("+8613800138000" or national digits).

    smsc: service centre number, None to let the modem use its own (the usual case).
    mr: TP-MR; concat_ref: the 8-bit reference shared by the parts of one long message (keep a
    counter per card). validity: relative seconds, or (unix, tz quarter hours) for absolute.
    encoding: None picks GSM 7-bit when it can, else UCS-2; "gsm7"/"ucs2" force one.
    national_toa: type of address for numbers without "+" (0x81 unknown, 0xA1 national).
    Returns [(tpdu_length, hex_bytes)]: the length AT+CMGS wants excludes the SMSC octets.
    """
    return _encode(False, number, text, smsc, mr, concat_ref, validity, status_report,
                   reject_duplicates, msg_class, encoding, national_toa, pid, 0, 0)


def encode_deliver(sender, text, ts, tz=0, smsc=None, concat_ref=0, msg_class=None,
                   encoding=None, national_toa=TOA_UNKNOWN, pid=0, status_report=False):
    """SMS-DELIVER PDU(s) as a network would hand them to a phone (for simulated modems and
    tests). sender: a number, or 1-11 GSM characters for an alphanumeric sender. ts: Unix
    seconds, tz: quarter hours east of UTC (32 = China Standard Time)."""
    return _encode(True, sender, text, smsc, 0, concat_ref, None, status_report, False,
                   msg_class, encoding, national_toa, pid, ts, tz)
