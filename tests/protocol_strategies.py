"""Hypothesis strategies for protocol messages, generated from spec.py (no field list here)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from carecard.protocol import encode_frame, spec
from carecard.protocol.codec import HEADER_STRUCT, INTEGER_RANGES, MESSAGE_TYPES, value_bounds
from carecard.protocol.crypto import FrameKeys
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
    """The values a field allows: its kind's range, narrowed by its rule (spec.FIELDS), and the
    rule's unknown value."""
    low, high = INTEGER_RANGES[kind]
    bounds = value_bounds(name)
    if bounds is None:
        return st.integers(min_value=low, max_value=high)
    allowed = st.integers(min_value=bounds[0], max_value=bounds[1])
    return allowed if bounds[2] is None else st.one_of(allowed, st.just(bounds[2]))


def text(name: str) -> st.SearchStrategy[str]:
    """Text a field allows: its text rule's characters (spec.TEXT_RULES), else any UTF-8."""
    rule = spec.FIELDS.get(name, {}).get("text")
    if rule is None:
        return TEXT
    first_only, anywhere = spec.TEXT_RULES[rule]
    return st.tuples(st.sampled_from(["", *first_only]), st.text(alphabet=anywhere, max_size=20)).map("".join)


POINT = st.fixed_dictionaries({name: integer(kind, name) for name, kind, _doc in spec.TRACK_POINT})


def field(name: str, kind: str, *, enums_as_codes: bool) -> st.SearchStrategy:
    if kind in INTEGER_RANGES:
        return integer(kind, name)
    if kind.startswith("enum:"):
        labels = spec.ENUMS[kind[5:]]
        if enums_as_codes:
            return st.integers(min_value=0, max_value=len(labels) - 1)
        return st.sampled_from(labels)
    if kind == "str":
        return text(name)
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


def unchecked_frame(message: dict, key: bytes) -> bytes:
    """An authentic frame built without the encoder's checks: what a faulty key holder could send."""
    mtype = MESSAGE_TYPES[message["type"]]
    keys = FrameKeys(key)
    header = HEADER_STRUCT.pack(spec.VERSION, mtype.code, 0, message["device"], message["counter"],
                                message["time"])
    body = header + keys.crypt(message["device"], message["counter"], mtype.direction,
                               mtype.payload.build(message))
    return body + keys.tag(body)


# --- values the protocol does not allow ----------------------------------------------------------


def _bad_integer(kind: str, name: str) -> st.SearchStrategy[Any]:
    low, high = INTEGER_RANGES[kind]
    options = [st.integers(max_value=low - 1), st.integers(min_value=high + 1),
               st.sampled_from([True, 1.5, "7", None])]
    bounds = value_bounds(name)
    if bounds is not None:
        outside = [v for v in (bounds[0] - 1, bounds[1] + 1) if low <= v <= high and v != bounds[2]]
        if outside:
            options.append(st.sampled_from(outside))
        if bounds[0] > low:
            options.append(st.integers(low, bounds[0] - 1).filter(lambda v: v != bounds[2]))
    return st.one_of(options)


def _bad_text(name: str) -> st.SearchStrategy[Any]:
    options = [st.just("字" * (spec.MAX_STR // 3 + 1)), st.sampled_from([7, None, ["x"]])]
    rule = spec.FIELDS.get(name, {}).get("text")
    if rule is not None:
        first_only, anywhere = spec.TEXT_RULES[rule]
        banned = st.characters(codec="utf-8", exclude_categories=("Cs",)).filter(
            lambda c: c not in anywhere and c not in first_only)
        options.append(st.tuples(text(name), banned, text(name)).map("".join))
        options.append(st.sampled_from(["+86;ATH", "1\r\nAT+CFUN=0", "12+3", "++1", "\u0661\u0662"]))
    return st.one_of(options)


def _bad_value(name: str, kind: str) -> st.SearchStrategy[Any]:
    if kind in INTEGER_RANGES:
        return _bad_integer(kind, name)
    if kind.startswith("enum:"):
        labels = spec.ENUMS[kind[5:]]
        return st.one_of(st.just(len(labels)), st.just(-1), st.just("no_such_label"), st.just(True))
    if kind == "str":
        return _bad_text(name)
    if kind == "track":
        bad_point = st.tuples(POINT, st.sampled_from(spec.TRACK_POINT)).flatmap(
            lambda t: _bad_integer(t[1][1], t[1][0]).map(lambda v, t=t: {**t[0], t[1][0]: v}))
        return st.one_of(
            st.just([]),
            st.lists(POINT, min_size=spec.MAX_TRACK_POINTS + 1, max_size=spec.MAX_TRACK_POINTS + 1),
            st.tuples(st.lists(POINT, max_size=5), bad_point, st.lists(POINT, max_size=5)).map(
                lambda t: t[0] + [t[1]] + t[2]),
            st.lists(POINT, min_size=1, max_size=3).map(lambda ps: ps + [{"time": 1}]),
        )
    raise AssertionError(kind)


MISSING = object()  # a field left out of the message


@st.composite
def invalid_message(draw: st.DrawFn, *, direction: str = "uplink") -> dict:
    """A message with one field the protocol does not allow (or missing): every encoder must
    refuse it with its typed error."""
    msg = draw(message(direction=direction))
    name, kind, _doc = draw(st.sampled_from(MESSAGE_TYPES[msg["type"]].fields))
    value = draw(st.one_of(_bad_value(name, kind), st.just(MISSING)))
    spoiled = dict(msg)
    if value is MISSING:
        del spoiled[name]
    else:
        spoiled[name] = value
    return spoiled
