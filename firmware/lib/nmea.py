# NMEA 0183 parser for the card's GNSS receiver: sans-I/O, MicroPython first.
#
#   p = NMEAParser()
#   p.receive_data(uart_bytes)          # any chunking, any garbage
#   fix = p.next_event()                # a Fix per epoch, or None when more bytes are needed
#   p.flush()                           # end of input / receiver powered off: close the epoch
#
# What it decodes: GGA, RMC, GSA and GSV (satellites in view) from the talkers GP, GN, BD, GB, GL
# and GA. The date comes from RMC; ZDA, GLL, VTG, TXT and proprietary sentences are counted as not
# decoded (the RAM their code would take is worth more on the card). Every sentence must carry a
# valid checksum (upper- or lower-case hex); a sentence with a bad or missing checksum is counted
# and never used. Bytes that are not part of a
# checksum-valid sentence (binary CASIC frames from the L76K, `$$`, noise glued in front of a `$`
# as the A7670's GNSS does with `GN$GNRMC`, comment lines of a capture) are skipped and counted.
#
# Epochs: sentences of one measurement epoch (same UTC time of day) are grouped into one Fix. An
# epoch ends when a GGA or RMC arrives with another time, or when a GGA or RMC repeats
# (receivers without time, before their first fix, send untimed cycles). GSA and GSV carry no
# time and join the open epoch. The Fix of an epoch is therefore emitted when the next epoch
# starts, or on flush().
#
# Units (integers only: the card's MCU may have single-precision floats, so coordinates are never
# computed through float): lat_e7/lon_e7 in 1e-7 degree (rounded half up on the minute fraction),
# hdop x10, alt in whole metres (MSL, rounded), speed in cm/s, course x10 degrees, time in Unix
# seconds (UTC, own calendar arithmetic: MicroPython's epoch differs per port) plus ms.
#
# GPS week rollover: receivers with a 10-bit week counter report dates 1024 weeks (7168 days) too
# early once their firmware's epoch has passed (the Telit HE910 in gpsd's april6_2019.log reports
# 1999-08-22 on 2019-04-07). A date before `not_before_days` (days since 1970-01-01, default:
# 2024-01-01, before any card was built) is impossibly old and is moved forward by 1024 weeks
# until it is not; the Fix says so (rollover=True).
from array import array

from civil import days_from_civil, valid_date as _valid_date
from collections import namedtuple

try:
    from micropython import const
except ImportError:  # CPython (host tools)
    def const(x):
        return x

# Longest sentence candidate kept, '$' to '\n' inclusive. NMEA 0183 allows 82 characters; real
# receivers exceed it (RTK GGA with 8 decimals, NMEA 4.11 GSV); anything longer is garbage.
MAX_LINE = const(128)
_MAX_FIELDS = const(24)

# Sentence kinds (bits of an epoch's mask).
_GGA = const(1)
_RMC = const(2)
_GSA = const(8)
_GSV = const(16)
_TIMED = const(3)  # kinds that carry the epoch's time (and a position)

# Three-letter sentence types as integers (no string allocated per line).
_T_GGA = const(0x474741)
_T_RMC = const(0x524D43)
_T_GSA = const(0x475341)
_T_GSV = const(0x475356)

_ROLLOVER_DAYS = const(7168)  # 1024 GPS weeks
_DEFAULT_NOT_BEFORE = const(19723)  # 2024-01-01 in days since 1970-01-01
_HALF_DAY_MS = const(43200000)


# The open epoch's accumulators: one preallocated list (the parser's attributes stay few, so its
# instance dictionary stays small on the card), indexed by these.
_E_MASK = const(0)
_E_TOD = const(1)
_E_DAYS = const(2)
_E_ROLLOVER = const(3)
_E_LAT = const(4)
_E_LON = const(5)
_E_ALT = const(6)
_E_HDOP = const(7)
_E_SATS = const(8)
_E_GSA_SATS = const(9)
_E_QUALITY = const(10)
_E_STATUS = const(11)
_E_FAA = const(12)
_E_GSA_MODE = const(13)
_E_SPEED = const(14)
_E_COURSE = const(15)
_E_VIEW = const(16)
_E_LAT7 = const(17)   # _E_LAT/_E_LON hold whole degrees (None: no position), these the rest
_E_LON7 = const(18)   # in 1e-7 degree (see _coord)
_EPOCH0 = (0, -1, -1, False, None, None, None, None, -1, 0, -1, 0, 0, 0, None, None, -1, 0, 0)
_N_EPOCH = const(19)
# Kept across epochs, after the epoch's slots: the last known date and its time of day (for
# epochs without a date of their own, GGA-only receivers).
_LAST_DAYS = const(19)
_LAST_TOD = const(20)

