"""Host codec: construct structures built from spec.py, plus frame encryption and authentication.

Public API (re-exported by carecard.protocol):

    encode_frame(message, key) -> bytes
    decode_frame(frame, keys) -> dict
    peek_header(frame) -> Header          (unauthenticated; for routing and logging only)

A message is a plain dict: {"type": "position", "device": 861234567890123, "counter": 7,
"time": 1764374400, "clock_synced": True, <payload fields of spec.py>}. Enum fields decode to
their names and encode from names or codes. `decode_frame` adds "direction" ("uplink" or
"downlink"). Commands in an ack are dicts {"seq": 3, "cmd": "set_time", "unix": ...}.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Union

from construct import (
    Adapter,
    MappingError,
    TerminatedError,
    Construct,
    ConstructError,
    Enum,
    Int8sb,
    Int8ub,
    Int16sb,
    Int16ub,
    Int32sb,
    Int32ub,
    Int64ub,
    PascalString,
    PrefixedArray,
    Struct,
    Switch,
    Terminated,
    ZigZag,
    this,
)

from construct.core import stream_read, stream_write

from carecard.protocol import spec
from carecard.protocol.crypto import FrameKeys, tags_equal
from carecard.protocol.errors import (
    BadTag,
    BadVersion,
    InvalidMessage,
    MalformedFrame,
    OversizeFrame,
    ProtocolError,
    TruncatedFrame,
    UnknownDevice,
    UnknownType,
)
from carecard.protocol.generated import compile_generated

# --- construct building blocks, one per field kind of spec.py -------------------------------

INTEGERS: dict[str, Construct] = {
    "u8": Int8ub, "u16": Int16ub, "u32": Int32ub, "u64": Int64ub,
    "i8": Int8sb, "i16": Int16sb, "i32": Int32sb,
}
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "u8": (0, 0xFF), "u16": (0, 0xFFFF), "u32": (0, 0xFFFFFFFF), "u64": (0, 2**64 - 1),
    "i8": (-0x80, 0x7F), "i16": (-0x8000, 0x7FFF), "i32": (-0x80000000, 0x7FFFFFFF),
}
Text = PascalString(Int8ub, "utf8")


_POINT_NAMES = tuple(name for name, _kind, _doc in spec.TRACK_POINT)


class TrackAdapter(Adapter):
    """Points as absolute {time, lat_e7, lon_e7} (spec.TRACK_POINT) in Python, zigzag LEB128
    differences from the previous point (the first from zeros) on the wire."""

    def _decode(self, obj, context, path):
        time = lat = lon = 0
        points = []
        t_name, lat_name, lon_name = _POINT_NAMES
        for step in obj:
            time += step.dt
            lat += step.dlat
            lon += step.dlon
            points.append({t_name: time, lat_name: lat, lon_name: lon})
        return points

    def _encode(self, obj, context, path):
        time = lat = lon = 0
        steps = []
        t_name, lat_name, lon_name = _POINT_NAMES
        for point in obj:
            steps.append({"dt": point[t_name] - time, "dlat": point[lat_name] - lat,
                          "dlon": point[lon_name] - lon})
            time, lat, lon = point[t_name], point[lat_name], point[lon_name]
        return steps


Track = TrackAdapter(PrefixedArray(Int8ub, Struct("dt" / ZigZag, "dlat" / ZigZag, "dlon" / ZigZag)))
_NO_RULE: dict[str, Any] = {}


def field_rule(name: str) -> dict[str, Any]:
    """The value rule of a field (spec.FIELDS; empty when it has none)."""
    return spec.FIELDS.get(name, _NO_RULE)


def value_bounds(name: str) -> tuple[int, int, int | None] | None:
    """(min, max, unknown value or None) of a field whose rule narrows its range, else None."""
    rule = field_rule(name)
    if "min" not in rule and "max" not in rule:
        return None
    return rule["min"], rule["max"], rule.get("unknown")


def text_problem(name: str, value: str) -> str | None:
    """What breaks the field's text rule (spec.FIELDS "text", spec.TEXT_RULES), or None."""
    rule = field_rule(name).get("text")
    if rule is None:
        return None
    first_only, anywhere = spec.TEXT_RULES[rule]
    for i, char in enumerate(value):
        if char not in anywhere and not (i == 0 and char in first_only):
            allowed = (f"an optional leading {first_only!r}, then " if first_only else "") + \
                f"only {anywhere!r}"
            return f"character {char!r} at {i} is not allowed in a {rule} text ({allowed})"
    return None


