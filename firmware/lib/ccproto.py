# The card's protocol codec. Every layout comes from ccspec (protocol/spec.py, the one definition,
# read at import); nothing here lists a field. It writes uplink frames into one preallocated
# buffer and reads downlink frames (acks with commands). The host's construct codec produces the
# same bytes: tests check it on this interpreter. The encoder refuses (InvalidMessage) every value
# the host would reject, by the same rules (ccspec.FIELDS, TEXT_RULES): the host never acks such a
# frame, and an outbox retrying it would jam behind it.
import struct

try:
    from micropython import const
except ImportError:  # CPython, for tooling only
    def const(x):
        return x

import ccspec
from cccrypto import FrameCrypto, tags_equal

_HEADER_FMT = ">BBBQII"
_HEADER_LEN = const(19)
_TAG_LEN = const(8)

_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i8": "b", "i16": "h", "i32": "i"}
_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "i8": 1, "i16": 2, "i32": 4}
_RANGES = {
    "u8": (0, 0xFF), "u16": (0, 0xFFFF), "u32": (0, 0xFFFFFFFF), "u64": (0, 0xFFFFFFFFFFFFFFFF),
    "i8": (-0x80, 0x7F), "i16": (-0x8000, 0x7FFF), "i32": (-0x80000000, 0x7FFFFFFF),
}
_RULES = ccspec.FIELDS
_POINT = tuple(f[0] for f in ccspec.TRACK_POINT)