_BYTES = (bytes, bytearray)  # built once: a tuple literal in receive_data would allocate

_OUT = const(0)
_BUF = const(1)
_DISCARD = const(2)

FIX_NONE = "none"
FIX_2D = "2d"
FIX_3D = "3d"


class NMEAError(ValueError):
    """Raised for misuse of the API (receive_data given something that is not bytes). Problems
    in the byte stream are never raised: they are counted, and `last_error` names the latest one
    (ERR_CHECKSUM, ERR_TRUNCATED, ERR_TOO_LONG, ERR_MALFORMED, ERR_UNKNOWN)."""


# Kinds of stream problems (values of NMEAParser.last_error).
ERR_CHECKSUM = "checksum"     # '*hh' present but not the XOR of the sentence
ERR_TRUNCATED = "truncated"   # a '$' candidate ending without '*' and two hex digits
ERR_TOO_LONG = "too_long"     # a candidate over MAX_LINE bytes, discarded
ERR_MALFORMED = "malformed"   # checksum-valid sentence whose fields do not parse: not used
ERR_UNKNOWN = "unknown"       # checksum-valid sentence of a type or talker not decoded


# --- field decoders: (buffer, start, end) of one field, no allocation; raise ValueError when the
# --- field is not what it must be (the whole sentence is then counted malformed and not used).

def _uint(b, s, e):
    """Unsigned decimal integer; -1 for an empty field."""
    if s >= e:
        return -1
    v = 0
    while s < e:
        c = b[s] - 48
        if c < 0 or c > 9:
            raise ValueError
        v = v * 10 + c
        s += 1
    return v


def _fixed(b, s, e, nd):
    """Signed decimal scaled by 10**nd, rounded half away from zero; None for an empty field."""
    if s >= e:
        return None
    neg = False
    c = b[s]
    if c == 45:  # '-'
        neg = True
        s += 1
    elif c == 43:  # '+'
        s += 1
    v = 0
    digits = 0
    while s < e:
        c = b[s]
        if c == 46:  # '.'
            break
        c -= 48
        if c < 0 or c > 9:
            raise ValueError
        v = v * 10 + c
        digits += 1
        s += 1
    k = 0
    if s < e:
        s += 1
        while s < e:
            c = b[s] - 48
            if c < 0 or c > 9:
                raise ValueError
            if k < nd:
                v = v * 10 + c
            elif k == nd and c >= 5:
                v += 1
            k += 1
            digits += 1
            s += 1
    if digits == 0:
        raise ValueError
    while k < nd:
        v *= 10
        k += 1
    return -v if neg else v


def _coord(b, s, e, hs, he, pos, neg, maxdeg, out, i):
    """NMEA (d)ddmm.mmmm plus hemisphere field -> signed whole degrees into out[i] and the
    signed rest in 1e-7 degree into out[i + 1]; False when empty.

    Two parts because the value in 1e-7 degree is not a small int on a 32-bit port beyond
    107.37 degrees (all of Fujian): it is put together only once per epoch, with its Fix."""
    if s >= e:
        if hs < he:
            raise ValueError
        return False
    if he - hs != 1:
        raise ValueError
    h = b[hs]
    if h != pos and h != neg:
        raise ValueError
    ip = 0
    k = s
    while k < e:
        c = b[k]
        if c == 46:
            break
        c -= 48
        if c < 0 or c > 9:
            raise ValueError
        ip = ip * 10 + c
        k += 1
    if k == s:
        raise ValueError
    # minutes as integer units of 1e-7 minute (<= 599,999,999: a small int on 32-bit ports)
    frac = 0
    nd = 0
    if k < e:
        k += 1
        while k < e:
            c = b[k] - 48
            if c < 0 or c > 9:
                raise ValueError
            if nd < 7:
                frac = frac * 10 + c
            elif nd == 7 and c >= 5:
                frac += 1
            nd += 1
            k += 1
    while nd < 7:
        frac *= 10
        nd += 1
    deg = ip // 100
    mins = ip - deg * 100
    if mins >= 60 or deg > maxdeg:
        raise ValueError
    rest = (mins * 10000000 + frac + 30) // 60  # 1e-7 degree, 0..10,000,000
    if rest >= 10000000:  # 59.99999995' and up round into the next degree
        deg += 1
        rest -= 10000000
    if deg > maxdeg or (deg == maxdeg and rest):
        raise ValueError
    if h == neg:
        deg = -deg
        rest = -rest
    out[i] = deg
    out[i + 1] = rest
    return True