def _range_text(name: str, low: int, high: int) -> str:
    human = field_rule(name).get("human")
    if human is None:
        return f"{low}..{high}"
    _twin, divisor, unit = human
    return f"{low / divisor:g}..{high / divisor:g} {unit}".rstrip()


def enum_construct(name: str) -> Construct:
    return Enum(Int8ub, **{label: code for code, label in enumerate(spec.ENUMS[name])})


def field_construct(kind: str) -> Construct:
    if kind in INTEGERS:
        return INTEGERS[kind]
    if kind == "str":
        return Text
    if kind == "track":
        return Track
    if kind.startswith("enum:"):
        return enum_construct(kind[5:])
    if kind.startswith("list:"):
        return PrefixedArray(Int8ub, fields_struct(spec.STRUCTS[kind[5:]]))
    if kind == "commands":
        return Commands
    raise ValueError(f"spec.py: unknown field kind {kind!r}")


def fields_struct(fields: tuple) -> Struct:
    return Struct(*(name / field_construct(kind) for name, kind, _doc in fields))


FIXED_KINDS = frozenset(INTEGERS)


def is_fixed(kind: str) -> bool:
    return kind in FIXED_KINDS or kind.startswith("enum:")


# The header keys decode_frame adds after the payload fields, in this order.
_MESSAGE_TAIL = ("type", "direction", "device", "counter", "time", "clock_synced")


class PackedFields(Construct):
    """A whole payload of fixed-size integer and enum fields, parsed with one struct call.

    Equivalent to Struct(name / Int..., name / Enum(Int8ub, ...), ...) byte for byte (a test
    checks it), but one `struct.unpack` instead of one per field: this is the hot path of the
    receiver. Enum fields parse to their labels; an undefined code is a MappingError; bytes
    after the last field are a TerminatedError, as with `Terminated` in a Struct.
    """

    def __init__(self, fields: tuple):
        super().__init__()
        self.names = tuple(name for name, _kind, _doc in fields)
        self.packer = packer = struct.Struct(">" + "".join(
            _STRUCT_CODES[kind] if kind in FIXED_KINDS else "B" for _n, kind, _d in fields))
        # (position, labels, {label: code}) for each enum field
        self.enums = tuple(
            (i, spec.ENUMS[kind[5:]], {label: code for code, label in enumerate(spec.ENUMS[kind[5:]])})
            for i, (_n, kind, _d) in enumerate(fields) if kind.startswith("enum:"))
        self.size = packer.size
        # decode_frame's fast path: the payload's names then the header's, one dict(zip()) call
        self.message_names = self.names + _MESSAGE_TAIL

    def _parse(self, stream, context, path):
        data = stream_read(stream, self.packer.size, path)
        if stream.read(1):
            raise TerminatedError("unexpected bytes after the payload", path=path)
        return self.parse_exact(data)

    def parse_exact(self, data: bytes) -> dict[str, Any]:
        """Parse a payload of exactly `sizeof()` bytes (the receiver's hot path, no stream)."""
        values = list(self.packer.unpack(data))
        for i, labels, _codes in self.enums:
            code = values[i]
            if code >= len(labels):
                raise MappingError(f"{self.names[i]}: undefined code {code}")
            values[i] = labels[code]
        return dict(zip(self.names, values))

    def _build(self, obj, stream, context, path):
        values = [obj[name] for name in self.names]
        for i, _labels, codes in self.enums:
            if isinstance(values[i], str):
                if values[i] not in codes:
                    raise MappingError(f"{self.names[i]}: undefined label {values[i]!r}", path=path)
                values[i] = codes[values[i]]
        try:
            data = self.packer.pack(*values)
        except struct.error as exc:
            raise MappingError(f"cannot pack: {exc}", path=path) from None
        stream_write(stream, data, self.packer.size, path)
        return obj

    def _sizeof(self, context, path):
        return self.packer.size


def payload_construct(fields: tuple) -> Construct:
    """The payload of one message type; bytes left after the last field are an error."""
    if all(is_fixed(kind) for _n, kind, _d in fields):
        return PackedFields(fields)
    return Struct(*(name / field_construct(kind) for name, kind, _doc in fields), Terminated)