class ProtoError(ValueError):
    """A rejected frame or message. `reason` matches the host's error reasons."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


class InvalidMessage(ProtoError):
    """A message given to the encoder breaks a rule of the protocol (the caller's error)."""

    def __init__(self, message):
        ProtoError.__init__(self, "invalid_message", message)


def _rule_problem(name, value):
    # What breaks the field's rule (range, or text as UTF-8 bytes), or None.
    rule = _RULES.get(name)
    if rule is None:
        return None
    if "min" in rule and not rule["min"] <= value <= rule["max"] and value != rule.get("unknown"):
        return "%s: %d is outside %d..%d" % (name, value, rule["min"], rule["max"])
    if "text" in rule:
        first, anywhere = ccspec.TEXT_RULES[rule["text"]]
        for i in range(len(value)):
            if chr(value[i]) not in anywhere and (i or chr(value[i]) not in first):
                return "%s: byte %d is not allowed in a %s text" % (name, i, rule["text"])
    return None


def _table(rows):
    by_name = {}
    by_code = {}
    for code, name, fields in rows:
        by_name[name] = (code, fields)
        by_code[code] = (name, fields)
    return by_name, by_code


_UP_BY_NAME, _UP_BY_CODE = _table(ccspec.UPLINK)
_DOWN_BY_NAME, _DOWN_BY_CODE = _table(ccspec.DOWNLINK)
_CMD_BY_NAME, _CMD_BY_CODE = _table(ccspec.COMMANDS)
_ENUM_CODES = {}
for _name, _labels in ccspec.ENUMS.items():
    _ENUM_CODES[_name] = {label: i for i, label in enumerate(_labels)}


# --- writing -----------------------------------------------------------------------------------

def _need(buf, pos, n):
    if pos + n > len(buf) - _TAG_LEN:
        raise ProtoError("oversize", "message does not fit in %d bytes" % ccspec.MAX_FRAME)


_PARTS = bytearray(16)  # scratch of _write_delta


def _write_delta(buf, pos, value, prev):
    """The zigzag varint of value - prev (u32 or i32 values), in small-int arithmetic only: on a
    32-bit card a Unix time or a longitude beyond 107.37 degrees in 1e-7 degree is no small int,
    and each operation on one would allocate (several per track point). struct.pack_into takes
    them as they are; the bytes give 16-bit parts."""
    p = _PARTS
    struct.pack_into(">qq", p, 0, value, prev)
    # the difference as hi * 65536 + lo, lo in 0..65535 (hi small: |value - prev| < 2**33)
    top = p[0] << 8 | p[1]
    if top & 0x8000:  # the sign
        top -= 65536
    hi = p[8] << 8 | p[9]
    if hi & 0x8000:
        hi -= 65536
    hi = (top - hi) * 65536 + (p[2] << 8 | p[3]) - (p[10] << 8 | p[11])
    hi = hi * 65536 + (p[4] << 8 | p[5]) - (p[12] << 8 | p[13])
    lo = (p[6] << 8 | p[7]) - (p[14] << 8 | p[15])
    if lo < 0:
        lo += 65536
        hi -= 1
    # zigzag: 2v for v >= 0, -2v - 1 for v < 0, still as hi * 65536 + lo
    if hi < 0:
        if lo:
            hi = -hi - 1
            lo = 65536 - lo
        else:
            hi = -hi
        hi *= 2
        lo = lo * 2 - 1
        if lo < 0:
            lo += 65536
            hi -= 1
    else:
        hi *= 2
        lo *= 2
    if lo >= 65536:
        lo -= 65536
        hi += 1
    while True:
        _need(buf, pos, 1)
        byte = lo & 0x7F
        lo = (lo >> 7) | ((hi & 0x7F) << 9)
        hi >>= 7
        if hi or lo:
            buf[pos] = byte | 0x80
            pos += 1
        else:
            buf[pos] = byte
            return pos + 1


def _check_int(kind, name, value):
    low, high = _RANGES[kind]
    if type(value) is not int or value < low or value > high:
        raise InvalidMessage("%s: %r is not an integer in %d..%d" % (name, value, low, high))
    problem = _rule_problem(name, value)
    if problem:
        raise InvalidMessage(problem)


def _text_bytes(name, value):
    # str, or UTF-8 bytes (a number read from flash): the host reads UTF-8 only
    if isinstance(value, str):
        data = value.encode()
    else:
        try:
            data = bytes(value)
            str(data, "utf-8")
        except (TypeError, UnicodeError):
            raise InvalidMessage("%s: not UTF-8 text" % name)
    if len(data) > ccspec.MAX_STR:
        raise InvalidMessage("%s: longer than %d bytes" % (name, ccspec.MAX_STR))
    problem = _rule_problem(name, data)
    if problem:
        raise InvalidMessage(problem)
    return data


def _write_fields(buf, pos, fields, values):
    for name, kind, _doc in fields:
        try:
            value = values[name]
        except KeyError:
            raise InvalidMessage("field %s missing" % name)
        if kind in _CODES:
            _check_int(kind, name, value)
            _need(buf, pos, _SIZES[kind])
            struct.pack_into(">" + _CODES[kind], buf, pos, value)
            pos += _SIZES[kind]
        elif kind.startswith("enum:"):
            codes = _ENUM_CODES[kind[5:]]
            if isinstance(value, str):
                if value not in codes:
                    raise InvalidMessage("%s: unknown value %s" % (name, value))
                value = codes[value]
            elif type(value) is not int or value < 0 or value >= len(codes):
                raise InvalidMessage("%s: unknown value %r" % (name, value))
            _need(buf, pos, 1)
            buf[pos] = value
            pos += 1
        elif kind == "str":
            data = _text_bytes(name, value)
            _need(buf, pos, 1 + len(data))
            buf[pos] = len(data)
            buf[pos + 1: pos + 1 + len(data)] = data
            pos += 1 + len(data)
        elif kind == "track":
            pos = _write_track(buf, pos, name, value)
        elif kind.startswith("list:"):
            item_fields = ccspec.STRUCTS[kind[5:]]
            if len(value) > ccspec.MAX_CONTACTS:
                raise InvalidMessage("%s: more than %d items" % (name, ccspec.MAX_CONTACTS))
            _need(buf, pos, 1)
            buf[pos] = len(value)
            pos += 1
            for item in value:
                pos = _write_fields(buf, pos, item_fields, item)
        else:
            # `commands` only travel downlink: the card never writes them.
            raise InvalidMessage("%s: the card cannot encode %s" % (name, kind))
    return pos


def _write_track(buf, pos, name, points):
    if not isinstance(points, (list, tuple)) or not 1 <= len(points) <= ccspec.MAX_TRACK_POINTS:
        raise InvalidMessage("%s: 1..%d points" % (name, ccspec.MAX_TRACK_POINTS))
    _need(buf, pos, 1)
    buf[pos] = len(points)
    pos += 1
    prev_t = prev_lat = prev_lon = 0
    t_name, lat_name, lon_name = _POINT
    for point in points:
        try:
            t, lat, lon = (point[t_name], point[lat_name], point[lon_name]) if isinstance(point, dict) else point
        except (KeyError, TypeError, ValueError):
            raise InvalidMessage("%s: a point is %s, %s, %s" % (name, t_name, lat_name, lon_name))
        _check_int("u32", t_name, t)
        _check_int("i32", lat_name, lat)
        _check_int("i32", lon_name, lon)
        pos = _write_delta(buf, pos, t, prev_t)
        pos = _write_delta(buf, pos, lat, prev_lat)
        pos = _write_delta(buf, pos, lon, prev_lon)
        prev_t, prev_lat, prev_lon = t, lat, lon
    return pos


class Encoder:
    """Uplink frames for one device, written into one buffer (valid until the next encode)."""

    def __init__(self, device, key, crypto=None):
        _check_int("u64", "device", device)
        self.device = device
        self.crypto = crypto or FrameCrypto(key)
        self._buf = bytearray(ccspec.MAX_FRAME)
        self._mv = memoryview(self._buf)

    def encode(self, mtype, values, counter, time, clock_synced=True):
        try:
            code, fields = _UP_BY_NAME[mtype]
        except KeyError:
            raise ProtoError("unknown_type", "no uplink message %s" % mtype)
        if not isinstance(values, dict):
            raise InvalidMessage("%s: fields must be a dict" % mtype)
        _check_int("u32", "counter", counter)
        _check_int("u32", "time", time)
        buf = self._buf
        flags = 0 if clock_synced else ccspec.FLAG_CLOCK_UNSYNCED
        struct.pack_into(_HEADER_FMT, buf, 0, ccspec.VERSION, code, flags, self.device, counter, time)
        end = _write_fields(buf, _HEADER_LEN, fields, values)
        self.crypto.crypt_into(buf, _HEADER_LEN, end, self.device, counter, ccspec.DIR_UPLINK)
        buf[end: end + _TAG_LEN] = self.crypto.tag(self._mv[:end])
        return self._mv[: end + _TAG_LEN]


# --- reading -------------------------------------------------------------------------------------

class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, pos, end):
        self.buf = buf
        self.pos = pos
        self.end = end

    def take(self, n):
        if self.pos + n > self.end:
            raise ProtoError("malformed", "payload ends inside a field")
        start = self.pos
        self.pos += n
        return start

    def varint(self):
        result = 0
        shift = 0
        while True:
            byte = self.buf[self.take(1)]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ProtoError("malformed", "varint too long")

    def zigzag(self):
        n = self.varint()
        return n >> 1 if not n & 1 else -((n + 1) >> 1)


