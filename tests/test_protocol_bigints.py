"""The card's codec on the 32-bit port: a Unix time, an IMEI and a coordinate in 1e-7 degree
beyond 107.37 degrees (all of Fujian) are no small ints there, and arithmetic on one allocates.
Encoding a frame allocates the same number of bytes wherever the card is and whatever the time:
nothing per point or per field for being a big integer. Measured with the collector off
(gc.mem_alloc before and after one encode), on both ports."""

from __future__ import annotations

import pytest

from carecard.protocol import decode_frame

KEY = bytes(range(16))
IMEI = 861234567890123
T2026 = 1_764_374_400

# (lat_e7, lon_e7) of each place; SMALL keeps every value a small int on the 32-bit port
PLACES = {
    "fujian": (249_012_345, 1_184_567_890),
    "sydney": (-338_512_345, 1_512_345_678),
    "buenos-aires": (-346_012_345, -583_712_345),
    "near-antimeridian-west": (151_234_567, -1_799_999_999),
    "near-antimeridian-east": (-151_234_567, 1_799_999_999),
    "near-north-pole": (899_999_999, 450_000_000),
    "near-south-pole": (-899_999_999, -1_350_000_000),
}
SMALL = (1_000, 12_345, 54_321)   # time, lat, lon

_CODE = r"""
import gc, ccproto
e = ccproto.Encoder(%(imei)d, %(key)r)
def position(t, lat, lon):
    return {'lat_e7': lat, 'lon_e7': lon, 'alt_m': 30, 'hdop_x10': 9, 'sats': 8, 'fix': 2,
            'fix_age_s': 3, 'speed_cms': 120, 'course_x10': 900, 'source': 0}
def track(t, lat, lon):
    # moving towards the equator and the prime meridian: every point stays on Earth
    dlat = -37 if lat > 0 else 37
    dlon = -41 if lon > 0 else 41
    return {'points': [(t + 60 * i, lat + dlat * i, lon + dlon * i) for i in range(%(points)d)],
            'hdop_x10': 12, 'sats': 8}
def cost(kind, t, lat, lon):
    m = (position if kind == 'position' else track)(t, lat, lon)
    e.encode(kind, m, 1, t)
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    frame = e.encode(kind, m, 2, t)
    used = gc.mem_alloc() - before
    gc.enable()
    return used, bytes(frame).hex()
for kind in ('position', 'track'):
    for t, lat, lon in %(cases)r:
        used, frame = cost(kind, t, lat, lon)
        print(kind, used, frame)
"""


@pytest.mark.parametrize("place", list(PLACES))
def test_encoding_allocates_the_same_anywhere_and_anytime(mpy, place):
    lat, lon = PLACES[place]
    cases = [SMALL, (T2026, lat, lon), (0xFFFFFFFF - 600, lat, lon)]
    out = mpy.run(_CODE % {"imei": IMEI, "key": KEY, "points": 8, "cases": cases})
    rows = [line.split() for line in out.strip().splitlines()]
    for kind in ("position", "track"):
        used = [int(r[1]) for r in rows if r[0] == kind]
        assert len(used) == 3 and len(set(used)) == 1, (kind, used)
    # and the frames are what the host reads
    keys = {IMEI: KEY}
    frames = [bytes.fromhex(r[2]) for r in rows]
    track = decode_frame(frames[4], keys[IMEI])
    assert [(p["time"], p["lat_e7"], p["lon_e7"]) for p in track["points"]][:2] == [
        (T2026, lat, lon), (T2026 + 60, lat - 37 if lat > 0 else lat + 37, lon - 41 if lon > 0 else lon + 41)]
    assert decode_frame(frames[1], keys[IMEI])["lon_e7"] == lon


def _zigzag_varint(value: int) -> bytes:
    z = value * 2 if value >= 0 else -value * 2 - 1
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        out.append(byte | 0x80 if z else byte)
        if not z:
            return bytes(out)


def test_track_deltas_from_parts_equal_the_plain_arithmetic(mpy):
    """_write_delta (small-int parts) writes exactly the zigzag varint of value - prev, at the
    edges of u32 and i32 and of the 16-bit parts."""
    edges = [0, 1, -1, 63, 64, -64, -65, 8191, 8192, 65535, 65536, -65536, -65537,
             2**30 - 1, 2**30, -2**30 - 1, 2**31 - 1, -2**31, 2**32 - 1, 1_184_567_890,
             -1_799_999_999, 1_799_999_999, T2026]
    pairs = [(a, b) for a in edges for b in edges]
    code = f"""
import ccproto
buf = bytearray(16)
for a, b in {pairs!r}:
    n = ccproto._write_delta(buf, 0, a, b)
    print(bytes(buf[:n]).hex())
"""
    assert mpy.run(code).split() == [_zigzag_varint(a - b).hex() for a, b in pairs]