class CommandAdapter(Adapter):
    """Flat {"seq", "cmd", **args} in Python; seq, code, then the command's fields on the wire."""

    def _decode(self, obj, context, path):
        out = {"seq": obj.seq, "cmd": obj.cmd}
        if obj.args is not None:
            out.update(obj.args)
        return out

    def _encode(self, obj, context, path):
        args = {k: v for k, v in obj.items() if k not in ("seq", "cmd")}
        return {"seq": obj["seq"], "cmd": obj["cmd"], "args": args}


COMMAND_CODES = {name: code for code, name, _fields in spec.COMMANDS}
COMMAND_FIELDS = {name: fields for _code, name, fields in spec.COMMANDS}
Command = CommandAdapter(Struct(
    "seq" / Int16ub,
    "cmd" / Enum(Int8ub, **COMMAND_CODES),
    "args" / Switch(this.cmd, {name: fields_struct(fields) for name, fields in COMMAND_FIELDS.items()}),
))
Commands = PrefixedArray(Int8ub, Command)

Header = Struct(*(name / INTEGERS[kind] for name, kind, _doc in spec.HEADER))
# The same header as a plain struct format, derived from the same definition, for the hot path.
_STRUCT_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q", "i8": "b", "i16": "h", "i32": "i"}
HEADER_STRUCT = struct.Struct(">" + "".join(_STRUCT_CODES[kind] for _n, kind, _d in spec.HEADER))
assert HEADER_STRUCT.size == spec.HEADER_LEN == Header.sizeof()
_unpack_header = HEADER_STRUCT.unpack_from


class MessageType(NamedTuple):
    code: int
    name: str
    direction: int  # spec.DIR_UPLINK or spec.DIR_DOWNLINK
    fields: tuple
    payload: Construct  # compiled where construct can compile it
    checks: tuple | None  # (field, low, high, unknown) checks after parsing; None = full _check_fields
    packed: PackedFields | None  # fixed layouts: parsed without a stream
    direction_name: str
    # fixed layouts: (payload, device, counter, time, synced) -> the checked message, or None
    # when an enum code is undefined (the general path then says which); see _message_builder
    build_message: Callable[..., dict[str, Any] | None] | None = None
    # an older protocol version's layout: the fields it lacks, with the values its frames
    # stand for (spec.ADDED), added to each decoded message
    fill: tuple = ()


def _out_of_range(type_name: str, device: int, counter: int, field: str, value: int) -> None:
    low, high, _unknown = value_bounds(field)  # type: ignore[misc]
    raise MalformedFrame(f"{type_name} from device {device} counter {counter}: {field} {value} "
                         f"is out of range ({_range_text(field, low, high)})")


def _message_builder(name: str, direction_name: str, packed: PackedFields,
                     checks: tuple, label: str = "") -> Callable[..., dict[str, Any] | None]:
    """The receiver's hot path for one fixed-layout type, compiled from its layout: one unpack,
    enum labels by index, the coordinate bounds, one dict display with the header keys. The same
    message as parse_exact plus the header keys (a test compares them for every type)."""
    fields = [f"v{i}" for i in range(len(packed.names))]
    lines = ["def _build(payload, device, counter, time, synced):",
             f"    {', '.join(fields)}{',' if len(fields) == 1 else ''} = _unpack(payload)" if fields else
             "    _unpack(payload)"]
    values = list(fields)
    for i, labels, _codes in packed.enums:
        lines.append(f"    if v{i} >= {len(labels)}:")
        lines.append("        return None")
        values[i] = f"_labels_{i}[v{i}]"
    for field, low, high, unknown in checks:
        i = packed.names.index(field)
        allowed = f"{low!r} <= v{i} <= {high!r}"
        if unknown is not None:
            allowed += f" or v{i} == {unknown!r}"
        lines.append(f"    if not ({allowed}):")
        lines.append(f"        _out_of_range({name!r}, device, counter, {field!r}, v{i})")
    items = [f"{n!r}: {v}" for n, v in zip(packed.names, values)]
    items += [f"'type': {name!r}", f"'direction': {direction_name!r}", "'device': device",
              "'counter': counter", "'time': time", "'clock_synced': synced"]
    lines.append("    return {" + ", ".join(items) + "}")
    namespace: dict[str, Any] = {"_unpack": packed.packer.unpack, "_out_of_range": _out_of_range}
    for i, labels, _codes in packed.enums:
        namespace[f"_labels_{i}"] = labels
    exec(compile_generated("\n".join(lines) + "\n", f"message builder {name}{label}"), namespace)
    return namespace["_build"]


