"""The alert engine's core: stillness, sleeping hours, escalation with one shared state, SOS,
offline, battery, not worn, duplicates, outages, state across a restart, settings."""

from __future__ import annotations

import json

import pytest

from carecard.host.engine import Engine, EngineError, SendCheckin, Settings, SettingsError, UnknownAlert
from carecard.host.engine.settings import SETTINGS

from enginegen import HOME, Gen, local, offset, run, sensor_settings, steps

STEP = 900


def still_day(gen: Gen, start: float, end: float, *, motion_until: float | None = None,
              point: tuple[float, float] = HOME) -> list[dict]:
    """A position and a status every 15 min; motion counted until `motion_until`."""
    events = []
    t = start
    while t < end:
        events.append(gen.pos(t, *point))
        events.append(gen.status(t + 5, motion=5 if motion_until and t < motion_until else 0))
        t += STEP
    return events


def test_stillness_prompts_the_card_then_family_then_grid_worker() -> None:
    gen = Gen()
    engine = Engine(sensor_settings())
    events = still_day(gen, local(8), local(16), motion_until=local(9))
    out = run(engine, events)
    assert steps(out) == [("inactivity", "checkin"), ("inactivity", "family"), ("inactivity", "grid_worker")]
    checkin = [a for a in out if isinstance(a, SendCheckin)]
    assert len(checkin) == 1 and checkin[0].timeout_s == SETTINGS["checkin_timeout"][0]
    raised = out[1]
    # the last motion was in the status at 08:45; 3 h later the prompt goes out
    assert raised.at == local(8.75) + 5 + 3 * 3600
    family = next(a for a in out if getattr(a, "step", "") == "family")
    assert family.at - raised.at == SETTINGS["checkin_window"][0]
    assert family.recipients == ("son",)
    event = family.event()
    assert event["kind"] == "alert" and event["data"]["alert"] == "inactivity"
    assert event["data"]["details"]["step"] == "family" and event["data"]["details"]["state"] == "open"


def test_a_checkin_answer_closes_the_alert_as_checkin() -> None:
    gen = Gen()
    engine = Engine(sensor_settings())
    out = run(engine, still_day(gen, local(8), local(12.5), motion_until=local(9)))
    prompt = next(a for a in out if isinstance(a, SendCheckin))
    out = engine.feed(gen.checkin(local(12.5), prompt.prompt_id))
    resolved = [a for a in out if a.step == "resolved"]
    assert resolved and resolved[0].details["closed_reason"] == "checkin" and resolved[0].state == "resolved"
    assert engine.open_alerts() == []


def test_movement_closes_the_alert_and_acknowledgement_stops_escalation_for_the_episode() -> None:
    gen = Gen()
    engine = Engine(sensor_settings())
    out = run(engine, still_day(gen, local(8), local(12.6), motion_until=local(9)))
    alert_id = next(a for a in out if isinstance(a, SendCheckin)).alert_id
    out = engine.acknowledge(alert_id, "son", local(12.6))
    assert steps(out) == [("inactivity", "acknowledged")] and out[0].details["acknowledged_by"] == "son"
    # still for hours more: no family, no grid worker, no new alert for the same episode
    out = run(engine, still_day(gen, local(12.7), local(20)))
    assert steps(out) == []
    with pytest.raises(UnknownAlert):
        engine.acknowledge("no-such-alert", "son")
    # movement ends the episode (the acknowledged alert resolves), and a new stillness is a new alert
    out = run(engine, [gen.status(local(20.1), motion=4)])
    assert [(a.step, a.details.get("closed_reason")) for a in out] == [("resolved", "movement")]
    out = run(engine, still_day(gen, local(8, 1), local(13, 1), motion_until=local(9, 1)))
    assert steps(out, "inactivity")[0] == ("inactivity", "checkin")


def test_sleeping_hours_hold_stillness_until_wake_plus_grace() -> None:
    gen = Gen()
    engine = Engine(sensor_settings())
    # last motion at 20:00, then still all night: nothing before 08:30 (07:00 + 1.5 h), then the prompt
    events = still_day(gen, local(19), local(10, 1), motion_until=local(20))
    out = run(engine, events)
    raised = [a for a in out if getattr(a, "step", "") == "checkin"]
    assert len(raised) == 1 and raised[0].at == local(8.5, 1)
    # a night on which the person gets up before 08:30: no alert at all
    gen2, engine2 = Gen(), Engine(sensor_settings())
    events = still_day(gen2, local(19), local(7.5, 1), motion_until=local(20))
    events += still_day(gen2, local(7.5, 1), local(9, 1), motion_until=local(9, 1))
    assert steps(run(engine2, events)) == []


