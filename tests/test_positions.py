"""firmware/lib/positions.py on MicroPython: static hold, moving mode and motion counts for the
host's inactivity logic, driven in virtual time through a scripted day of motion and fixes."""

from __future__ import annotations

import json

import pytest

from carecard.protocol import encode_frame, decode_frame, spec
from carecard.tools.micropython import json_lines_service

TIMINGS = {"position_s": 900, "moving_position_s": 60, "moving_quiet_s": 300,
           "motion_burst_count": 3, "motion_burst_s": 30, "track_points": 4}
HOME = (249012345, 1184567890)

SERVICE = json_lines_service(r"""
import positions
from nmea import Fix
pol = None
def drain(t, out):
    # the policy's actions at t; an acquisition it asks for starts at once
    a = pol.next_action()
    while a is not None:
        out.append([t] + list(a))
        if a[0] == "acquire":
            pol.acquiring(t)
        a = pol.next_action()
def handle(req, out):
    global pol
    if "new" in req:
        pol = positions.PositionPolicy(positions.timings(req["new"]), req["motion"], 0)
    for op in req["ops"]:
        kind, t = op[0], op[1]
        if kind == "run":  # poll at every deadline up to t
            while True:
                d = pol.next_deadline()
                if d is None or d > t:
                    break
                pol.poll(d)
                drain(d, out)
        elif kind == "motion":
            pol.motion(t)
        elif kind == "fix":  # [lat, lon, hdop_x10] or null
            f = op[2]
            fix = None if f is None else Fix(1764374400 + t // 1000, 0, True, "3d", f[0], f[1],
                                             30, f[2], 8, 0, 0, 1, "A", False, 10)
            pol.fix_result(fix, t, 1764374400 + t // 1000)
        elif kind == "count":
            out.append(["count", pol.take_motion_count()])
        elif kind == "locate":
            pol.locate(t)
            pol.poll(t)
        elif kind == "day":  # ["day", t, end, motion_every_ms, [[from_ms, lat, lon, hdop], ...]]:
            # a second at a time: motion every motion_every_ms, each acquisition answered 3 s
            # later with a fix at the place of that time
            end, every, places = op[2], op[3], op[4]
            answer = None
            while t < end:
                if t % every == 0:
                    pol.motion(t)
                if answer is not None and t >= answer:
                    place = [p for p in places if p[0] <= t][-1]
                    pol.fix_result(Fix(1764374400 + t // 1000, 0, True, "3d", place[1], place[2],
                                       30, place[3], 8, 0, 0, 1, "A", False, 10), t, 1764374400 + t // 1000)
                    answer = None
                pol.poll(t)
                n = len(out)
                drain(t, out)
                if any(a[1] == "acquire" for a in out[n:]):
                    answer = t + 3000
                t += 1000
        drain(t, out)
    return {"out": out, "mode": pol.mode}
""")


@pytest.fixture(scope="module")
def policy(mpy):
    batch = mpy.Batch(SERVICE)
    yield lambda motion, ops: json.loads(batch.call(json.dumps({"new": TIMINGS, "motion": motion, "ops": ops})))
    batch.close()


def kinds(out):
    return [(a[1], a[2] if len(a) > 2 and isinstance(a[2], str) else None) for a in out if a[0] != "count"]


def test_a_card_lying_still_holds_its_fix_with_a_growing_age_and_the_gnss_off(policy) -> None:
    ans = policy(True, [["run", 0], ["fix", 5000, [*HOME, 9]], ["run", 3 * 900000 + 1000], ["count", 0]])
    assert "error" not in ans, ans
    out = ans["out"]
    # the first report takes a fix; then three reports re-send it, held, GNSS never powered again
    assert kinds(out) == [("acquire", None), ("uplink", "position"), ("uplink", "position"),
                          ("uplink", "position"), ("uplink", "position")]
    fresh, *held = [a[3] for a in out if a[1] == "uplink"]
    assert fresh["source"] == "fresh" and fresh["fix_age_s"] == 0
    assert [h["source"] for h in held] == ["held"] * 3
    assert [h["fix_age_s"] for h in held] == [895, 1795, 2695]
    assert all((h["lat_e7"], h["lon_e7"], h["hdop_x10"], h["sats"], h["fix"]) == (*HOME, 9, 8, "3d")
               for h in held)
    assert out[-1] == ["count", 0]
    # what the card would send decodes on the host as a held fix
    frame = encode_frame({"type": "position", "device": 1, "counter": 1, "time": 1, **held[-1]}, bytes(16))
    assert decode_frame(frame, bytes(16))["source"] == "held"


