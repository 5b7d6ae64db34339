"""The card codec on the real MicroPython interpreter agrees with the host, byte for byte."""

from __future__ import annotations

import json
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carecard.protocol import InvalidMessage, decode_frame, encode_frame, spec
from carecard.protocol.crypto import FrameKeys

from protocol_strategies import KEYS, invalid_message, labelled, message, unchecked_frame

# One MicroPython process answers one JSON request per line.
CARD_SCRIPT = r"""
import sys, json, binascii
import ccproto, cccrypto

def unwrap(value):
    # JSON has no bytes: {"$bytes": "hex"} stands for them
    if isinstance(value, dict):
        if "$bytes" in value:
            return binascii.unhexlify(value["$bytes"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value

def handle(req):
    op = req["op"]
    key = binascii.unhexlify(req["key"])
    if op == "encode":
        m = unwrap(req["msg"])
        try:
            enc = ccproto.Encoder(m["device"], key)
            fields = {k: v for k, v in m.items() if k not in ("type", "device", "counter", "time", "clock_synced")}
            frame = enc.encode(m["type"], fields, m["counter"], m["time"], m["clock_synced"])
        except ccproto.ProtoError as e:
            return {"error": e.reason, "message": str(e)}
        return binascii.hexlify(frame).decode()
    if op == "decode":
        dec = ccproto.Decoder(req["device"], key, last_counter=req.get("last", -1))
        try:
            return dec.decode(binascii.unhexlify(req["frame"]))
        except ccproto.ProtoError as e:
            return {"error": e.reason}
    if op == "crypt":
        c = cccrypto.FrameCrypto(key)
        buf = bytearray(binascii.unhexlify(req["data"]))
        c.crypt_into(buf, 0, len(buf), req["device"], req["counter"], req["direction"])
        return binascii.hexlify(buf).decode()
    if op == "hmac":
        return binascii.hexlify(cccrypto.hmac_sha256(key, binascii.unhexlify(req["data"]))).decode()
    raise ValueError(op)

while True:
    line = sys.stdin.readline()
    if not line:
        break
    try:
        answer = handle(json.loads(line))
    except Exception as e:
        answer = {"exception": "%s: %s" % (type(e).__name__, e)}
    print(json.dumps(answer))
"""


@pytest.fixture(scope="module")
def card(mpy):
    with mpy.Batch(CARD_SCRIPT) as batch:
        def call(requests: list[dict]) -> list:
            lines = [json.dumps(r, ensure_ascii=False) for r in requests]
            return [json.loads(a) for a in batch.call_many(lines)]
        yield call


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(message(direction="uplink", enums_as_codes=True), KEYS), min_size=20, max_size=20))
def test_card_encodes_exactly_what_construct_builds(card, batch):
    requests = [{"op": "encode", "key": key.hex(), "msg": msg} for msg, key in batch]
    answers = card(requests)
    for (msg, key), answer in zip(batch, answers):
        assert isinstance(answer, str), answer
        frame = bytes.fromhex(answer)
        assert frame == encode_frame(msg, key)
        assert decode_frame(frame, key) == labelled(msg)


POSITION = {"type": "position", "device": 861234567890123, "counter": 7, "time": 1764374400,
            "clock_synced": True, "lat_e7": 249012345, "lon_e7": 1184567890, "alt_m": 30,
            "hdop_x10": 9, "sats": 8, "fix": "3d", "fix_age_s": 3, "speed_cms": 120, "course_x10": 900,
            "source": "fresh"}
CALL = {"type": "call", "device": 861234567890123, "counter": 8, "time": 1764374400,
        "clock_synced": True, "key": 1, "number": "+8613800138000", "outcome": "busy", "ring_s": 20,
        "talk_s": 0}
TRACK = {"type": "track", "device": 861234567890123, "counter": 9, "time": 1764374400,
         "clock_synced": True, "points": [{"time": 1764374400, "lat_e7": 249012345, "lon_e7": 1184567890}],
         "hdop_x10": 12, "sats": 8}