def test_indoor_outliers_with_poor_hdop_are_not_movement_but_two_agreeing_fixes_are() -> None:
    gen = Gen()
    engine = Engine(Settings({"family": ("son",)}))  # no motion sensor: fixes alone
    events = []
    t = local(8)
    for i in range(20):
        if i % 4 == 2:  # an outlier 300 m away, poor HDOP
            events.append(gen.pos(t, *offset(HOME, 300, -50), hdop=6.0))
        else:
            events.append(gen.pos(t, *offset(HOME, (i % 3) * 15 - 15, (i % 2) * 20 - 10), hdop=2.0))
        t += STEP
    out = run(engine, events)
    raised = [a for a in out if getattr(a, "step", "") == "checkin"]
    assert steps(out)[0] == ("inactivity", "checkin")  # 3 h after 08:00 despite the outliers
    assert len(raised) == 1 and raised[0].at == local(11) - 2  # fix time: message time - fix age
    # two fixes agreeing 200 m away: movement (the alert closes)
    out = run(engine, [gen.pos(local(13), *offset(HOME, 200, 0), hdop=4.0),
                       gen.pos(local(13.25), *offset(HOME, 210, 10), hdop=4.0)])
    assert [(a.step, a.details.get("closed_reason")) for a in out if getattr(a, "kind", "") == "inactivity"][-1] == \
        ("resolved", "movement")


def test_lost_fixes_and_gaps_are_unknown_never_stillness() -> None:
    gen = Gen()
    engine = Engine(Settings())
    events = [gen.pos(local(8))]
    t = local(8.25)
    while t < local(14):
        events.append(gen.pos(t, fix="none", hdop=None, age=None))  # no fix: unknown
        t += STEP
    out = run(engine, events, until=local(14))
    assert steps(out, "inactivity") == []
    # fixes resume after a 6 h gap: the gap does not count, so 3 h more are needed
    events = [gen.pos(local(14) + i * STEP) for i in range(14)]
    out = run(engine, events)
    raised = [a for a in out if getattr(a, "step", "") == "checkin"]
    assert len(raised) == 1 and raised[0].at == local(17) - 2


def test_every_sos_alerts_at_once_to_everyone_and_duplicates_are_dropped() -> None:
    gen = Gen()
    engine = Engine(sensor_settings())
    first = gen.sos(local(2))
    second = gen.sos(local(2.01))
    out = engine.feed(first) + engine.feed(first) + engine.feed(second)
    assert steps(out) == [("sos", "raised"), ("sos", "raised")]
    assert engine.duplicates == 1
    assert out[0].notify == ("family", "grid_worker") and out[0].recipients == ("son", "grid")
    assert out[0].at - local(2) <= 60
    ack = engine.acknowledge(out[0].alert_id, "grid")
    assert [(a.step, a.state, a.details["closed_reason"]) for a in ack] == [("acknowledged", "resolved", "acknowledgement")]


def test_offline_tells_low_battery_from_lost_coverage_and_resolves_on_reconnect() -> None:
    gen = Gen()
    engine = Engine(Settings())
    out = run(engine, [gen.status(local(10), pct=80)], until=local(12))
    offline = [a for a in out if a.kind == "offline"]
    assert len(offline) == 1 and offline[0].details["reason"] == "coverage_lost"
    assert offline[0].at == local(10) + 1 + 4 * 900
    out = run(engine, [gen.status(local(12.5), pct=80)])
    assert [(a.kind, a.step, a.details.get("closed_reason")) for a in out] == [("offline", "resolved", "reconnected")]
    out = run(engine, [gen.power(local(13), "critical", pct=3)], until=local(16))
    assert [a.details["reason"] for a in out if a.kind == "offline"] == ["battery_low"]


def test_low_battery_reminds_then_resolves_when_charging() -> None:
    gen = Gen()
    engine = Engine(Settings())
    events = [gen.status(local(10) + i * STEP, pct=19) for i in range(20)]
    out = run(engine, events)
    assert steps(out, "low_battery") == [("low_battery", "raised"), ("low_battery", "reminder")]
    out = run(engine, [gen.status(local(15.5), pct=19, charging="charging")])
    assert [(a.step, a.details.get("closed_reason")) for a in out if a.kind == "low_battery"] == [("resolved", "charging")]