def test_locate_takes_a_fresh_fix_at_once_even_while_holding(policy) -> None:
    # lying still with a held fix: a "locate now" at 20 min powers the GNSS at once, not at 30
    ops = [["run", 0], ["fix", 5000, [*HOME, 9]], ["run", 905000], ["locate", 1200000],
           ["fix", 1210000, [*HOME, 9]]]
    out = policy(True, ops)["out"]
    assert kinds(out) == [("acquire", None), ("uplink", "position"), ("uplink", "position"),
                          ("acquire", None), ("uplink", "position")]
    assert out[3][:2] == [1200000, "acquire"]
    assert out[-1][3]["source"] == "fresh"


def test_a_worn_card_takes_fresh_fixes_and_counts_its_motion(policy) -> None:
    ops = [["run", 0], ["fix", 5000, [*HOME, 9]], ["motion", 400000], ["run", 905000],
           ["fix", 915000, [HOME[0] + 20, HOME[1], 9]], ["count", 916000], ["run", 1805000]]
    out = policy(True, ops)["out"]
    assert kinds(out) == [("acquire", None), ("uplink", "position"), ("acquire", None),
                          ("uplink", "position"), ("uplink", "position")]
    ups = [a[3] for a in out if a[1] == "uplink"]
    assert [u["source"] for u in ups] == ["fresh", "fresh", "held"]
    assert ["count", 1] in out


def test_a_card_without_a_motion_sensor_never_holds_and_reports_motion_unknown(policy) -> None:
    out = policy(False, [["run", 0], ["fix", 5000, [*HOME, 9]], ["run", 905000], ["count", 906000]])["out"]
    assert kinds(out) == [("acquire", None), ("uplink", "position"), ("acquire", None)]
    assert out[-1] == ["count", spec.FIELDS["motion_count"]["unknown"]]


def test_a_motion_burst_starts_moving_mode_batches_tracks_and_ends_after_quiet(policy) -> None:
    ops = [["run", 0], ["fix", 5000, [*HOME, 9]],
           ["motion", 100000], ["motion", 110000], ["motion", 120000]]  # 3 within 30 s
    t = 120000
    lat = HOME[0]
    for _ in range(6):  # walking: a fix every minute, motion keeps coming
        ops += [["run", t], ["fix", t + 2000, [lat, HOME[1], 12]], ["motion", t + 30000]]
        lat += 1000
        t += 60000
    ops += [["run", t + 400000]]
    ans = policy(True, ops)
    out = ans["out"]
    assert ans["mode"] == "still"
    modes = [a[2] for a in out if a[1] == "mode"]
    assert modes == ["moving", "still"]
    # entering on the burst takes a fix at once (at the third interrupt's time)
    enter = next(i for i, a in enumerate(out) if a[1] == "mode")
    assert out[enter + 1][:2] == [120000, "acquire"]
    tracks = [a[3] for a in out if a[1] == "uplink" and a[2] == "track"]
    assert [len(tr["points"]) for tr in tracks] == [4, 2]  # a full batch, then the rest at the end
    assert tracks[0]["hdop_x10"] == 12 and tracks[0]["sats"] == 8
    times = [p[0] for tr in tracks for p in tr["points"]]
    assert times == sorted(times) and len(set(times)) == 6