def _read_fields(reader, fields):
    out = {}
    for name, kind, _doc in fields:
        if kind in _CODES:
            value = struct.unpack_from(">" + _CODES[kind], reader.buf, reader.take(_SIZES[kind]))[0]
            problem = _rule_problem(name, value)
            if problem:
                raise ProtoError("malformed", problem)
            out[name] = value
        elif kind.startswith("enum:"):
            labels = ccspec.ENUMS[kind[5:]]
            code = reader.buf[reader.take(1)]
            if code >= len(labels):
                raise ProtoError("malformed", "%s: undefined code %d" % (name, code))
            out[name] = labels[code]
        elif kind == "str":
            n = reader.buf[reader.take(1)]
            start = reader.take(n)
            try:
                out[name] = str(bytes(reader.buf[start: start + n]), "utf-8")
            except UnicodeError:
                raise ProtoError("malformed", "%s: not UTF-8" % name)
            problem = _rule_problem(name, reader.buf[start: start + n])
            if n > ccspec.MAX_STR or problem:
                raise ProtoError("malformed", problem or "%s: longer than %d bytes" % (name, ccspec.MAX_STR))
        elif kind.startswith("list:"):
            count = reader.buf[reader.take(1)]
            if count > ccspec.MAX_CONTACTS:
                raise ProtoError("malformed", "%s: %d items" % (name, count))
            item_fields = ccspec.STRUCTS[kind[5:]]
            out[name] = [_read_fields(reader, item_fields) for _ in range(count)]
        elif kind == "commands":
            count = reader.buf[reader.take(1)]
            if count > ccspec.MAX_COMMANDS:
                raise ProtoError("malformed", "%d commands" % count)
            commands = []
            for _ in range(count):
                seq = struct.unpack_from(">H", reader.buf, reader.take(2))[0]
                code = reader.buf[reader.take(1)]
                if code not in _CMD_BY_CODE:
                    raise ProtoError("malformed", "undefined command code %d" % code)
                cmd_name, cmd_fields = _CMD_BY_CODE[code]
                command = _read_fields(reader, cmd_fields)
                command["seq"] = seq
                command["cmd"] = cmd_name
                commands.append(command)
            out[name] = commands
        elif kind == "track":
            count = reader.buf[reader.take(1)]
            points = []
            t = lat = lon = 0
            for _ in range(count):
                t += reader.zigzag()
                lat += reader.zigzag()
                lon += reader.zigzag()
                points.append({"time": t, "lat_e7": lat, "lon_e7": lon})
            out[name] = points
        else:
            raise ProtoError("malformed", "unknown field kind %s" % kind)
    return out


