"""The alert engine on protocol v3: held fixes (position `source`), the hello's `motion_sensor`
and a status's motion_count unknown (no sensor). docs/events.md, "How stillness is judged"."""

from __future__ import annotations

from carecard.host.engine import Engine, Settings

from enginegen import HOME, Gen, local, offset, run, steps

STEP = 900


def _settings(**extra: object) -> Settings:
    # motion_sensor left at its default (False): what a card has is learnt from its hello
    return Settings({"family": ("son",), "grid_worker": ("grid",), **extra})


def static_hold(gen: Gen, start: float, end: float, *, fix_at: float, point: tuple[float, float] = HOME,
                hdop: float = 1.0) -> list[dict]:
    """A card in static hold: its fix taken at `fix_at`, then re-sent every 15 min marked held
    (age growing); an hourly status with no motion."""
    events = []
    t = start
    while t < end:
        if t > fix_at:
            events.append(gen.pos(t, *point, hdop=hdop, age=int(t - fix_at), source="held"))
        if int(t - start) % 3600 == 0:
            events.append(gen.status(t + 5, motion=0))
        t += STEP
    return events


def test_a_card_in_static_hold_is_still_and_raises_inactivity_past_its_threshold() -> None:
    """Held fixes say the sensor saw no motion since the fix: stillness evidence up to each
    report, so a fallen wearer whose card holds its fix is prompted after the threshold."""
    gen = Gen()
    engine = Engine(_settings())
    events = [gen.hello(local(8) - 60), gen.status(local(8) - 30, motion=12), gen.pos(local(8))]
    events += static_hold(gen, local(8), local(12), fix_at=local(8))
    out = run(engine, events, until=local(12))
    assert steps(out)[0] == ("inactivity", "checkin") and {kind for kind, _ in steps(out)} == {"inactivity"}
    # the last motion (the status at 07:59:30) + the 3 h threshold
    assert out[0].at >= local(8) + 3 * 3600 - 60


def test_a_held_fix_is_never_movement_even_when_it_repeats_an_outlier() -> None:
    """A fresh fix 300 m off with poor HDOP is an outlier; its held copies repeat one observation,
    never a second fix confirming the move, so the alert is not closed as movement."""
    gen = Gen()
    engine = Engine(_settings())
    far = offset(HOME, 300, 0)
    events = [gen.hello(local(8) - 60), gen.status(local(8) - 30, motion=12), gen.pos(local(8))]
    events += [gen.pos(local(8) + STEP * i) for i in range(1, 13)]  # fresh fixes, still, until 10:45
    events.append(gen.pos(local(11) + 60, *far, hdop=6.0, age=2))  # an indoor outlier
    events += [gen.pos(local(11) + 60 + STEP * i, *far, hdop=6.0, age=2 + STEP * i, source="held")
               for i in range(1, 5)]
    events += [gen.status(local(8) + 3600 * h + 5, motion=0) for h in range(1, 5)]
    out = run(engine, events, until=local(12.5))
    assert ("inactivity", "checkin") in steps(out)
    assert not [a for a in out if getattr(a, "step", "") == "resolved"]


def test_a_card_without_a_sensor_is_learnt_from_its_hello_and_its_status() -> None:
    """With motion_sensor true in the settings, a hello saying "none" (or a status whose
    motion_count is unknown) means the card counts no motion: a zero is no stillness evidence,
    and "no motion for a day" (card not worn) never applies to it."""
    for first in ("hello", "status"):
        gen = Gen()
        engine = Engine(_settings(motion_sensor=True))
        events = [gen.hello(local(8) - 60, "none") if first == "hello" else gen.status(local(8) - 60, None)]
        events.append(gen.pos(local(8)))
        # statuses every 15 min with motion 0, no fixes: nothing says the person is still
        events += [gen.status(local(8) + STEP * i, motion=0 if first == "hello" else None) for i in range(1, 40)]
        out = run(engine, events, until=local(8) + 30 * 3600)
        assert "card_not_worn" not in {kind for kind, _step in steps(out)}, first
        assert ("inactivity", "checkin") not in steps(out), first


def test_a_hello_with_a_sensor_turns_motion_counts_into_evidence() -> None:
    """The settings say no sensor (the default); the card's hello says lis2dh12: a status with no
    motion is stillness evidence, as with `motion_sensor = true` in the settings."""
    gen = Gen()
    engine = Engine(_settings())
    events = [gen.hello(local(8) - 60, "lis2dh12"), gen.status(local(8) - 30, motion=9), gen.pos(local(8))]
    events += [gen.status(local(8) + STEP * i, motion=0) for i in range(1, 16)]
    out = run(engine, events, until=local(12))
    assert steps(out)[0] == ("inactivity", "checkin") and {kind for kind, _ in steps(out)} == {"inactivity"}


def test_what_the_hello_said_survives_a_restart() -> None:
    gen = Gen()
    engine = Engine(_settings())
    run(engine, [gen.hello(local(8) - 60, "lis2dh12"), gen.status(local(8) - 30, motion=9), gen.pos(local(8))])
    state = engine.to_state()
    again = Engine.from_state(state, _settings())
    events = [gen.status(local(8) + STEP * i, motion=0) for i in range(1, 16)]
    assert steps(run(again, events, until=local(12)))[:1] == [("inactivity", "checkin")]


def test_motion_counted_by_an_hourly_status_is_dated_before_the_fix_held_since() -> None:
    """A status counts motion since the one before and is dated at its own time; held fixes after
    it say the sensor saw no motion since their fix, so that motion came before the fix: the
    stillness clock starts at the fix, not an hour later at the status."""
    gen = Gen()
    engine = Engine(_settings())
    fall = local(9.5)
    events = [gen.hello(local(8) - 60), gen.status(local(8), motion=40), gen.status(local(9), motion=30)]
    events += [gen.pos(local(8) + STEP * i, age=2) for i in range(7)]  # fresh fixes until the fall at 09:30
    events.append(gen.status(local(10), motion=25))  # 10:00: the motion of 09:00-09:30
    events += [gen.pos(fall + STEP * i, age=2 + STEP * i, source="held") for i in range(1, 16)]
    events += [gen.status(local(9) + 3600 * h, motion=0) for h in range(2, 5)]
    out = run(engine, events, until=local(13))
    assert steps(out)[:1] == [("inactivity", "checkin")]
    assert out[0].at <= fall + 3 * 3600 + STEP  # within the threshold and one report of the fix
