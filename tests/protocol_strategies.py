"""Hypothesis strategies for protocol messages, generated from spec.py (no field list here)."""

from __future__ import annotations

from hypothesis import strategies as st

from carecard.protocol import encode_frame, spec
from carecard.protocol.codec import INTEGER_RANGES, MESSAGE_TYPES
from carecard.protocol.errors import InvalidMessage

DEVICES = st.integers(min_value=10**14, max_value=10**15 - 1)  # 15-digit IMEIs
KEYS = st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32))
U32 = st.integers(min_value=0, max_value=2**32 - 1)

# Text that fits the MAX_STR byte limit in UTF-8, Chinese included.
TEXT = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                       st.sampled_from("大儿子网格员+0123456789")),
    max_size=spec.MAX_STR // 4,
)


def integer(kind: str, name: str) -> st.SearchStrategy[int]:
    low, high = INTEGER_RANGES[kind]
    if name == "lat_e7":
        low, high = -spec.LAT_E7_MAX, spec.LAT_E7_MAX
    elif name == "lon_e7":
        low, high = -spec.LON_E7_MAX, spec.LON_E7_MAX
    return st.integers(min_value=low, max_value=high)


POINT = st.fixed_dictionaries({
    "time": U32,
    "lat_e7": integer("i32", "lat_e7"),
    "lon_e7": integer("i32", "lon_e7"),
})


def field(name: str, kind: str, *, enums_as_codes: bool) -> st.SearchStrategy:
    if kind in INTEGER_RANGES:
        return integer(kind, name)
    if kind.startswith("enum:"):
        labels = spec.ENUMS[kind[5:]]
        if enums_as_codes:
            return st.integers(min_value=0, max_value=len(labels) - 1)
        return st.sampled_from(labels)
    if kind == "str":
        return TEXT
    if kind == "track":
        return st.lists(POINT, min_size=1, max_size=spec.MAX_TRACK_POINTS)
    if kind.startswith("list:"):
        return st.lists(fields(spec.STRUCTS[kind[5:]], enums_as_codes=enums_as_codes),
                        max_size=spec.MAX_CONTACTS)
    if kind == "commands":
        return st.lists(command(enums_as_codes=enums_as_codes), max_size=spec.MAX_COMMANDS)
    raise AssertionError(kind)


def fields(spec_fields: tuple, *, enums_as_codes: bool = False) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {name: field(name, kind, enums_as_codes=enums_as_codes) for name, kind, _d in spec_fields})


def command(*, enums_as_codes: bool = False) -> st.SearchStrategy[dict]:
    options = [
        fields(cmd_fields, enums_as_codes=enums_as_codes).map(
            lambda d, name=name: {**d, "cmd": name})
        for _code, name, cmd_fields in spec.COMMANDS
    ]
    return st.tuples(st.one_of(options), st.integers(0, 0xFFFF)).map(lambda t: {**t[0], "seq": t[1]})


def _fits_in_a_frame(msg: dict) -> bool:
    """Whether the message encodes into one frame. A track of MAX_TRACK_POINTS points with large
    values may not (rare: about one example in thousands); the encoder refuses it with a typed
    error (test_protocol_host.py: test_a_message_too_large_for_a_frame_is_refused)."""
    try:
        encode_frame(msg, bytes(16))
    except InvalidMessage as exc:
        return "exceeds" not in str(exc)  # any other refusal: let the test meet it
    return True


def message(type_name: str | None = None, *, direction: str | None = None,
            enums_as_codes: bool = False) -> st.SearchStrategy[dict]:
    names = [type_name] if type_name else [
        name for name, mt in MESSAGE_TYPES.items()
        if direction is None or (mt.direction == spec.DIR_UPLINK) == (direction == "uplink")]

    def build(name: str) -> st.SearchStrategy[dict]:
        header = st.fixed_dictionaries({
            "type": st.just(name), "device": DEVICES, "counter": U32, "time": U32,
            "clock_synced": st.booleans()})
        body = fields(MESSAGE_TYPES[name].fields, enums_as_codes=enums_as_codes)
        return st.tuples(header, body).map(lambda hb: {**hb[0], **hb[1]}).filter(_fits_in_a_frame)

    return st.sampled_from(names).flatmap(build)


def labelled(message: dict) -> dict:
    """The message as the decoder returns it: enum codes replaced by labels, direction added."""
    mtype = MESSAGE_TYPES[message["type"]]
    out = _labelled_fields(mtype.fields, message)
    out["direction"] = "uplink" if mtype.direction == spec.DIR_UPLINK else "downlink"
    return out


def _labelled_fields(spec_fields: tuple, values: dict) -> dict:
    out = dict(values)
    for name, kind, _d in spec_fields:
        value = values[name]
        if kind.startswith("enum:") and isinstance(value, int):
            out[name] = spec.ENUMS[kind[5:]][value]
        elif kind.startswith("list:"):
            out[name] = [_labelled_fields(spec.STRUCTS[kind[5:]], item) for item in value]
        elif kind == "commands":
            cmd_fields = {name: f for _c, name, f in spec.COMMANDS}
            out[name] = [_labelled_fields(cmd_fields[c["cmd"]], c) for c in value]
    return out