class Decoder:
    """Checks and reads downlink frames addressed to this device.

    `decode` rejects frames whose counter is not above `last_counter`; the caller persists the
    counter with `accept(counter)` once it has acted on the frame.
    """

    def __init__(self, device, key, crypto=None, last_counter=-1):
        self.device = device
        self.crypto = crypto or FrameCrypto(key)
        self.last_counter = last_counter
        self._buf = bytearray(ccspec.MAX_FRAME)

    def decode(self, frame):
        size = len(frame)
        if size < ccspec.MIN_FRAME:
            raise ProtoError("truncated", "frame of %d bytes is too short" % size)
        if size > ccspec.MAX_FRAME:
            raise ProtoError("oversize", "frame of %d bytes is too long" % size)
        version, code, flags, device, counter, time = struct.unpack_from(_HEADER_FMT, frame, 0)
        if version != ccspec.VERSION:
            raise ProtoError("bad_version", "protocol version %d not supported" % version)
        if code not in _DOWN_BY_CODE:
            raise ProtoError("unknown_type", "message type %d is not a downlink" % code)
        if device != self.device:
            raise ProtoError("unknown_device", "frame is for device %d" % device)
        end = size - _TAG_LEN
        view = memoryview(frame)
        if not tags_equal(self.crypto.tag(view[:end]), view[end:]):
            raise ProtoError("bad_tag", "authentication failed")
        if flags & ~ccspec.FLAGS_KNOWN:
            raise ProtoError("malformed", "reserved flag bits set")
        if counter <= self.last_counter:
            raise ProtoError("replay", "downlink counter %d not above %d" % (counter, self.last_counter))
        buf = self._buf
        buf[:end] = view[:end]
        self.crypto.crypt_into(buf, _HEADER_LEN, end, device, counter, ccspec.DIR_DOWNLINK)
        name, fields = _DOWN_BY_CODE[code]
        reader = _Reader(buf, _HEADER_LEN, end)
        message = _read_fields(reader, fields)
        if reader.pos != end:
            raise ProtoError("malformed", "%d unexpected bytes after the payload" % (end - reader.pos))
        message["type"] = name
        message["direction"] = "downlink"
        message["device"] = device
        message["counter"] = counter
        message["time"] = time
        message["clock_synced"] = not flags & ccspec.FLAG_CLOCK_UNSYNCED
        return message

    def accept(self, counter):
        if counter > self.last_counter:
            self.last_counter = counter