def test_a_low_power_event_above_the_pct_threshold_stays_alerted_until_charging() -> None:
    """The card says "low" by its own voltage threshold (40 % by the card's table, as the virtual
    card's battery-rundown day showed); the statuses after it, still discharging at 39 %, 38 %...,
    are no recovery: the alert stays open, reminds, and only charging closes it."""
    gen = Gen()
    engine = Engine(Settings())
    events = [gen.power(local(10), "low", pct=40)] + \
        [gen.status(local(10) + i * STEP, pct=39 - i // 4) for i in range(1, 24)] + \
        [gen.power(local(16), "critical", pct=32)]
    out = run(engine, events)
    assert [(a.step, a.details.get("closed_reason")) for a in out if a.kind == "low_battery"] == \
        [("raised", None), ("reminder", None)]
    out = run(engine, [gen.status(local(16.5), pct=31, charging="charging")])
    assert [(a.step, a.details.get("closed_reason")) for a in out if a.kind == "low_battery"] == [("resolved", "charging")]


def test_not_charged_for_days_and_on_the_charger_into_the_day() -> None:
    gen = Gen()
    engine = Engine(Settings({"not_charged": "2d"}))
    events = [gen.status(local(10) + i * 3000, pct=90 - i // 20) for i in range(int(2.5 * 86400 / 3000))]
    out = run(engine, events)
    # the clock starts when the card is first heard (received 1 s after its first status)
    assert [a.at for a in out if a.kind == "not_charged"] == [local(10) + 1 + 2 * 86400]
    gen2, engine2 = Gen(), Engine(Settings())
    events = [gen2.status(local(21.75) + i * STEP, charging="charging") for i in range(60)]
    out = run(engine2, events)
    worn = [a for a in out if a.kind == "card_not_worn"]
    assert len(worn) == 1 and worn[0].details["reason"] == "on_charger"
    assert worn[0].at == local(8.5, 1) + 3 * 3600  # sleeping hours end 08:30, then 3 h


def test_after_an_outage_queued_data_is_judged_at_its_own_time() -> None:
    gen = Gen()
    engine = Engine(sensor_settings())
    # still from 08:00 to 13:00 and moving since, all queued and delivered at 15:00
    events = still_day(gen, local(8), local(13), motion_until=local(8.1))
    events += still_day(gen, local(13), local(15), motion_until=local(15))
    for i, event in enumerate(events):
        event["received_at"] = f"2025-11-04T07:00:{i % 60:02d}.{i:03d}Z"  # 15:00 local
    out = run(engine, events)
    assert steps(out, "inactivity") == []  # no longer true now
    # the same backlog ending in stillness: one alert, raised now
    gen2, engine2 = Gen(), Engine(sensor_settings())
    events = still_day(gen2, local(8), local(15), motion_until=local(8.1))
    for i, event in enumerate(events):
        event["received_at"] = f"2025-11-04T07:00:{i % 60:02d}.{i:03d}Z"
    out = run(engine2, events)
    assert steps(out, "inactivity") == [("inactivity", "checkin")]
    raised = next(a for a in out if getattr(a, "step", "") == "checkin")
    assert raised.details["still_since"] == "2025-11-04T00:00:05Z"  # the status at 08:00 counted motion
    assert local(15) <= raised.at < local(15) + 60  # raised as the backlog arrived, not back in time


def test_state_survives_a_restart_and_continues_identically() -> None:
    gen = Gen()
    events = still_day(gen, local(8), local(16), motion_until=local(9))
    half = len(events) // 2 + 6
    reference = run(Engine(sensor_settings()), events)
    first = Engine(sensor_settings())
    out = run(first, events[:half])
    state = json.loads(json.dumps(first.to_state()))
    second = Engine.from_state(state, sensor_settings())
    out += run(second, events[half:])
    assert [(a.kind, a.step, a.at, a.alert_id) for a in out if hasattr(a, "step")] == \
        [(a.kind, a.step, a.at, a.alert_id) for a in reference if hasattr(a, "step")]
    with pytest.raises(EngineError):
        Engine.from_state({"version": 99})


def test_events_that_are_not_of_the_schema_are_rejected_clearly() -> None:
    engine = Engine()
    with pytest.raises(EngineError, match="not an event of the schema"):
        engine.feed({"kind": "status"})
    with pytest.raises(EngineError, match="bad received_at"):
        engine.feed({"kind": "status", "device": "1", "counter": 1, "received_at": "yesterday", "data": {}})
    assert engine.rejected == 2
    assert engine.feed({"kind": "alert", "device": "1", "counter": None, "received_at": "x", "data": {}}) == []


def test_settings_load_from_toml_and_json_and_errors_name_the_key(tmp_path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[defaults]\nstillness_threshold = "2h"\n[devices."861234567890123"]\n'
                    'wake = "06:15"\nhome = { lat = 24.7, lon = 118.4 }\nfamily = ["+86 son"]\n')
    settings = Settings.load(toml)
    device = settings.for_device("861234567890123")
    assert device.stillness_threshold == 7200 and device.wake == 6 * 3600 + 900 and device.home == (24.7, 118.4)
    assert settings.for_device("1").stillness_threshold == 7200 and settings.for_device("1").home is None
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"devices": {"42": {"motion_sensor": True, "offline_factor": 3}}}))
    assert Settings.load(js).for_device("42").offline_after_s == 2700
    bad = tmp_path / "bad.toml"
    bad.write_text('[devices."42"]\nwake = "25:00"\n')
    with pytest.raises(SettingsError, match=r"devices\.42\.wake.*HH:MM"):
        Settings.load(bad)
    bad.write_text('[defaults]\nsnooze = 1\n')
    with pytest.raises(SettingsError, match="unknown key 'snooze'"):
        Settings.load(bad)
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.load(tmp_path / "missing.toml")


def test_docs_list_the_vocabulary_and_every_setting() -> None:
    from pathlib import Path

    from carecard.host.engine.vocabulary import CLOSE_REASONS, KINDS, STEPS, VOCABULARY_VERSION

    text = (Path(__file__).resolve().parent.parent / "docs" / "events.md").read_text()
    assert f"### Alert vocabulary (version {VOCABULARY_VERSION})" in text
    for word in [*KINDS, *STEPS, *CLOSE_REASONS]:
        assert f"`{word}`" in text, word
    for key in SETTINGS:
        assert f"| `{key}` |" in text, key
