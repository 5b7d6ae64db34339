"""The simulated GNSS receiver (tools/vcard/gnss_sim.py): its NMEA read by the card's own parser
(firmware/lib/nmea.py) on MicroPython and by pynmeagps; start kinds, indoor wander, failed fixes,
outliers, determinism, and the replay of a real capture."""

from __future__ import annotations

import ast
import io
import math
import statistics

import pynmeagps
import pytest

from carecard.tools.vcard.gnss_sim import GnssSim, GnssSimError, NmeaReplay, Track, TrackPoint

HOME = (24.905321, 118.587112)   # a village in Nan'an, Quanzhou

PARSE = r'''
import sys
from nmea import NMEAParser
p = NMEAParser()
while True:
    piece = sys.stdin.buffer.read(200)
    if not piece:
        break
    p.receive_data(piece)
    while True:
        f = p.next_event()
        if f is None:
            break
        print(repr((f.time, f.valid, f.lat_e7, f.lon_e7, f.hdop, f.sats)))
p.flush()
while True:
    f = p.next_event()
    if f is None:
        break
    print(repr((f.time, f.valid, f.lat_e7, f.lon_e7, f.hdop, f.sats)))
print(repr(("counts", p.sentences, p.bad_checksum, p.malformed)))
'''


def firmware_fixes(mpy, data: bytes):
    lines = [ast.literal_eval(line) for line in mpy.run(PARSE, stdin=data).splitlines()]
    return lines[:-1], lines[-1]


def metres(lat1, lon1, lat2, lon2):
    dn = (lat2 - lat1) * 111_320
    de = (lon2 - lon1) * 111_320 * math.cos(math.radians(lat1))
    return math.hypot(dn, de)


def still(env: str) -> Track:
    return Track([TrackPoint(0, *HOME, env)])


def test_same_seed_same_bytes_other_seed_other_bytes():
    def run(seed):
        g = GnssSim(still("indoor"), seed=seed)
        g.set_power(True, 0)
        return g.advance(400_000)
    assert run(5) == run(5)
    assert run(5) != run(6)


def test_cold_then_hot_start_read_by_the_firmware_parser_and_pynmeagps(mpy):
    g = GnssSim(still("outdoor"), seed=11)
    g.set_backup(True, 0)
    g.set_power(True, 0)
    cold = g.advance(60_000)
    assert g.start_kind == "cold"
    g.set_power(False, 60_000)
    g.set_power(True, 600_000)
    hot = g.advance(620_000)
    assert g.start_kind == "hot"
    data = cold + hot
    fixes, (_, sentences, bad, malformed) = firmware_fixes(mpy, data)
    assert bad == 0 and malformed == 0
    assert sentences == data.count(b"\r\n")
    valid = [f for f in fixes if f[1]]
    start = 1_780_000_000
    first_cold = min(f[0] for f in valid if f[0] < start + 100) - start
    first_hot = min(f[0] for f in valid if f[0] > start + 500) - (start + 600)
    assert 24 <= first_cold <= 36                # L76K cold TTFF 30 s +-20 %
    assert 4 <= first_hot <= 7                   # hot 5.5 s +-20 %, 1 Hz epochs
    errors = [metres(HOME[0], HOME[1], f[2] / 1e7, f[3] / 1e7) for f in valid]
    assert statistics.median(errors) < 10         # outdoors: a few metres
    for t, _, lat_e7, lon_e7, hdop, sats in valid:
        assert 8 <= hdop <= 14 and 10 <= sats <= 16
    # pynmeagps, written by others, reads every sentence and agrees on the positions
    reader = pynmeagps.NMEAReader(io.BytesIO(data), nmeaonly=True, quitonerror=pynmeagps.ERR_RAISE)
    gga = [msg for _, msg in reader if msg.msgID == "GGA" and msg.quality == 1]
    assert len(gga) == len(valid)
    for msg, f in zip(gga, valid):
        assert abs(msg.lat * 1e7 - f[2]) <= 2 and abs(msg.lon * 1e7 - f[3]) <= 2


def test_indoor_error_wanders_over_tens_of_metres_with_outliers(mpy):
    g = GnssSim(still("indoor"), seed=3)
    g.set_power(True, 0)
    data = g.advance(1_800_000)
    fixes, _ = firmware_fixes(mpy, data)
    valid = [f for f in fixes if f[1]]
    assert len(valid) > 1500                      # fixes, with some lost now and then
    assert len(valid) < len(fixes) - 50
    errors = [metres(HOME[0], HOME[1], f[2] / 1e7, f[3] / 1e7) for f in valid]
    typical = statistics.median(errors)
    assert 10 <= typical <= 80, typical
    outliers = [e for e in errors if e > 250]
    assert 3 <= len(outliers) <= 60
    # it wanders: from one second to the next the error moves little (no independent noise)
    steps = [metres(a[2] / 1e7, a[3] / 1e7, b[2] / 1e7, b[3] / 1e7) for a, b in zip(valid, valid[1:])
             if b[0] - a[0] == 1]
    assert statistics.median(steps) < typical / 3
    assert all(15 <= f[4] <= 45 for f in valid)   # indoor HDOP 1.8-4.5


def test_deep_indoors_never_fixes_but_keeps_time_and_satellites(mpy):
    g = GnssSim(still("deep_indoor"), seed=1)
    g.set_power(True, 0)
    data = g.advance(300_000)
    fixes, _ = firmware_fixes(mpy, data)
    assert fixes and not any(f[1] for f in fixes)
    assert any(f[0] for f in fixes)               # the receiver has the time
    assert b"$GPGSV" in data


def test_a_walk_moves_the_fix_along_the_track(mpy):
    track = Track([TrackPoint(0, *HOME, "outdoor"), TrackPoint(600, HOME[0] + 0.01, HOME[1], "outdoor")])
    g = GnssSim(track, seed=2)
    g.set_power(True, 0)
    fixes, _ = firmware_fixes(mpy, g.advance(600_000))
    valid = [f for f in fixes if f[1]]
    assert valid[-1][2] - valid[0][2] > 0.008 * 1e7


def test_bad_tracks_are_refused_with_the_reason():
    with pytest.raises(GnssSimError, match="environment 'cellar'"):
        TrackPoint(0, *HOME, "cellar")
    with pytest.raises(GnssSimError, match="out of time order"):
        Track([TrackPoint(10, *HOME), TrackPoint(5, *HOME)])


def test_replay_of_a_real_capture_gives_its_sentences_one_epoch_per_second(shared_data, mpy):
    path = shared_data / "nmea/quectel-l76k-nmea.log"
    replay = NmeaReplay(path)
    replay.set_power(True, 0)
    out = replay.advance(len(replay.epochs) * 1000)
    body = b"".join(line if line.endswith(b"\n") else line + b"\r\n"
                    for line in path.read_bytes().splitlines(keepends=True)
                    if line.strip() and not line.startswith(b"#"))
    assert out == body
    fixes, (_, sentences, bad, _) = firmware_fixes(mpy, out)
    assert any(f[1] for f in fixes) and sentences > 100
