"""The energy model (tools/vcard/energy.py), the scenario format (tools/vcard/scenario.py) and
`carecard power`."""

from __future__ import annotations

import calendar
import json
from pathlib import Path

import pytest

from carecard.hardware import power as power_data
from carecard.tools.vcard import energy, scenario
from carecard.tools.vcard.energy import DutyModel, Ledger


def test_ledger_times_states_and_the_report_charges_them_at_power_json_figures():
    figures = power_data.load()["figures"]
    led = Ledger(0)
    led.set("modem", "sleep", 0)
    led.set("modem", "tx", 3_600_000)          # 1 h DRX, then 1 min TX, then DRX again
    led.set("modem", "sleep", 3_660_000)
    led.set("mcu", "deep", 0)
    day = energy.DAY_MS
    report = energy.energy_report(led, day)
    drx = figures["a7670.sleep_drx"]["value"]
    tx = figures["a7670.tx_lte"]["value"]
    expected = drx * (24 - 1 / 60) + tx / 60 + figures["esp32s3.deep_sleep"]["value"] * 24
    assert report["mah_per_day"] == pytest.approx(expected)
    assert report["average_ma"] == pytest.approx(expected / 24)
    assert report["days_per_charge"] == pytest.approx(energy.capacity_mah() / expected)
    states = report["breakdown"]["modem"]["states"]
    assert states["tx"]["hours_per_day"] == pytest.approx(1 / 60)
    assert states["tx"]["figure"] == "a7670.tx_lte" and states["tx"]["verified"] is False
    with pytest.raises(energy.EnergyError, match="no power figure for modem in state 'warp'"):
        led.set("modem", "warp", day)
    with pytest.raises(energy.EnergyError, match="before the last change"):
        led.set("modem", "idle", 10)


def test_every_shipped_scenario_loads_and_the_duty_model_accounts_for_the_whole_time():
    names = {p.stem for p in scenario.shipped()}
    assert names >= {"normal-day", "week-skipped-charging", "fall-at-home",
                     "sos-no-answer-then-voicemail", "coverage-hole-6h", "power-loss-outbox-write",
                     "battery-rundown", "reboot-during-call", "left-on-table"}
    for path in scenario.shipped():
        sc = scenario.load(path)
        ledger, end = energy.play_duty(sc, DutyModel().with_settings(sc.settings))
        totals = ledger.totals(end)
        for component in ("modem", "gnss", "mcu", "motion"):
            assert sum(ms for (c, _), ms in totals.items() if c == component) == end, (path, component)


def test_the_modem_drx_floor_is_the_floor_and_settings_only_lower_the_budget():
    sc = scenario.load(scenario.find("left-on-table"))
    report = energy.days_for(sc, DutyModel())
    floor = power_data.load()["figures"]["a7670.sleep_drx"]["value"] * 24
    assert report["mah_per_day"] > floor
    rows = energy.setting_effects(sc, DutyModel())
    assert rows[0]["setting"] == "as given" and rows[-1]["setting"] == "all of the above"
    assert all(r["days_per_charge"] >= rows[0]["days_per_charge"] for r in rows)
    assert rows[-1]["days_per_charge"] == max(r["days_per_charge"] for r in rows)


def test_a_table_card_takes_no_fixes_a_worn_one_does():
    worn = scenario.load(scenario.find("fall-at-home"))
    table = scenario.load(scenario.find("left-on-table"))
    w = energy.days_for(worn, DutyModel())["breakdown"]["gnss"]["states"]
    t = energy.days_for(table, DutyModel())["breakdown"]["gnss"]["states"]
    assert "acquiring" in w and "acquiring" not in t