def _tod(b, s, e):
    """hhmmss[.sss] -> milliseconds since midnight; -1 for an empty field."""
    if s >= e:
        return -1
    if e - s < 6:
        raise ValueError
    v = 0
    k = s
    while k < s + 6:
        c = b[k] - 48
        if c < 0 or c > 9:
            raise ValueError
        v = v * 10 + c
        k += 1
    hh = v // 10000
    mm = (v // 100) % 100
    ss = v % 100
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError
    ms = 0
    if k < e:
        if b[k] != 46:
            raise ValueError
        k += 1
        scale = 100
        while k < e:
            c = b[k] - 48
            if c < 0 or c > 9:
                raise ValueError
            ms += c * scale
            scale //= 10
            k += 1
    return ((hh * 60 + mm) * 60 + ss) * 1000 + ms


# One epoch's solution: a namedtuple (a compact tuple on the card, read by attribute name).
# Position fields are None unless `valid`: a position the receiver itself flags as unusable is
# never handed out.
#   time          Unix seconds (UTC), or None when the date or time is unknown
#   ms            milliseconds within the second (0..999)
#   valid         RMC status A (mode not N/E), GGA quality 1..5, GSA 2D/3D, and a position
#   fix           FIX_NONE, FIX_2D, FIX_3D (GSA; without GSA: 3D when GGA has an altitude)
#   lat_e7        1e-7 degree, + north          lon_e7   1e-7 degree, + east
#   alt           metres above mean sea level (GGA), or None
#   hdop          HDOP x10 (GGA, else GSA), or None
#   sats          satellites used (GGA, else the PRNs listed by the epoch's GSAs), or None
#   speed         cm/s over ground (RMC), or None    course   x10 degrees (RMC), or None
#   quality       GGA quality indicator, or None     status   RMC status 'A'/'V', or None
#   rollover      True when the date was moved forward by 1024 GPS weeks
#   sats_in_view  sum of the GSV "in view" counts of the epoch's talkers, or None
Fix = namedtuple("Fix", ("time", "ms", "valid", "fix", "lat_e7", "lon_e7", "alt", "hdop", "sats",
                         "speed", "course", "quality", "status", "rollover", "sats_in_view"))


class NMEAParser:
    def __init__(self, not_before_days=_DEFAULT_NOT_BEFORE):
        self.not_before_days = not_before_days
        self._buf = bytearray(MAX_LINE)
        self._f = array("i", bytes(4 * (_MAX_FIELDS + 1)))  # comma offsets: any chunk size
        self._events = []
        self.sentences = 0        # checksum-valid sentences
        self.bad_checksum = 0     # '*hh' present but not the XOR of the sentence
        self.truncated = 0        # '$' candidates without '*hh' (cut off, noise)
        self.too_long = 0         # candidates over MAX_LINE
        self.unknown = 0          # valid sentences of types/talkers not decoded
        self.malformed = 0        # valid checksum, fields do not parse
        self.skipped_bytes = 0    # bytes not part of a checksum-valid sentence
        self.epochs = 0           # Fix events produced
        self.last_error = None    # ERR_* of the most recent stream problem
        self._state = _OUT
        self._n = 0
        self._e = list(_EPOCH0) + [-1, -1]
        self._c = [0, 0, 0, 0]    # a sentence's coordinates before they join the epoch

    def reset(self):
        """Forget buffered bytes and the open epoch (receiver power-cycled). Counters stay."""
        self._state = _OUT
        self._n = 0
        self._events = []
        self._e[0:_N_EPOCH] = _EPOCH0

    # --- byte stream -> sentence candidates ('$' up to and including '\n', or up to the next '$')

    def receive_data(self, data):
        """Feed bytes as they come from the UART (any chunking)."""
        if not isinstance(data, _BYTES):
            raise NMEAError("receive_data() takes bytes or bytearray")
        n = len(data)
        i = 0
        while i < n:
            st = self._state
            if st == _OUT:
                d = data.find(b"$", i)
                if d < 0:
                    self.skipped_bytes += n - i
                    return
                self.skipped_bytes += d - i
                i = d
                nl = data.find(b"\n", i + 1)
                if nl < 0:
                    dl = data.find(b"$", i + 1)
                    end = dl
                else:
                    dl = data.find(b"$", i + 1, nl)
                    end = dl if dl >= 0 else nl + 1
                if end >= 0:
                    if end - i > MAX_LINE:
                        self.too_long += 1
                        self.skipped_bytes += end - i
                        self.last_error = ERR_TOO_LONG
                    else:
                        self._candidate(data, i, end)
                    i = end
                else:
                    k = n - i
                    if k > MAX_LINE:
                        self.too_long += 1
                        self.skipped_bytes += k
                        self.last_error = ERR_TOO_LONG
                        self._state = _DISCARD
                    else:
                        buf = self._buf  # byte loop: no slice object allocated
                        j = 0
                        while i < n:
                            buf[j] = data[i]
                            i += 1
                            j += 1
                        self._n = k
                        self._state = _BUF
                    return
            else:
                nl = data.find(b"\n", i)
                if nl < 0:
                    end = data.find(b"$", i)
                else:
                    dl = data.find(b"$", i, nl)
                    end = dl if dl >= 0 else nl + 1
                stop = end if end >= 0 else n
                k = stop - i
                if st == _DISCARD:
                    self.skipped_bytes += k
                else:
                    m = self._n
                    if m + k > MAX_LINE:
                        self.too_long += 1
                        self.skipped_bytes += m + k
                        self.last_error = ERR_TOO_LONG
                        self._n = 0
                        st = _DISCARD
                    else:
                        buf = self._buf
                        j = i
                        while j < stop:
                            buf[m] = data[j]
                            j += 1
                            m += 1
                        self._n = m
                if end >= 0:
                    if st == _BUF:
                        self._candidate(self._buf, 0, self._n)
                        self._n = 0
                    self._state = _OUT
                    i = end
                else:
                    self._state = st
                    return

    def flush(self):
        """End of input (or receiver off): decode a pending unterminated candidate, close the
        open epoch, emit its Fix."""
        if self._state == _BUF:
            self._candidate(self._buf, 0, self._n)
        self._state = _OUT
        self._n = 0
        self._close()

    def next_event(self):
        """The next Fix, or None when more bytes are needed."""
        if self._events:
            return self._events.pop(0)
        return None

    # --- one candidate: b[s] == '$', e exclusive

    def _candidate(self, b, s, e):
        total = e - s
        while e > s and b[e - 1] <= 32:
            e -= 1
        if e - s <= 1:
            self.skipped_bytes += total
            return
        star = e - 3
        if star <= s or b[star] != 42:
            self.truncated += 1
            self.skipped_bytes += total
            self.last_error = ERR_TRUNCATED
            return
        c = b[e - 2]  # checksum hex digits, either case
        hi = c - 48 if 48 <= c <= 57 else c - 55 if 65 <= c <= 70 else c - 87 if 97 <= c <= 102 \
            else -1
        c = b[e - 1]
        lo = c - 48 if 48 <= c <= 57 else c - 55 if 65 <= c <= 70 else c - 87 if 97 <= c <= 102 \
            else -1
        if hi < 0 or lo < 0:
            self.truncated += 1
            self.skipped_bytes += total
            self.last_error = ERR_TRUNCATED
            return
        c = 0
        k = s + 1
        e4 = star - 3
        while k < e4:
            c ^= b[k] ^ b[k + 1] ^ b[k + 2] ^ b[k + 3]
            k += 4
        while k < star:
            c ^= b[k]
            k += 1
        if c != (hi << 4) | lo:
            self.bad_checksum += 1
            self.skipped_bytes += total
            self.last_error = ERR_CHECKSUM
            return
        self.sentences += 1
        if star - s < 6 or (star > s + 6 and b[s + 6] != 44):
            self.unknown += 1
            self.last_error = ERR_UNKNOWN
            return
        t0 = b[s + 1]
        t1 = b[s + 2]
        if not ((t0 == 71 and (t1 == 80 or t1 == 78 or t1 == 76 or t1 == 65 or t1 == 66))
                or (t0 == 66 and t1 == 68)):  # GP GN GL GA GB, BD
            self.unknown += 1
            self.last_error = ERR_UNKNOWN
            return
        ty = (b[s + 3] << 16) | (b[s + 4] << 8) | b[s + 5]
        try:
            if ty == _T_GSV:
                self._gsv(b, s, star)
            elif ty == _T_GSA:
                self._gsa(b, s, star)
            elif ty == _T_GGA:
                self._gga(b, s, star)
            elif ty == _T_RMC:
                self._rmc(b, s, star)
            else:
                self.unknown += 1
                self.last_error = ERR_UNKNOWN
        except ValueError:
            self.malformed += 1
            self.last_error = ERR_MALFORMED

    def _split(self, b, s, star):
        """Comma positions into self._f: field i (1-based) is b[f[i-1]+1 : f[i]]. Returns the
        number of fields."""
        f = self._f
        k = 0
        p = s + 6
        while p >= 0:
            if k >= _MAX_FIELDS:
                raise ValueError
            f[k] = p
            k += 1
            p = b.find(b",", p + 1, star)
        f[k] = star
        return k

    # --- sentence decoders: parse every field first (a ValueError leaves the epoch untouched),
    # --- then join the epoch and store.

    def _gga(self, b, s, star):
        nf = self._split(b, s, star)
        if nf < 9:
            raise ValueError
        f = self._f
        tod = _tod(b, f[0] + 1, f[1])
        c = self._c
        lat = _coord(b, f[1] + 1, f[2], f[2] + 1, f[3], 78, 83, 90, c, 0)
        lon = _coord(b, f[3] + 1, f[4], f[4] + 1, f[5], 69, 87, 180, c, 2)
        q = _uint(b, f[5] + 1, f[6])
        sats = _uint(b, f[6] + 1, f[7])
        hdop = _fixed(b, f[7] + 1, f[8], 1)
        alt = _fixed(b, f[8] + 1, f[9], 0)
        self._join(_GGA, tod)
        if lat and lon:
            self._position(c)
        self._e[_E_QUALITY] = q
        self._e[_E_SATS] = sats
        if hdop is not None:
            self._e[_E_HDOP] = hdop  # GGA's HDOP wins over GSA's
        self._e[_E_ALT] = alt

    def _rmc(self, b, s, star):
        nf = self._split(b, s, star)
        if nf < 9:
            raise ValueError
        f = self._f
        tod = _tod(b, f[0] + 1, f[1])
        st = b[f[1] + 1] if f[2] - f[1] == 2 else 0
        c = self._c
        lat = _coord(b, f[2] + 1, f[3], f[3] + 1, f[4], 78, 83, 90, c, 0)
        lon = _coord(b, f[4] + 1, f[5], f[5] + 1, f[6], 69, 87, 180, c, 2)
        kn = _fixed(b, f[6] + 1, f[7], 3)
        course = _fixed(b, f[7] + 1, f[8], 1)
        faa = 0
        if nf >= 12 and f[12] - f[11] == 2:
            faa = b[f[11] + 1]
        # The date is optional in practice: an unparsable one (the Telit's "2208-1") drops the
        # date only, not the position, as gpsd and pynmeagps do.
        days = -1
        s9 = f[8] + 1
        if f[9] - s9 == 6:
            try:
                dd = _uint(b, s9, s9 + 2)
                mo = _uint(b, s9 + 2, s9 + 4)
                yy = _uint(b, s9 + 4, s9 + 6)
                y = yy + (1900 if yy >= 80 else 2000)
                if _valid_date(y, mo, dd):
                    days = days_from_civil(y, mo, dd)
            except ValueError:
                pass
        self._join(_RMC, tod)
        if days >= 0:
            self._set_days(days)
        self._e[_E_STATUS] = st
        self._e[_E_FAA] = faa
        if lat and lon:
            self._position(c)
        if kn is not None:
            # knots (x1000) -> cm/s: 1 kn = 1852 m / 3600 s = 463/9 cm/s
            self._e[_E_SPEED] = (kn * 463 + 4500) // 9000
        if course is not None:
            self._e[_E_COURSE] = course

    def _gsa(self, b, s, star):
        nf = self._split(b, s, star)
        if nf < 17:
            raise ValueError
        f = self._f
        mode = _uint(b, f[1] + 1, f[2])
        used = 0
        i = 2
        while i < 14:
            if f[i + 1] - f[i] > 1:
                used += 1
            i += 1
        hdop = _fixed(b, f[15] + 1, f[16], 1)
        self._e[_E_MASK] |= _GSA
        if mode > self._e[_E_GSA_MODE]:
            self._e[_E_GSA_MODE] = mode
        self._e[_E_GSA_SATS] += used
        if self._e[_E_HDOP] is None:
            self._e[_E_HDOP] = hdop

    def _gsv(self, b, s, star):
        # $--GSV,total,num,in_view,...: only the in-view count of each talker's first message.
        p1 = b.find(b",", s + 7, star)
        if p1 < 0:
            raise ValueError
        p2 = b.find(b",", p1 + 1, star)
        if p2 < 0:
            raise ValueError
        p3 = b.find(b",", p2 + 1, star)
        if p3 < 0:
            p3 = star
        if _uint(b, p1 + 1, p2) == 1:
            v = _uint(b, p2 + 1, p3)
            if v >= 0:
                self._e[_E_MASK] |= _GSV
                self._e[_E_VIEW] = v if self._e[_E_VIEW] < 0 else self._e[_E_VIEW] + v

    def _position(self, c):
        e = self._e
        e[_E_LAT] = c[0]
        e[_E_LAT7] = c[1]
        e[_E_LON] = c[2]
        e[_E_LON7] = c[3]

    def _set_days(self, days):
        nb = self.not_before_days
        ro = False
        while days < nb:
            days += _ROLLOVER_DAYS
            ro = True
        self._e[_E_DAYS] = days
        self._e[_E_ROLLOVER] = ro

    # --- epochs

    def _join(self, kind, tod):
        m = self._e[_E_MASK]
        if m & _TIMED and (m & kind or tod != self._e[_E_TOD]):
            self._close()
        self._e[_E_MASK] |= kind
        self._e[_E_TOD] = tod

    def _close(self):
        m = self._e[_E_MASK]
        if not m & _TIMED:
            self._e[0:_N_EPOCH] = _EPOCH0
            return
        tod = self._e[_E_TOD]
        days = self._e[_E_DAYS]
        if days >= 0:
            self._e[_LAST_DAYS] = days
            self._e[_LAST_TOD] = tod
        elif tod >= 0 and self._e[_LAST_DAYS] >= 0:
            days = self._e[_LAST_DAYS]
            if tod + _HALF_DAY_MS < self._e[_LAST_TOD]:
                days += 1  # crossed midnight since the last dated epoch
            self._e[_LAST_DAYS] = days
            self._e[_LAST_TOD] = tod
        if tod >= 0 and days >= 0:
            t = days * 86400 + tod // 1000
            ms = tod % 1000
        else:
            t = None
            ms = 0
        lat = self._e[_E_LAT]
        valid = lat is not None
        if m & _RMC:
            faa = self._e[_E_FAA]
            valid = valid and self._e[_E_STATUS] == 65 and faa != 78 and faa != 69  # A; not N, E
        q = self._e[_E_QUALITY]
        if m & _GGA:
            valid = valid and 1 <= q <= 5
        mode = self._e[_E_GSA_MODE]
        if m & _GSA and mode:
            valid = valid and mode >= 2
        if not valid:
            fix = FIX_NONE
        elif mode == 3 or (mode == 0 and self._e[_E_ALT] is not None):
            fix = FIX_3D
        else:
            fix = FIX_2D
        hdop = self._e[_E_HDOP]
        sats = self._e[_E_SATS]
        if sats < 0:
            sats = self._e[_E_GSA_SATS] if m & _GSA else None
        self._events.append(Fix(
            t, ms, valid, fix,
            lat * 10000000 + self._e[_E_LAT7] if valid else None,
            self._e[_E_LON] * 10000000 + self._e[_E_LON7] if valid else None,
            self._e[_E_ALT], hdop, sats, self._e[_E_SPEED], self._e[_E_COURSE],
            q if m & _GGA and q >= 0 else None,
            chr(self._e[_E_STATUS]) if self._e[_E_STATUS] else None,
            self._e[_E_ROLLOVER],
            self._e[_E_VIEW] if self._e[_E_VIEW] >= 0 else None))
        self.epochs += 1
        self._e[0:_N_EPOCH] = _EPOCH0