def _decode_checks(fields: tuple) -> tuple | None:
    """Fixed layouts need only their fields' narrower ranges (spec.FIELDS) checked after parsing
    (enums are checked by PackedFields, integer widths by the layout): (name, min, max, unknown)
    for each; variable layouts get the full check (None)."""
    if not all(is_fixed(kind) for _n, kind, _d in fields):
        return None
    return tuple((name, *bounds) for name, _k, _d in fields
                 if (bounds := value_bounds(name)) is not None)


def _message_type(code: int, name: str, direction: int, fields: tuple, fill: tuple = (),
                  label: str = "") -> MessageType:
    payload = payload_construct(fields)
    packed = payload if isinstance(payload, PackedFields) else None
    direction_name = "uplink" if direction == spec.DIR_UPLINK else "downlink"
    checks = _decode_checks(fields)
    return MessageType(code, name, direction, fields, payload.compile(), checks, packed,
                       direction_name,
                       _message_builder(name, direction_name, packed, checks, label) if packed else None,
                       fill)


def fields_of_version(name: str, fields: tuple, version: int) -> tuple[tuple, tuple]:
    """(the fields a message type has in protocol `version`, (name, value) of those it lacks
    there: the value its frames stand for, as decoded, from spec.ADDED)."""
    kept, fill = [], []
    for field in fields:
        added = spec.ADDED.get((name, field[0]))
        if added is None or added[0] <= version:
            kept.append(field)
            continue
        kind = field[1]
        value = spec.ENUMS[kind[5:]][added[1]] if kind.startswith("enum:") else added[1]
        fill.append((field[0], value))
    return tuple(kept), tuple(fill)


MESSAGE_TYPES: dict[str, MessageType] = {}
MESSAGE_CODES: dict[int, MessageType] = {}
# Older versions the host still decodes: version -> code -> its layout there.
VERSION_CODES: dict[int, dict[int, MessageType]] = {spec.VERSION: MESSAGE_CODES}
for _direction, _table in ((spec.DIR_UPLINK, spec.UPLINK), (spec.DIR_DOWNLINK, spec.DOWNLINK)):
    for _code, _name, _fields in _table:
        _mt = _message_type(_code, _name, _direction, _fields)
        MESSAGE_TYPES[_name] = _mt
        MESSAGE_CODES[_code] = _mt
        for _version in range(spec.OLDEST_VERSION, spec.VERSION):
            _kept, _fill = fields_of_version(_name, _fields, _version)
            VERSION_CODES.setdefault(_version, {})[_code] = (
                _message_type(_code, _name, _direction, _kept, _fill, f" (version {_version})")
                if _fill else _mt)

# --- keys ------------------------------------------------------------------------------------

KeySource = Union[bytes, bytearray, FrameKeys, Mapping[int, Any], Callable[[int], Any]]


class KeyRing:
    """Device id -> derived keys, with the derivation cached. Accepts raw keys or FrameKeys."""

    def __init__(self, keys: Mapping[int, bytes | FrameKeys] | None = None):
        self._keys: dict[int, FrameKeys] = {}
        # `get(device)`: the keys of a device, or None. The dict's own method, bound once: the
        # receiver looks a key up for every frame and every ack (the dict is changed in place,
        # never replaced).
        self.get: Callable[[int], FrameKeys | None] = self._keys.get
        for device, key in (keys or {}).items():
            self.add(device, key)

    def add(self, device: int, key: bytes | FrameKeys) -> None:
        self._keys[device] = key if isinstance(key, FrameKeys) else FrameKeys(key)

    def remove(self, device: int) -> None:
        self._keys.pop(device, None)

    def __contains__(self, device: object) -> bool:
        return device in self._keys

    def __len__(self) -> int:
        return len(self._keys)


_single_key_cache: dict[bytes, FrameKeys] = {}