def test_moving_mode_in_one_place_backs_off_its_fixes_until_the_card_goes_somewhere(policy) -> None:
    """Energy (carecard sim normal-day): someone pottering at home keeps the motion sensor busy,
    so moving mode lasted all morning with a GNSS fix every minute at the same place (indoors,
    15-20 s of receiver and MCU each). While the fixes stay within their accuracy of where the
    stay began, each interval doubles up to the still interval; the first fix elsewhere goes back
    to a fix a minute. Reports stay at most a still interval apart."""
    hour = 3600000
    stay = [[0, *HOME, 12]]
    out = policy(True, [["run", 0], ["fix", 5000, [*HOME, 9]], ["day", 100000, 100000 + hour, 10000, stay]])["out"]
    acquired = [a[0] for a in out if a[1] == "acquire"][1:]
    assert [a[2] for a in out if a[1] == "mode"] == ["moving"]
    gaps = [b - a for a, b in zip(acquired, acquired[1:])]
    assert gaps[:4] == [60000, 120000, 240000, 480000] and set(gaps[4:]) == {900000}, gaps
    # reports at least every still interval: each track frame within one of the one before
    tracks = [a[0] for a in out if a[1] == "uplink" and a[2] == "track"]
    assert len(tracks) >= 3 and all(b - a <= 900000 for a, b in zip(tracks, tracks[1:])), tracks
    # walking off after half an hour (100 m a minute): the first fix elsewhere brings back a fix
    # a minute
    walk = stay + [[100000 + hour // 2 + i * 60000, HOME[0] + 9000 * (i + 1), HOME[1], 12] for i in range(40)]
    out = policy(True, [["run", 0], ["fix", 5000, [*HOME, 9]], ["day", 100000, 100000 + hour, 10000, walk]])["out"]
    acquired = [a[0] for a in out if a[1] == "acquire"]
    away = [a for a in acquired if a > 100000 + hour // 2]
    gaps = [b - a for a, b in zip(away, away[1:])]
    assert len(gaps) >= 10 and set(gaps[1:]) == {60000}, gaps


def test_a_displacement_beyond_the_fix_accuracy_starts_moving_mode_without_a_sensor(policy) -> None:
    # 1000 x 1e-7 degree of latitude is ~111 m, beyond 2 x (HDOP 0.9 x 5 m)
    ops = [["run", 0], ["fix", 5000, [*HOME, 9]], ["run", 905000], ["fix", 910000, [HOME[0] + 1000, HOME[1], 9]]]
    out = policy(False, ops)["out"]
    assert [a[2] for a in out if a[1] == "mode"] == ["moving"]
    # a jitter within the accuracy does not
    ops = [["run", 0], ["fix", 5000, [*HOME, 9]], ["run", 905000], ["fix", 910000, [HOME[0] + 50, HOME[1], 9]]]
    assert [a for a in policy(False, ops)["out"] if a[1] == "mode"] == []


def test_no_fix_is_reported_as_such_and_ends_the_static_hold(policy) -> None:
    ops = [["run", 0], ["fix", 5000, [*HOME, 9]], ["motion", 10000], ["run", 905000], ["fix", 1000000, None],
           ["run", 1805000]]
    out = policy(True, ops)["out"]
    ups = [a[3] for a in out if a[1] == "uplink"]
    assert [u["fix"] for u in ups] == ["3d", "none"]
    assert ups[1]["fix_age_s"] == spec.FIELDS["fix_age_s"]["unknown"]
    assert out[-1][1] == "acquire"  # no hold on a fix older than the failed attempt


def test_bad_timings_are_refused_with_the_name(mpy) -> None:
    out = mpy.run("""
import positions
for bad in ({"position_s": 900}, dict(position_s=900, moving_position_s=60, moving_quiet_s=0,
            motion_burst_count=3, motion_burst_s=30, track_points=4),
            dict(position_s=900, moving_position_s=60, moving_quiet_s=300,
            motion_burst_count=3, motion_burst_s=30, track_points=61)):
    try:
        positions.timings(bad)
    except positions.PositionError as exc:
        print(exc)
""")
    lines = out.strip().splitlines()
    assert "moving_position_s missing" in lines[0]
    assert "moving_quiet_s must be a positive integer" in lines[1]
    assert "track_points 61" in lines[2]