@pytest.mark.parametrize("msg", [
    {**POSITION, "lat_e7": 900000001},
    {**POSITION, "lon_e7": -1800000001},
    {**TRACK, "points": TRACK["points"] + [{"time": 1764374410, "lat_e7": 950000000, "lon_e7": 0}]},
    {**CALL, "number": {"$bytes": "2b3836ff"}},  # not UTF-8
    {**CALL, "number": "+8613800138000;ATH"},
    {**CALL, "number": "\u0661\u0662"},
    {**CALL, "key": 9},
    {**CALL, "key": 0},
    {**POSITION, "fix": True},
    {**POSITION, "sats": 1.5},
], ids=["lat", "lon", "track-point-95-degrees", "number-not-utf8", "number-with-at-command",
        "number-non-ascii-digits", "key-9", "key-0", "enum-bool", "float"])
def test_card_refuses_with_its_typed_error_what_the_host_would_reject(card, msg):
    """A frame the host rejects is never acked: an outbox retrying until acked would jam behind it."""
    (answer,) = card([{"op": "encode", "key": "00" * 16, "msg": msg}])
    assert isinstance(answer, dict) and answer.get("error") == "invalid_message", answer
    if "$bytes" not in str(msg):
        with pytest.raises(InvalidMessage):
            encode_frame(msg, bytes(16))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(message(direction="uplink"), invalid_message()), min_size=20, max_size=20))
def test_card_and_host_agree_on_every_message_they_encode_or_refuse(card, batch):
    """Valid messages (every rule's allowed values, unknown values included) encode byte-identically;
    a message breaking any rule (range, kind, enum, text characters, length, track points, a
    missing field) is refused by both, the card with its typed error."""
    answers = card([{"op": "encode", "key": "00" * 16, "msg": msg} for msg in batch])
    for msg, answer in zip(batch, answers):
        try:
            expected = encode_frame(msg, bytes(16)).hex()
        except InvalidMessage as exc:
            assert isinstance(answer, dict) and answer.get("error") in ("invalid_message", "oversize"), \
                (msg, str(exc), answer)
        else:
            assert answer == expected, msg


def test_card_accepts_an_empty_number_and_a_number_as_utf8_bytes(card):
    msgs = [{**CALL, "number": "", "outcome": "no_number"}, {**CALL, "number": {"$bytes": "2b3836"}}]
    answers = card([{"op": "encode", "key": "00" * 16, "msg": m} for m in msgs])
    assert bytes.fromhex(answers[0]) == encode_frame(msgs[0], bytes(16))
    assert bytes.fromhex(answers[1]) == encode_frame({**CALL, "number": "+86"}, bytes(16))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(message(direction="downlink"), KEYS), min_size=20, max_size=20))
def test_card_decodes_what_the_host_encodes(card, batch):
    requests = [{"op": "decode", "key": key.hex(), "device": msg["device"],
                 "frame": encode_frame(msg, key).hex()} for msg, key in batch]
    for (msg, key), answer in zip(batch, card(requests)):
        assert answer == labelled(msg)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message("ack"), st.data())