def _frame_keys_for(keys: KeySource, device: int) -> FrameKeys:
    if isinstance(keys, KeyRing):
        found = keys.get(device)
    elif isinstance(keys, FrameKeys):
        found = keys
    elif isinstance(keys, (bytes, bytearray)):
        found = _single_key_cache.get(bytes(keys))
        if found is None:
            found = FrameKeys(bytes(keys))
            if len(_single_key_cache) > 256:
                _single_key_cache.clear()
            _single_key_cache[bytes(keys)] = found
    elif isinstance(keys, Mapping):
        raw = keys.get(device)
        found = None if raw is None else (raw if isinstance(raw, FrameKeys) else FrameKeys(raw))
    elif callable(keys):
        raw = keys(device)
        found = None if raw is None else (raw if isinstance(raw, FrameKeys) else FrameKeys(raw))
    else:
        raise TypeError("keys must be a key, a KeyRing, a mapping or a callable")
    if found is None:
        raise UnknownDevice(f"no key for device {device}: provision it first (carecard devices add)")
    return found


# --- validation shared by encode and decode --------------------------------------------------


def _check_fields(fields: tuple, values: Mapping[str, Any], where: str, error: type[ProtocolError]) -> None:
    """Range and shape checks the byte layout alone does not enforce."""
    for name, kind, _doc in fields:
        if name not in values:
            raise error(f"{where}: field {name!r} missing")
        value = values[name]
        here = f"{where}.{name}"
        if kind in INTEGER_RANGES:
            lo, hi = INTEGER_RANGES[kind]
            if type(value) is not int or not lo <= value <= hi:
                raise error(f"{here}: {value!r} is not an integer in {lo}..{hi} ({kind})")
            bounds = value_bounds(name)
            if bounds is not None and not bounds[0] <= value <= bounds[1] and value != bounds[2]:
                raise error(f"{here}: {value} is outside {_range_text(name, bounds[0], bounds[1])}")
        elif kind.startswith("enum:"):
            labels = spec.ENUMS[kind[5:]]
            if isinstance(value, str) and value in labels:
                continue
            if type(value) is int and 0 <= value < len(labels):
                continue
            raise error(f"{here}: {value!r} is not one of {', '.join(labels)}")
        elif kind == "str":
            if not isinstance(value, str):
                raise error(f"{here}: expected text, got {type(value).__name__}")
            try:
                size = len(value.encode("utf-8"))
            except UnicodeError:  # a lone surrogate
                raise error(f"{here}: not encodable as UTF-8") from None
            if size > spec.MAX_STR:
                raise error(f"{here}: longer than {spec.MAX_STR} bytes of UTF-8")
            problem = text_problem(name, value)
            if problem is not None:
                raise error(f"{here}: {value!r}: {problem}")
        elif kind == "track":
            if not isinstance(value, list) or not 1 <= len(value) <= spec.MAX_TRACK_POINTS:
                raise error(f"{here}: expected 1..{spec.MAX_TRACK_POINTS} points")
            for i, point in enumerate(value):
                if not isinstance(point, Mapping):
                    raise error(f"{here}[{i}]: expected a point object")
                _check_fields(spec.TRACK_POINT, point, f"{here}[{i}]", error)
        elif kind.startswith("list:"):
            if not isinstance(value, list) or len(value) > spec.MAX_CONTACTS:
                raise error(f"{here}: expected a list of at most {spec.MAX_CONTACTS} items")
            for i, item in enumerate(value):
                if not isinstance(item, Mapping):
                    raise error(f"{here}[{i}]: expected an object")
                _check_fields(spec.STRUCTS[kind[5:]], item, f"{here}[{i}]", error)
        elif kind == "commands":
            if not isinstance(value, list) or len(value) > spec.MAX_COMMANDS:
                raise error(f"{here}: expected a list of at most {spec.MAX_COMMANDS} commands")
            for i, command in enumerate(value):
                if not isinstance(command, Mapping) or command.get("cmd") not in COMMAND_FIELDS:
                    raise error(f"{here}[{i}]: cmd must be one of {', '.join(COMMAND_FIELDS)}")
                _check_fields((("seq", "u16", ""),) + COMMAND_FIELDS[command["cmd"]], command,
                              f"{here}[{i}]", error)


# --- frames ----------------------------------------------------------------------------------


class FrameHeader(NamedTuple):
    version: int
    type: int
    flags: int
    device: int
    counter: int
    time: int


