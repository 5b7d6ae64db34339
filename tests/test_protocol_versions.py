"""Protocol version 3 beside version 2: the host decodes both (a version 2 frame is the newer
layout cut short, its missing fields decoded as spec.ADDED says), the receiver stores a version 2
card's frames and acks them in version 2, and the card's codec speaks version 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from carecard.protocol import decode_frame, encode_frame, spec
from carecard.protocol.codec import MESSAGE_TYPES, VERSION_CODES, fields_of_version
from carecard.protocol.errors import BadVersion, InvalidMessage

from receiver_helpers import POSITION, Card, Harness, provision

KEY = bytes(range(16))
HELLO = {"type": "hello", "device": 861234567890123, "counter": 3, "time": 1764374400,
         "fw_major": 1, "fw_minor": 0, "fw_patch": 0, "reset_cause": "watchdog", "config_version": 2,
         "modem": "a7670", "downlink_min": 0, "motion_sensor": "none"}
TRACK = {"type": "track", "device": 861234567890123, "counter": 4, "time": 1764374400,
         "points": [{"time": 1764374400, "lat_e7": 1, "lon_e7": 2}], "hdop_x10": 14, "sats": 6}


def test_version_3_adds_exactly_the_fields_listed_in_added() -> None:
    assert spec.VERSION == 3 and spec.OLDEST_VERSION == 2
    for (message, field), (since, _raw) in spec.ADDED.items():
        fields = [f[0] for f in MESSAGE_TYPES[message].fields]
        assert since == 3 and field in fields
        # appended: every field after it was added too
        assert all((message, later) in spec.ADDED for later in fields[fields.index(field):])


@pytest.mark.parametrize("message, missing", [
    (HELLO, {"motion_sensor": "unknown"}),
    ({"type": "position", "device": 5, "counter": 1, "time": 9, **POSITION, "source": "held"},
     {"source": "fresh"}),
    (TRACK, {"hdop_x10": 255, "sats": 255}),
])
def test_a_version_2_frame_decodes_with_the_added_fields_as_spec_says(message, missing) -> None:
    v2 = encode_frame(message, KEY, version=2)
    v3 = encode_frame(message, KEY)
    assert v2[0] == 2 and v3[0] == 3
    # the version 2 payload is the version 3 one cut short
    added = len(v3) - len(v2)
    assert added == len(missing) or message["type"] == "track" and added == 2
    decoded = decode_frame(v2, KEY)
    for name, value in missing.items():
        assert decoded[name] == value
    assert {k: v for k, v in decoded.items() if k not in missing} == \
        {k: v for k, v in decode_frame(v3, KEY).items() if k not in missing}


def test_versions_outside_the_decoded_range_are_refused_with_the_range() -> None:
    frame = encode_frame(HELLO, KEY)
    for version in (1, 4):
        with pytest.raises(BadVersion, match=f"protocol version {version} is not supported "
                                             r"\(this receiver speaks 2 to 3\)"):
            decode_frame(bytes([version]) + frame[1:], KEY)
    with pytest.raises(InvalidMessage, match="protocol version 1 is not one of 2..3"):
        encode_frame(HELLO, KEY, version=1)


def test_older_layouts_drop_only_added_fields() -> None:
    for code, mtype in VERSION_CODES[2].items():
        kept, fill = fields_of_version(mtype.name, MESSAGE_TYPES[mtype.name].fields, 2)
        assert mtype.fields == kept
        assert [name for name, _v in fill] == [f for (m, f) in spec.ADDED if m == mtype.name]


def test_the_receiver_stores_a_version_2_card_and_acks_it_in_version_2(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    h = Harness(tmp_path, devices)
    try:
        device, key = next(iter(devices.items()))
        card = Card(device, key)
        message = {"type": "position", "device": device, "counter": 1, "time": 1764374400, **POSITION,
                   "source": "fresh"}
        assert h.feed(encode_frame(message, key, version=2)) is None
        assert h.feed(card.frame(counter=2, source="held")) is None
        acks = h.commit()
        assert [a[0] for a in acks] == [2, 3]
        assert [decode_frame(a, key)["acked"] for a in acks] == [1, 2]
        assert h.frames() == [(device, 1), (device, 2)]
    finally:
        h.store.close()


def test_the_card_codec_speaks_version_3(mpy) -> None:
    out = mpy.run("""
import ccproto
e = ccproto.Encoder(861234567890123, bytes(range(16)))
m = {'fw_major': 1, 'fw_minor': 0, 'fw_patch': 0, 'reset_cause': 'watchdog', 'config_version': 2,
     'modem': 'a7670', 'downlink_min': 0, 'motion_sensor': 'none'}
print(bytes(e.encode('hello', m, 3, 1764374400)).hex())
""")
    decoded = decode_frame(bytes.fromhex(out.strip()), KEY)
    assert decoded["motion_sensor"] == "none" and decoded["reset_cause"] == "watchdog"
    assert bytes.fromhex(out.strip())[0] == 3
