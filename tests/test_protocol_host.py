"""Host codec: round trips, size budget, typed rejection of every damaged frame, replay logic."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from carecard.protocol import (
    BadTag,
    BadVersion,
    InvalidMessage,
    KeyRing,
    MalformedFrame,
    OversizeFrame,
    ProtocolError,
    ReplayWindow,
    TruncatedFrame,
    UnknownDevice,
    UnknownType,
    Verdict,
    decode_frame,
    encode_frame,
    frame_tag,
    parse_opened,
    spec,
)
from carecard.protocol.codec import INTEGER_RANGES, MESSAGE_TYPES, PackedFields, fields_struct

from protocol_strategies import KEYS, invalid_message, labelled, message, unchecked_frame

KEY = bytes(range(16))
POSITION = {
    "type": "position", "device": 861234567890123, "counter": 7, "time": 1764374400,
    "lat_e7": 249012345, "lon_e7": 1184567890, "alt_m": 30, "hdop_x10": 9, "sats": 8,
    "fix": "3d", "fix_age_s": 3, "speed_cms": 120, "course_x10": 900, "source": "fresh",
}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(message(), KEYS)
def test_every_message_round_trips(msg, key):
    frame = encode_frame(msg, key)
    assert spec.MIN_FRAME <= len(frame) <= spec.MAX_FRAME
    assert decode_frame(frame, key) == labelled(msg)


def test_a_message_too_large_for_a_frame_is_refused() -> None:
    """A track of MAX_TRACK_POINTS points of large values does not fit MAX_FRAME: the encoder
    refuses it with a typed error naming both sizes (the message strategies leave such
    messages out of the round trips)."""
    points = [{"time": 4_000_000_000 - i * 7919, "lat_e7": (-1) ** i * (spec.LAT_E7_MAX - i),
               "lon_e7": (-1) ** (i + 1) * (spec.LON_E7_MAX - i)} for i in range(spec.MAX_TRACK_POINTS)]
    msg = {"type": "track", "device": 861234567890123, "counter": 7, "time": 1_800_000_000,
           "clock_synced": True, "points": points, "hdop_x10": 12, "sats": 8}
    with pytest.raises(InvalidMessage, match=rf"track: encoded frame of \d+ bytes exceeds {spec.MAX_FRAME}"):
        encode_frame(msg, bytes(16))
    assert encode_frame({**msg, "points": points[:10]}, bytes(16))  # fewer points fit


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(message(), KEYS)
def test_an_opened_frame_parses_to_the_same_message_without_a_key(msg, key):
    """decode_frame hands out the opened frame (header + decrypted payload, no tag): parse_opened
    gives the same message from it; the key is needed no more."""
    frame = encode_frame(msg, key)
    opened: list[bytes] = []
    decoded = decode_frame(frame, key, opened)
    assert len(opened) == 1 and len(opened[0]) == len(frame) - spec.TAG_LEN
    assert parse_opened(opened[0]) == decoded == labelled(msg)


@given(st.binary(max_size=600))
def test_random_opened_bytes_are_rejected_with_a_typed_error(data):
    try:
        parse_opened(data)
    except ProtocolError as exc:
        assert exc.reason and str(exc)


def test_an_inauthentic_frame_hands_out_nothing():
    frame = bytearray(encode_frame(POSITION, KEY))
    frame[-1] ^= 1
    opened: list[bytes] = []
    with pytest.raises(BadTag):
        decode_frame(bytes(frame), KEY, opened)
    assert opened == []
    with pytest.raises(MalformedFrame):
        parse_opened("not bytes")  # type: ignore[arg-type]


@settings(max_examples=100)
@given(message(enums_as_codes=True))
def test_enum_codes_and_labels_encode_alike(msg):
    assert encode_frame(msg, KEY) == encode_frame(labelled(msg), KEY)


def test_position_fits_in_48_bytes():
    worst = dict(POSITION, lat_e7=-900000000, lon_e7=-1800000000, alt_m=-32768, counter=2**32 - 1)
    assert len(encode_frame(worst, KEY)) <= 48


@pytest.mark.parametrize("name", [n for n, mt in MESSAGE_TYPES.items() if mt.packed is not None])
def test_packed_fields_equal_a_plain_construct_struct(name):
    """The hot-path PackedFields is byte-identical to the field-by-field construct Struct."""
    mtype = MESSAGE_TYPES[name]
    plain = fields_struct(mtype.fields)
    assert isinstance(mtype.packed, PackedFields)

    @settings(max_examples=200)
    @given(message(name))
    def check(msg):
        payload = plain.build(msg)
        assert mtype.payload.build(msg) == payload
        parsed = mtype.packed.parse_exact(payload)
        assert parsed == {k: str(v) if isinstance(v, str) else v for k, v in plain.parse(payload).items()
                          if not k.startswith("_")}

    check()


def _reject(frame: bytes, keys) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame, keys)
    return info.value


def test_every_truncation_and_extension_is_rejected():
    frame = encode_frame(POSITION, KEY)
    for cut in range(len(frame)):
        error = _reject(frame[:cut], KEY)
        assert isinstance(error, (TruncatedFrame, BadTag)), (cut, error)
    for extra in (b"\x00", b"\xff" * 3, os.urandom(40)):
        assert isinstance(_reject(frame + extra, KEY), (BadTag, OversizeFrame))
    assert isinstance(_reject(frame + bytes(spec.MAX_FRAME), KEY), OversizeFrame)


def test_every_bit_flip_is_rejected_with_a_typed_error():
    ring = KeyRing({POSITION["device"]: KEY})
    frame = encode_frame(POSITION, KEY)
    for bit in range(len(frame) * 8):
        damaged = bytearray(frame)
        damaged[bit // 8] ^= 1 << (bit % 8)
        for keys in (KEY, ring):
            error = _reject(bytes(damaged), keys)
            assert error.reason in ("bad_tag", "bad_version", "unknown_type", "unknown_device"), error


@settings(max_examples=300)
@given(message(), st.data())
def test_random_mutations_never_pass(msg, data):
    frame = bytearray(encode_frame(msg, KEY))
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "set" and frame:
            frame[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif frame:
            del frame[pos]
    assume(bytes(frame) != encode_frame(msg, KEY))
    error = _reject(bytes(frame), KEY)
    assert error.reason != "malformed"  # nothing forged ever reaches the payload parser


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_random_bytes_are_rejected_with_a_typed_error(data):
    with pytest.raises(ProtocolError):
        decode_frame(data, KEY)


def test_error_messages_say_what_is_wrong_and_never_show_the_key():
    frame = encode_frame(POSITION, KEY)
    cases = [
        (frame[:10], TruncatedFrame, "shorter than the minimum"),
        (b"\x09" + frame[1:], BadVersion, "version 9"),
        (frame[:1] + b"\x7f" + frame[2:], UnknownType, "type code 127"),
        (frame[:-1] + bytes([frame[-1] ^ 1]), BadTag, "authentication failed"),
    ]
    for data, kind, text in cases:
        error = _reject(data, KEY)
        assert isinstance(error, kind) and text in str(error)
        assert KEY.hex() not in str(error)
    assert "no key for device" in str(_reject(frame, KeyRing()))
    assert isinstance(_reject(frame, KeyRing()), UnknownDevice)


def test_authentic_but_malformed_payload_is_reported_as_malformed():
    from carecard.protocol.crypto import FrameKeys

    keys = FrameKeys(KEY)
    header = encode_frame(POSITION, KEY)[: spec.HEADER_LEN]
    short, long_ = b"\x00" * 19, b"\x00" * 21
    bad_fix = b"\x00" * 12 + b"\x09" + b"\x00" * 7  # fix code 9 is undefined
    bad_lat = b"\x7f" * 4 + b"\x00" * 16  # beyond 90 degrees
    bad_source = b"\x00" * 19 + b"\x05"  # fix_source code 5 is undefined
    for payload in (b"", short, long_, bad_fix, bad_lat, bad_source):
        body = header + keys.crypt(POSITION["device"], POSITION["counter"], 0, payload)
        assert isinstance(_reject(body + keys.tag(body), KEY), MalformedFrame)


@pytest.mark.parametrize("bad, text", [
    ({"type": "nope"}, "unknown message type"),
    ({"lat_e7": 900000001}, "outside -90..90"),
    ({"sats": 256}, "0..255"),
    ({"fix": "4d"}, "not one of"),
    ({"counter": -1}, "counter"),
    ({"speed_cms": 1.5}, "speed_cms"),
])
def test_encoder_rejects_bad_messages_clearly(bad, text):
    msg = dict(POSITION, **bad)
    with pytest.raises(InvalidMessage) as info:
        encode_frame(msg, KEY)
    assert text in str(info.value)


def test_missing_field_is_named():
    msg = dict(POSITION)
    del msg["hdop_x10"]
    with pytest.raises(InvalidMessage, match="hdop_x10"):
        encode_frame(msg, KEY)


# --- duplicates and replays ----------------------------------------------------------------------


def test_retransmission_is_a_duplicate_and_a_reused_counter_is_a_replay():
    window = ReplayWindow(size=8)
    first = encode_frame(POSITION, KEY)
    assert window.classify(7, frame_tag(first)) is Verdict.NEW
    window.accept(7, frame_tag(first))
    assert window.classify(7, frame_tag(first)) is Verdict.DUPLICATE
    other = encode_frame(dict(POSITION, sats=9), KEY)
    assert window.classify(7, frame_tag(other)) is Verdict.REUSED
    assert window.classify(8, frame_tag(other)) is Verdict.NEW


@settings(max_examples=200)
@given(st.lists(st.integers(0, 200), min_size=1, max_size=300), st.integers(1, 64))
def test_replay_window_never_accepts_a_counter_twice(counters, size):
    window = ReplayWindow(size=size)
    stored: set[int] = set()
    for counter in counters:
        tag = counter.to_bytes(8, "big")
        verdict = window.classify(counter, tag)
        if verdict is Verdict.NEW:
            assert counter not in stored
            stored.add(counter)
            window.accept(counter, tag)
        elif verdict is Verdict.DUPLICATE:
            assert counter in stored
        else:
            assert verdict is Verdict.TOO_OLD and counter <= window.highest - size
    restored = ReplayWindow(size, *window.state())
    for counter in stored:
        if counter > window.highest - size:
            assert restored.classify(counter, counter.to_bytes(8, "big")) is Verdict.DUPLICATE


@pytest.mark.parametrize("name", [n for n, mt in MESSAGE_TYPES.items() if mt.packed is not None])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_compiled_message_builder_equals_the_packed_parse(name, data):
    """Every fixed-layout type's compiled builder gives parse_exact's message plus the header
    keys, None for an undefined enum code (the general path then names it) and MalformedFrame
    for values outside their ranges in spec.FIELDS (coordinates)."""
    mtype = MESSAGE_TYPES[name]
    payload = data.draw(st.binary(min_size=mtype.packed.size, max_size=mtype.packed.size))
    synced = data.draw(st.booleans())
    try:
        expected = mtype.packed.parse_exact(payload)
    except Exception:
        assert mtype.build_message(payload, 1, 2, 3, synced) is None
        return
    expected.update(type=name, direction=mtype.direction_name, device=1, counter=2, time=3,
                    clock_synced=synced)
    if any(not low <= expected[f] <= high and expected[f] != unknown
           for f, low, high, unknown in mtype.checks):
        with pytest.raises(MalformedFrame, match="out of range"):
            mtype.build_message(payload, 1, 2, 3, synced)
        return
    assert mtype.build_message(payload, 1, 2, 3, synced) == expected


def _all_fields() -> list[tuple[str, str, str]]:
    fields = list(spec.HEADER) + list(spec.TRACK_POINT)
    for rows in (spec.UPLINK, spec.DOWNLINK, spec.COMMANDS):
        for _code, _name, row_fields in rows:
            fields += row_fields
    for struct_fields in spec.STRUCTS.values():
        fields += struct_fields
    return fields


def test_field_rules_are_consistent_with_the_layouts():
    """spec.FIELDS: every rule names a field that exists, a name has one kind everywhere, ranges
    and unknown values fit that kind, an unknown value lies outside the allowed range."""
    kinds: dict[str, set[str]] = {}
    for name, kind, _doc in _all_fields():
        kinds.setdefault(name, set()).add(kind)
    allowed_keys = {"unit", "min", "max", "unknown", "human", "needs_fix", "text"}
    for name, rule in spec.FIELDS.items():
        assert name in kinds, f"spec.FIELDS names {name!r}, which no field has"
        assert len(kinds[name]) == 1, f"{name} has several kinds: {kinds[name]}"
        assert set(rule) <= allowed_keys, f"{name}: unknown rule keys {set(rule) - allowed_keys}"
        (kind,) = kinds[name]
        if kind in INTEGER_RANGES:
            low, high = INTEGER_RANGES[kind]
            if "min" in rule or "max" in rule:
                assert low <= rule["min"] <= rule["max"] <= high, name
                low, high = rule["min"], rule["max"]
            if "unknown" in rule:
                assert INTEGER_RANGES[kind][0] <= rule["unknown"] <= INTEGER_RANGES[kind][1], name
                if "min" in rule:
                    assert not low <= rule["unknown"] <= high, name
            if "human" in rule:
                twin, divisor, unit = rule["human"]
                assert twin.isidentifier() and divisor > 0 and isinstance(unit, str), name
        else:
            assert set(rule) <= {"text"}, f"{name} ({kind}): only text rules apply to text"


CALL = {"type": "call", "device": 861234567890123, "counter": 8, "time": 1764374400, "key": 1,
        "number": "+8613800138000", "outcome": "busy", "ring_s": 20, "talk_s": 0}


@pytest.mark.parametrize("bad", [{"key": 9}, {"key": 0}, {"number": "+86;ATH"}, {"number": "1+2"}])
def test_host_decoder_rejects_an_authentic_frame_breaking_a_field_rule(bad):
    assert decode_frame(unchecked_frame(CALL, KEY), KEY)["key"] == 1
    error = _reject(unchecked_frame({**CALL, **bad}, KEY), KEY)
    assert isinstance(error, MalformedFrame) and ("key" in str(error) or "number" in str(error))


@settings(max_examples=200, deadline=None)
@given(invalid_message(direction="uplink"))
def test_host_encoder_refuses_every_invalid_message_with_its_typed_error(msg):
    with pytest.raises(InvalidMessage):
        encode_frame(msg, KEY)


def test_a_frame_of_the_previous_protocol_version_is_rejected_clearly():
    """Version 2 added the counter recovery (hello.downlink_min, resync); no card speaks 1."""
    frame = encode_frame(POSITION, KEY)
    old = spec.OLDEST_VERSION - 1
    error = _reject(bytes([old]) + frame[1:], KEY)
    assert isinstance(error, BadVersion)
    assert str(error) == (f"protocol version {old} is not supported (this receiver speaks "
                          f"{spec.OLDEST_VERSION} to {spec.VERSION})")