BAD = [
    ('[scenario]\nname = "x"\nstart = "2026-12-07 06:00"\nduration = "1h"\n', "not a local time with its offset"),
    ('[scenario]\nname = "x"\nstart = "2026-12-07T06:00:00+08:00"\nduration = "1h"\n', "home place 'home' is not in"),
    ('[scenario]\nname = "x"\nstart = "2026-12-07T06:00:00+08:00"\nduration = "an hour"\n[places]\nhome = { lat = 1, lon = 2 }\n',
     "is not a duration"),
    ('[scenario]\nname = "x"\nstart = "2026-12-07T06:00:00+08:00"\nduration = "1h"\n[places]\nhome = { lat = 1, lon = 2 }\n'
     '[[timeline]]\nat = "06:10"\ndo = "dance"\n', "do = 'dance' is not one of"),
    ('[scenario]\nname = "x"\nstart = "2026-12-07T06:00:00+08:00"\nduration = "1h"\n[places]\nhome = { lat = 1, lon = 2 }\n'
     '[[timeline]]\nat = "05:10"\ndo = "wake"\n', "before the scenario's start"),
    ('[scenario]\nname = "x"\nstart = "2026-12-07T06:00:00+08:00"\nduration = "1h"\n[places]\nhome = { lat = 1, lon = 2 }\n'
     '[[timeline]]\nat = "06:10"\ndo = "press"\nkey = 1\n', "key 1 has no contact"),
    ('[scenario]\nname = "x"\nstart = "2026-12-07T06:00:00+08:00"\nduration = "1h"\n[places]\nhome = { lat = 1, lon = 2 }\n'
     '[contacts]\n1 = { number = "+861", answers = "maybe" }\n', "answers = 'maybe' is not one of"),
    ('[scenario]\nname = "x"\nstart = "2026-12-07T06:00:00+08:00"\nduration = "1h"\n[places]\nhome = { lat = 1, lon = 2 }\n'
     '[[timeline]]\nat = "06:20"\ndo = "wake"\n[[timeline]]\nat = "06:10"\ndo = "sleep"\n', "earlier than the step before"),
    ('[scenario]\nname = "x"\nstart = "2026-12-07T06:00:00+08:00"\nduration = "1h"\n[places]\nhome = { lat = 1, lon = 2 }\n'
     '[[timeline]]\nat = "06:20"\ndo = "carry"\nstate = "worn"\ncolour = "red"\n', "unknown key 'colour'"),
    ("[scenario\n", "not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_scenarios_say_what_and_where(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(scenario.ScenarioError, match=message) as info:
        scenario.load(path)
    assert str(path) in str(info.value)


def test_clock_times_offsets_and_days():
    text = ('[scenario]\nname = "x"\nstart = "2026-12-07T06:00:00+08:00"\nduration = "2d"\n'
            '[places]\nhome = { lat = 1, lon = 2 }\n'
            '[[timeline]]\nat = "07:30"\ndo = "wake"\n[[timeline]]\nat = "+3h"\ndo = "sleep"\n'
            '[[timeline]]\nat = "day 2 06:00"\ndo = "wake"\n')
    sc = scenario.parse(__import__("tomllib").loads(text), Path("x.toml"))
    assert [s.at_s for s in sc.steps] == [5400, 10800, 86400]
    assert sc.start_unix == calendar.timegm((2026, 12, 6, 22, 0, 0)) and sc.tz_quarters == 32


def test_carecard_power_prints_the_breakdown_and_json(capsys):
    from carecard.host.cli import main

    assert main(["power", "normal-day", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"days_per_charge", "mah_per_day", "average_ma", "breakdown", "settings"}
    assert report["mah_per_day"] == pytest.approx(sum(c["mah_per_day"] for c in report["breakdown"].values()))
    assert set(report["breakdown"]) == {"modem", "gnss", "mcu", "motion"}
    assert main(["power", "sos-no-answer-then-voicemail"]) == 0
    out = capsys.readouterr().out
    assert "days per charge" in out and "what each setting buys" in out and "#" in out
    assert main(["power", "no-such-scenario"]) == 1
    assert "normal-day" in capsys.readouterr().err