def peek_header(frame: bytes) -> FrameHeader:
    """The clear header, unauthenticated: use only to find the key or to log."""
    if len(frame) < spec.MIN_FRAME:
        raise TruncatedFrame(f"frame of {len(frame)} bytes is shorter than the minimum {spec.MIN_FRAME}")
    return FrameHeader(*HEADER_STRUCT.unpack_from(frame))


def checked_header(frame: bytes) -> dict[str, Any]:
    """The clear header, unauthenticated, after the checks decode_frame makes before it needs a
    key (size, version, message type): type and direction by name. Raises what _header raises."""
    mtype, flags, device, counter, time = _header(frame, "frame", _MIN_FRAME)
    return {"type": mtype.name, "direction": mtype.direction_name, "device": device,
            "counter": counter, "time": time, "clock_synced": not flags & spec.FLAG_CLOCK_UNSYNCED,
            "flags": flags}


def frame_tag(frame: bytes) -> bytes:
    """The authentication tag: with (device, counter) it identifies a frame's content."""
    return bytes(frame[-spec.TAG_LEN:])


def encode_frame(message: Mapping[str, Any], key: KeySource, version: int = spec.VERSION) -> bytes:
    """Encode, encrypt and authenticate a message dict in protocol `version` (an older one
    leaves out the fields added since). Raises InvalidMessage on bad input."""
    if not isinstance(message, Mapping):
        raise InvalidMessage("message must be an object")
    mtype = MESSAGE_TYPES.get(message.get("type"))  # type: ignore[arg-type]
    if mtype is None:
        raise InvalidMessage(f"unknown message type {message.get('type')!r}: one of {', '.join(MESSAGE_TYPES)}")
    if version != spec.VERSION:
        if version not in VERSION_CODES:
            raise InvalidMessage(f"protocol version {version!r} is not one of "
                                 f"{spec.OLDEST_VERSION}..{spec.VERSION}")
        mtype = VERSION_CODES[version][mtype.code]
    where = mtype.name
    for name, kind in (("device", "u64"), ("counter", "u32"), ("time", "u32")):
        value = message.get(name)
        lo, hi = INTEGER_RANGES[kind]
        if type(value) is not int or not lo <= value <= hi:
            raise InvalidMessage(f"{where}.{name}: {value!r} is not an integer in {lo}..{hi}")
    _check_fields(mtype.fields, message, where, InvalidMessage)
    try:
        payload = mtype.payload.build(message)
    except (ConstructError, UnicodeError, TypeError, ValueError, KeyError) as exc:
        raise InvalidMessage(f"{where}: cannot encode: {exc}") from None
    flags = 0 if message.get("clock_synced", True) else spec.FLAG_CLOCK_UNSYNCED
    header = HEADER_STRUCT.pack(version, mtype.code, flags, message["device"],
                                message["counter"], message["time"])
    frame_keys = _frame_keys_for(key, message["device"])
    body = header + frame_keys.crypt(message["device"], message["counter"], mtype.direction, payload)
    frame = body + frame_keys.tag(body)
    if len(frame) > spec.MAX_FRAME:
        raise InvalidMessage(f"{where}: encoded frame of {len(frame)} bytes exceeds {spec.MAX_FRAME}")
    return frame


_MIN_FRAME = spec.MIN_FRAME
_MAX_FRAME = spec.MAX_FRAME
_VERSION = spec.VERSION
_VERSIONS_TEXT = (f"{spec.OLDEST_VERSION} to {spec.VERSION}" if spec.OLDEST_VERSION < spec.VERSION
                  else str(spec.VERSION))
_TAG_LEN = spec.TAG_LEN
_HEADER_LEN = spec.HEADER_LEN
_FLAGS_UNKNOWN = ~spec.FLAGS_KNOWN
_FLAG_CLOCK_UNSYNCED = spec.FLAG_CLOCK_UNSYNCED


