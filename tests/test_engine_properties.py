"""Property tests of the alert engine: jitter within accuracy is never movement, sleeping hours
never raise stillness alerts, every SOS alerts, an acknowledged alert never comes back for the
same episode."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from carecard.host.engine import Engine, Notify, SendCheckin, Settings, fix_radius_m
from carecard.host.engine.core import _t
from carecard.host.timefmt import iso_utc, parse_iso_utc

from enginegen import HOME, Gen, local, offset, run

hdops = st.one_of(st.none(), st.integers(5, 254).map(lambda x: x / 10))


@settings(max_examples=150)
@given(st.lists(st.tuples(hdops, st.floats(0, 2 * math.pi), st.floats(0, 0.97), st.integers(30, 3000)),
                min_size=2, max_size=60),
       st.floats(-60, 60), st.floats(-170, 170))
def test_fixes_within_their_accuracy_radius_never_count_as_movement(fixes, lat0, lon0) -> None:
    engine = Engine(Settings())
    defaults = engine.settings.defaults
    gen = Gen()
    events = []
    t = local(8)
    for hdop, bearing, fraction, step in fixes:
        # the radius of the fix as the event will carry its HDOP
        carried = None if hdop is None else round(hdop * 10) / 10
        r = fix_radius_m(carried, defaults) * fraction
        lat, lon = offset((lat0, lon0), r * math.cos(bearing), r * math.sin(bearing))
        events.append(gen.pos(t, lat, lon, hdop=hdop))
        t += step
    out = run(engine, events)
    device = engine.devices[str(gen.device)]
    assert device.move_t == local(8) - 2  # the first fix (its time minus its age) and nothing since
    assert not any(isinstance(a, Notify) and a.details.get("closed_reason") == "movement" for a in out)


@settings(max_examples=150)
@given(wake=st.integers(4 * 60, 10 * 60).map(lambda m: m * 60), bed=st.integers(19 * 60, 23 * 60 + 59),
       grace=st.integers(0, 3 * 3600), threshold=st.integers(1800, 8 * 3600),
       start=st.integers(0, 2 * 86400), hours=st.integers(1, 40), step=st.integers(300, 1800),
       sensor=st.booleans())
def test_no_stillness_alert_during_sleeping_hours(wake, bed, grace, threshold, start, hours, step, sensor) -> None:
    bedtime = f"{bed // 60:02d}:{bed % 60:02d}"
    waking = f"{wake // 3600:02d}:{wake % 3600 // 60:02d}"
    engine = Engine(Settings({"wake": waking, "bedtime": bedtime, "wake_grace": grace,
                              "stillness_threshold": threshold, "motion_sensor": sensor}))
    gen = Gen()
    events = []
    t = local(0) + start
    while t < local(0) + start + hours * 3600:
        events.append(gen.pos(t))
        events.append(gen.status(t + 5, motion=0))
        t += step
    out = run(engine, events, until=t)
    sleep_end = (wake + grace) % 86400
    for action in out:
        if isinstance(action, Notify) and action.kind == "inactivity" and action.step == "checkin":
            local_s = (action.at + 8 * 3600) % 86400
            bed_s = bed * 60
            asleep = (local_s >= bed_s or local_s < sleep_end) if bed_s > sleep_end else bed_s <= local_s < sleep_end
            assert not asleep, (iso_utc(action.at), action.step)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["sos", "pos", "status", "move", "ack"]), st.integers(1, 7200),
                          st.integers(0, 5)), min_size=1, max_size=40))
def test_every_sos_frame_produces_an_alert(script) -> None:
    engine = Engine(Settings({"family": ["son"], "grid_worker": ["grid"]}))
    gen = Gen()
    t = local(3)
    sos_events, raised = set(), 0
    for what, dt, n in script:
        t += dt
        if what == "sos":
            event = gen.sos(t, delay=n * 30)  # up to 2.5 min late, as a retransmission may be
            sos_events.add(event["id"])
            out = engine.advance(t) + engine.feed(event) + engine.feed(event)  # and a duplicate
            mine = [a for a in out if isinstance(a, Notify) and a.kind == "sos" and a.step == "raised"]
            assert len(mine) == 1 and mine[0].details["event"] == event["id"]
            assert mine[0].at - t <= 60 + n * 30 and set(mine[0].notify) == {"family", "grid_worker"}
            raised += 1
        elif what == "ack":
            for alert in engine.open_alerts()[:n]:
                engine.acknowledge(alert["id"], "son", t)
        else:
            event = gen.pos(t) if what == "pos" else gen.status(t, motion=3 if what == "move" else 0)
            engine.advance(t)
            engine.feed(event)
    assert raised == len(sos_events)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["still", "still", "still", "move", "ack", "answer"]),
                          st.integers(300, 5400)), min_size=1, max_size=80))
def test_an_acknowledged_alert_is_never_raised_again_for_the_same_episode(script) -> None:
    engine = Engine(Settings({"motion_sensor": True, "stillness_threshold": 3600, "wake_grace": 0}))
    gen = Gen()
    t = local(9)
    acked: set[str] = set()
    episodes: set[str] = set()
    prompts: dict[str, int] = {}
    def check(out: list) -> None:
        for action in out:
            if isinstance(action, SendCheckin):
                prompts[action.alert_id] = action.prompt_id
            if not isinstance(action, Notify) or action.kind != "inactivity":
                continue
            if action.alert_id in acked:
                assert action.step in ("acknowledged", "resolved"), action
            if action.step == "checkin":
                assert action.details["still_since"] not in episodes  # a new episode each time
                episodes.add(action.details["still_since"])

    for what, dt in script:
        t += dt
        check(engine.advance(t))
        if what == "ack":
            for alert in engine.open_alerts():
                if alert["state"] == "open":
                    check(engine.acknowledge(alert["id"], "son", t))
                    acked.add(alert["id"])
        elif what == "answer" and prompts:
            _alert_id, prompt = prompts.popitem()
            check(engine.feed(gen.checkin(t, prompt)))
        else:
            check(engine.feed(gen.status(t, motion=4 if what == "move" else 0)))


@given(st.floats(0, 2**32 - 1))
def test_the_engines_time_parser_agrees_with_the_events(unix) -> None:
    for text in (iso_utc(unix), iso_utc(unix, millis=True), iso_utc(int(unix))):
        assert _t(text) == _t(text) == parse_iso_utc(text)
    assert _t(None) is None and _t("yesterday") is None and _t(5) is None
