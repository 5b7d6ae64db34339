"""hardware/: every JSON parses, every figure has a source, the battery curve is monotonic, the
pin map respects the ESP32-S3's rules, the card loads its data through hwdata, and the weekly
energy budget comes out of power.json (the design's ~336 mAh/week DRX floor)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carecard.hardware.power import DutyCycle, PowerDataError, load, weekly_budget

HARDWARE = Path(__file__).resolve().parent.parent / "hardware"
ALL_JSON = sorted(HARDWARE.glob("*.json"))
MINE = ["battery_lipo.json", "power.json", "pins_carecard_s3.json", "accel_lis2dh12.json"]


def _load(name: str) -> dict:
    return json.loads((HARDWARE / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", ALL_JSON, ids=lambda p: p.name)
def test_every_hardware_json_parses(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data


def _objects_with_numbers(node, where="$"):
    """Every JSON object that holds a number (directly or in a list of numbers)."""
    if isinstance(node, dict):
        direct = any(
            (isinstance(v, (int, float)) and not isinstance(v, bool))
            or (isinstance(v, list) and v and all(isinstance(x, (int, float, list)) for x in v))
            for v in node.values()
        )
        if direct:
            yield where, node
        for k, v in node.items():
            yield from _objects_with_numbers(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects_with_numbers(v, f"{where}[{i}]")


@pytest.mark.parametrize("name", MINE)
def test_every_figure_has_a_source(name):
    data = _load(name)
    top_source = data.get("source")
    count = 0
    for where, obj in _objects_with_numbers(data):
        count += 1
        if where == "$.avoid":
            continue
        text = obj.get("source") or obj.get("why")
        # Pin entries say why they were chosen; the pin facts they rely on are the file's source.
        if where.startswith("$.pins."):
            assert obj.get("why") and top_source, where
            continue
        assert isinstance(text, str) and len(text) > 20, f"{name} {where}: no source"
    assert count >= 3


def test_every_power_figure_is_complete():
    figures = _load("power.json")["figures"]
    for key, f in figures.items():
        assert set(f) >= {"value", "unit", "figure", "source", "verified"}, key
        assert f["unit"] in ("mA", "mV"), key
        assert f["value"] > 0, key
    # Every part and state of the design brief's section 5 table that is a power figure.
    for key in ("a7670.off", "a7670.sleep_drx", "a7670.sleep_drx_gsm", "a7670.idle", "a7670.tx_lte",
                "a7670.tx_gsm_peak", "a7670.voice_call", "a7670.vbat_min", "ec800m.sleep_drx",
                "l76k.acquisition", "l76k.standby", "at6558r.tracking", "at6558r.backup",
                "esp32s3.deep_sleep", "esp32s3.light_sleep", "esp32s3.active"):
        assert key in figures, key


def test_battery_curve_is_monotonic_and_spans_0_to_100():
    curve = _load("battery_lipo.json")["ocv_curve"]["points_mv_pct"]
    mvs = [p[0] for p in curve]
    pcts = [p[1] for p in curve]
    assert mvs == sorted(mvs) and len(set(mvs)) == len(mvs)
    assert pcts == sorted(pcts) and pcts[0] == 0 and pcts[-1] == 100
    assert all(isinstance(x, int) for p in curve for x in p)
    # The four points the design brief quotes come from this very table.
    for mv, pct in ((4190, 100), (3720, 50), (3420, 20), (3100, 0)):
        assert [mv, pct] in curve


def test_levels_and_tx_guard_are_ordered():
    b = _load("battery_lipo.json")
    vbat_min = _load("power.json")["figures"]["a7670.vbat_min"]["value"]
    lv = b["levels"]
    for name in ("low", "critical", "shutdown"):
        assert lv[name]["exit_mv"] > lv[name]["enter_mv"], name
    assert lv["low"]["enter_mv"] > lv["critical"]["enter_mv"] > lv["shutdown"]["enter_mv"]
    tx_stop = vbat_min + b["tx_guard"]["sag_allowance_mv"]
    # "critical" is raised while the modem can still send it; "shutdown" once it cannot.
    assert lv["critical"]["enter_mv"] > tx_stop > lv["shutdown"]["enter_mv"] >= vbat_min


def test_pin_map_follows_the_esp32_s3_rules():
    pins = _load("pins_carecard_s3.json")
    avoid = {int(k) for k in pins["avoid"]}
    assert {0, 3, 45, 46} <= avoid and {19, 20} <= avoid and {43, 44} <= avoid
    used = [p["gpio"] for p in pins["pins"].values()] + [pins["battery_adc"]["gpio"]]
    assert len(used) == len(set(used)), "a GPIO is used twice"
    assert not set(used) & avoid, "a strapping / flash / USB / console pin is used"
    assert all(0 <= g <= 48 for g in used)
    for name in pins["keys"]:
        key = pins["pins"][name]
        # ext1 wake: RTC-capable GPIO (0-21), active high with a pull-down.
        assert key["gpio"] <= 21 and key["active"] == "high" and key["pull"] == "down", name
        assert key["wake"] == "ext1"
    assert len(pins["keys"]) == 4
    for name in ("modem_pwrkey", "modem_dtr", "modem_ri", "gnss_power", "gnss_backup"):
        assert pins["pins"][name]["gpio"] <= 21, f"{name} must be an RTC GPIO (held in deep sleep)"
    assert 1 <= pins["battery_adc"]["gpio"] <= 10, "battery on ADC1 (GPIO1-10)"
    adc = pins["battery_adc"]
    full_charge_at_pin = 4200 * adc["divider_bottom_ohm"] / (adc["divider_top_ohm"] + adc["divider_bottom_ohm"])
    assert full_charge_at_pin < adc["adc_full_scale_mv"]
    for name in ("modem_tx", "modem_rx", "gnss_tx", "gnss_rx", "buzzer", "vibration", "led",
                 "charger_chrg", "charger_stdby"):
        assert name in pins["pins"], name


def test_battery_module_loads_the_data_on_micropython(mpy):
    """battery.py reads battery_lipo.json, pins_carecard_s3.json and power.json from the card
    image (hwdata), and what it reads is what the repo holds."""
    out = mpy.run(
        "import battery\n"
        "b = battery.Battery()\n"
        "print(list(b.curve.mv), list(b.curve.pct), b._tx_stop, b._div_num, b._div_den)\n"
    )
    curve = _load("battery_lipo.json")["ocv_curve"]["points_mv_pct"]
    adc = _load("pins_carecard_s3.json")["battery_adc"]
    tx_stop = _load("power.json")["figures"]["a7670.vbat_min"]["value"] + \
        _load("battery_lipo.json")["tx_guard"]["sag_allowance_mv"]
    expected = (
        f"{[p[0] for p in curve]} {[p[1] for p in curve]} {tx_stop} "
        f"{adc['divider_top_ohm'] + adc['divider_bottom_ohm']} {adc['divider_bottom_ohm']}"
    )
    assert out.strip() == expected


# ------------------------------------------------------------------------------ budget


def test_drx_sleep_alone_is_the_336_mah_weekly_floor():
    budget = weekly_budget(DutyCycle(gnss_idle="off", mcu_sleep="deep"))
    drx = budget.items["a7670 sleep_drx, all week"]
    assert drx == pytest.approx(336.0)
    assert budget.total_mah == pytest.approx(336.0 + 0.008 * 168)


def test_typical_week_budget_is_itemised_from_the_data():
    data = load()
    duty = DutyCycle(fixes_per_day=24, fix_s=30, uplinks_per_day=30, uplink_s=10,
                     call_minutes_per_day=2, mcu_awake_s_per_day=600, mcu_sleep="light",
                     gnss="at6558r", gnss_idle="backup")
    b = weekly_budget(duty, data)
    f = {k: v["value"] for k, v in data["figures"].items()}
    assert b.items["at6558r tracking"] == pytest.approx(f["at6558r.tracking"] * 24 * 30 * 7 / 3600)
    assert b.items["a7670 transmit (a7670.tx_lte)"] == pytest.approx(
        (f["a7670.tx_lte"] - f["a7670.sleep_drx"]) * 300 * 7 / 3600)
    assert b.items["a7670 voice calls"] == pytest.approx(
        (f["a7670.voice_call"] - f["a7670.sleep_drx"]) * 120 * 7 / 3600)
    assert b.total_mah == pytest.approx(sum(b.items.values()))
    assert b.total_mah > 336
    # Light sleep alone costs ~134 mAh a week: deep sleep between events is what keeps a week.
    deep = weekly_budget(DutyCycle(**{**duty.__dict__, "mcu_sleep": "deep"}), data)
    assert b.total_mah - deep.total_mah == pytest.approx((f["esp32s3.light_sleep"] - f["esp32s3.deep_sleep"]) * 168
                                                         - (f["esp32s3.light_sleep"] - f["esp32s3.deep_sleep"]) * 600 * 7 / 3600)
    assert b.average_ma() == pytest.approx(b.total_mah / 168)


def test_budget_rejects_impossible_duty_cycles():
    with pytest.raises(PowerDataError, match="more than a day"):
        weekly_budget(DutyCycle(fixes_per_day=100, fix_s=1000))
    with pytest.raises(PowerDataError, match="negative"):
        weekly_budget(DutyCycle(uplinks_per_day=-1))
    with pytest.raises(PowerDataError, match="no figure"):
        weekly_budget(DutyCycle(modem="sim800"))


def test_power_figures_named_by_other_part_files_exist():
    """Part files (gnss_*.json, modem_*.json) name their currents by power.json key instead of
    restating them: every key they name must exist."""
    figures = _load("power.json")["figures"]
    named = 0
    for path in ALL_JSON:
        for key in json.loads(path.read_text(encoding="utf-8")).get("power_figures", []):
            assert key in figures, f"{path.name} names power figure {key!r}, absent from power.json"
            named += 1
    assert named >= 0