def test_card_rejects_damaged_downlinks_with_its_typed_error_only(card, msg, data):
    frame = encode_frame(msg, bytes(16))
    mutants = []
    for _ in range(20):
        damaged = bytearray(frame)
        kind = data.draw(st.sampled_from(["flip", "cut", "extend", "random"]))
        if kind == "flip":
            bit = data.draw(st.integers(0, len(frame) * 8 - 1))
            damaged[bit // 8] ^= 1 << (bit % 8)
        elif kind == "cut":
            damaged = damaged[: data.draw(st.integers(0, len(frame) - 1))]
        elif kind == "extend":
            damaged += data.draw(st.binary(min_size=1, max_size=20))
        else:
            damaged = bytearray(data.draw(st.binary(max_size=80)))
        mutants.append(bytes(damaged))
    requests = [{"op": "decode", "key": bytes(16).hex(), "device": msg["device"], "frame": m.hex()}
                for m in mutants]
    for mutant, answer in zip(mutants, card(requests)):
        assert "exception" not in answer, answer
        assert "error" in answer, mutant.hex()
        assert answer["error"] in ("truncated", "oversize", "bad_version", "unknown_type",
                                   "unknown_device", "bad_tag")


@pytest.mark.parametrize("contact", [{"key": 9, "number": "+86138", "name": "x"},
                                     {"key": 1, "number": "+86138;ATH", "name": "x"}])
def test_card_decoder_rejects_an_authentic_downlink_breaking_a_field_rule(card, contact):
    good = {"type": "ack", "device": 1, "counter": 5, "time": 0, "acked": 1,
            "commands": [{"seq": 1, "cmd": "set_contacts",
                          "contacts": [{"key": 1, "number": "+86138", "name": "x"}]}]}
    bad = {**good, "commands": [{**good["commands"][0], "contacts": [contact]}]}
    ok, refused = card([{"op": "decode", "key": "00" * 16, "device": 1,
                         "frame": unchecked_frame(m, bytes(16)).hex()} for m in (good, bad)])
    assert ok["commands"][0]["contacts"][0]["number"] == "+86138"
    assert refused == {"error": "malformed"}


def test_card_rejects_replayed_downlink_counter(card):
    msg = {"type": "ack", "device": 1, "counter": 5, "time": 0, "clock_synced": True, "acked": 1,
           "commands": []}
    frame = encode_frame(msg, bytes(16)).hex()
    ok, replay = card([
        {"op": "decode", "key": "00" * 16, "device": 1, "frame": frame, "last": 4},
        {"op": "decode", "key": "00" * 16, "device": 1, "frame": frame, "last": 5},
    ])
    assert ok["acked"] == 1 and replay == {"error": "replay"}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(KEYS, st.binary(max_size=300), st.integers(0, 2**64 - 1),
                          st.integers(0, 2**32 - 1), st.sampled_from([0, 1])), min_size=10, max_size=10))
def test_card_aes_ctr_and_hmac_match_cryptography(card, cases):
    requests = []
    for key, data, device, counter, direction in cases:
        requests.append({"op": "crypt", "key": key.hex(), "data": data.hex(), "device": device,
                         "counter": counter, "direction": direction})
        requests.append({"op": "hmac", "key": key.hex(), "data": data.hex()})
    answers = card(requests)
    for i, (key, data, device, counter, direction) in enumerate(cases):
        keys = FrameKeys(key)
        nonce = device.to_bytes(8, "big") + counter.to_bytes(4, "big") + bytes([direction, 0, 0, 0])
        ctr = Cipher(algorithms.AES(keys.enc_key), modes.CTR(nonce)).encryptor()
        assert bytes.fromhex(answers[2 * i]) == ctr.update(data) + ctr.finalize()
        mac = crypto_hmac.HMAC(key, hashes.SHA256())
        mac.update(data)
        assert bytes.fromhex(answers[2 * i + 1]) == mac.finalize()


def test_key_derivation_matches_cryptography(card):
    key = os.urandom(32)
    derived = card([{"op": "hmac", "key": key.hex(), "data": spec.KDF_MAC.hex()}])[0]
    assert bytes.fromhex(derived) == FrameKeys(key).mac_key


def test_card_encoder_runs_in_a_small_heap(mpy, tmp_path):
    """As a card ships it: the codec's .mpy files in flash (ROMFS, run in place)."""
    code = """
import ccproto
e = ccproto.Encoder(861234567890123, bytes(16))
m = {'lat_e7': 249012345, 'lon_e7': 1184567890, 'alt_m': 30, 'hdop_x10': 9, 'sats': 8, 'fix': 2,
     'fix_age_s': 3, 'speed_cms': 120, 'course_x10': 900, 'source': 0}
for counter in range(200):
    e.encode('position', m, counter, 1764374400)
print('ok')
"""
    # Measured 37.3 KB in flash, 50.3 KB loaded into RAM, 66 KB from source (most of it compiling
    # ccspec); `carecard bench protocol` prints them.
    image = mpy.card_image(compiled=True)
    rom = mpy.flash_folder(image, ("ccproto", "cccrypto", "ccspec"), tmp_path / "rom")
    assert mpy.run(code, heapsize=40 * 1024, image=image, rom=rom).strip() == "ok"