def _header(data: bytes, what: str, minimum: int) -> tuple[MessageType, int, int, int, int]:
    """(message type, flags, device, counter, time) of a frame's header, its size and version
    checked first. Raises TruncatedFrame, OversizeFrame, BadVersion or UnknownType."""
    size = len(data)
    if size < minimum:
        raise TruncatedFrame(f"{what} of {size} bytes is shorter than the minimum {minimum}")
    if size > _MAX_FRAME:
        raise OversizeFrame(f"{what} of {size} bytes exceeds the maximum {spec.MAX_FRAME}")
    version, code, flags, device, counter, time = _unpack_header(data)
    if version == _VERSION:
        mtype = MESSAGE_CODES.get(code)
    else:
        older = VERSION_CODES.get(version)
        if older is None:
            raise BadVersion(f"protocol version {version} is not supported (this receiver speaks "
                             f"{_VERSIONS_TEXT})")
        mtype = older.get(code)
    if mtype is None:
        raise UnknownType(f"message type code {code} is not defined in protocol version {version}")
    return mtype, flags, device, counter, time


def decode_frame(frame: bytes, keys: KeySource, opened: list[bytes] | None = None) -> dict[str, Any]:
    """Check, authenticate, decrypt and parse one frame. Raises a ProtocolError subclass.

    With a list `opened`, the opened frame is appended to it once the frame is authentic: its
    header followed by the decrypted payload (no tag). `parse_opened` gives the same message
    back from it, with no key: the compact form in which the receiver logs a frame's event."""
    mtype, flags, device, counter, time = _header(frame, "frame", _MIN_FRAME)
    size = len(frame)
    frame_keys = keys.get(device) if type(keys) is KeyRing else None
    if frame_keys is None:
        frame_keys = _frame_keys_for(keys, device)
    cut = size - _TAG_LEN
    body = frame[:cut]
    if not tags_equal(frame_keys.tag(body), frame[cut:]):
        raise BadTag(f"authentication failed for device {device} counter {counter}: "
                     "wrong key, corrupted or forged frame")
    if flags & _FLAGS_UNKNOWN:
        raise MalformedFrame(f"device {device} counter {counter}: reserved flag bits 0x{flags:02x} set")
    payload = frame_keys.crypt(device, counter, mtype.direction, body[_HEADER_LEN:])
    if opened is not None:
        opened.append(body[:_HEADER_LEN] + payload)
    return _message(mtype, payload, device, counter, time, flags)


def parse_opened(opened: bytes) -> dict[str, Any]:
    """The message of an opened frame (as decode_frame hands it out: header and decrypted payload,
    authenticated when it was decoded). Raises a ProtocolError subclass for anything else."""
    if not isinstance(opened, (bytes, bytearray)):
        raise MalformedFrame(f"an opened frame is bytes, not {type(opened).__name__}")
    mtype, flags, device, counter, time = _header(opened, "opened frame", _HEADER_LEN)
    if flags & _FLAGS_UNKNOWN:
        raise MalformedFrame(f"device {device} counter {counter}: reserved flag bits 0x{flags:02x} set")
    return _message(mtype, bytes(opened[_HEADER_LEN:]), device, counter, time, flags)


def _message(mtype: MessageType, payload: bytes, device: int, counter: int, time: int,
             flags: int) -> dict[str, Any]:
    """The message dict of a decrypted payload: fields, enum labels, header keys; checked."""
    packed = mtype.packed
    fixed = packed is not None and len(payload) == packed.size
    if fixed:
        # the hot path: one compiled function (None: an undefined enum code, said below)
        message = mtype.build_message(payload, device, counter, time, not flags & _FLAG_CLOCK_UNSYNCED)
        if message is not None:
            if mtype.fill:
                message.update(mtype.fill)
            return message
    try:
        message = packed.parse_exact(payload) if fixed else _plain(mtype.payload.parse(payload))
    except (ConstructError, UnicodeError, ValueError, OverflowError, TypeError) as exc:
        raise MalformedFrame(f"{mtype.name} from device {device} counter {counter}: "
                             f"payload does not parse: {type(exc).__name__}: {exc}") from None
    message.update(type=mtype.name, direction=mtype.direction_name, device=device, counter=counter,
                   time=time, clock_synced=not flags & _FLAG_CLOCK_UNSYNCED)
    if mtype.checks is None:
        _check_fields(mtype.fields, message, f"{mtype.name} from device {device} counter {counter}",
                      MalformedFrame)
    else:
        for name, low, high, unknown in mtype.checks:
            if not low <= message[name] <= high and message[name] != unknown:
                _out_of_range(mtype.name, device, counter, name, message[name])
    if mtype.fill:
        message.update(mtype.fill)
    return message



def _plain(value: Any) -> Any:
    """construct Containers/ListContainers to plain dicts/lists; enum labels to plain str."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value
