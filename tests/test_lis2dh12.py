"""firmware/lib/lis2dh12.py on MicroPython against a register-level fake of the chip
(tests/fake_lis2dh12.py, written from the datasheet's register map), and the part's data in
hardware/ (address, threshold steps, data rate; its pins)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carecard.tools.micropython import json_lines_service

HERE = Path(__file__).resolve().parent
HARDWARE = HERE.parent / "hardware"
PART = json.loads((HARDWARE / "accel_lis2dh12.json").read_text())
PINS = json.loads((HARDWARE / "pins_carecard_s3.json").read_text())

SERVICE = json_lines_service((HERE / "fake_lis2dh12.py").read_text() + r"""
import lis2dh12, hwdata
chip = None
acc = None
def handle(req, out):
    global chip, acc
    if "chip" in req:
        c = req["chip"]
        chip = FakeLIS2DH12(c.get("address", 0x18), c.get("who", 0x33),
                            {int(k): v for k, v in c.get("stuck", {}).items()})
        part = hwdata.load("accel_lis2dh12")
        if "fs" in req:
            part["mode"]["full_scale_g"] = req["fs"]
        acc = lis2dh12.LIS2DH12(chip, part)
    for op in req.get("ops", ()):
        k = op[0]
        if k == "present":
            out.append(acc.present())
        elif k == "configure":
            acc.configure(op[1], op[2])
            out.append([acc.threshold_mg, acc.duration_ms])
        elif k == "hold":
            rises = chip.pin_rises
            chip.hold(op[1], op[2])
            out.append(chip.pin_rises - rises)
        elif k == "service":
            out.append(acc.service())
        elif k == "isr":
            # the board: the pin rose (flag set by the ISR), so service the chip
            n = 0
            while chip.pin:
                acc.service()
                n += 1
            out.append(n)
        elif k == "take":
            out.append(acc.take_count())
        elif k == "off":
            acc.power_down()
            out.append(chip.odr_hz())
        elif k == "steps":
            out.append(list(acc.steps(op[1], op[2])))
    ans = {"out": out, "count": acc.count, "spurious": acc.spurious, "pin": chip.pin,
           "errors": chip.errors,
           "chip": {"odr_hz": chip.odr_hz(), "low_power": chip.low_power(),
                    "fs_g": chip.full_scale_g(), "threshold_mg": chip.threshold_mg(),
                    "duration": chip.duration_samples(), "latched": chip.latched(),
                    "routed": chip.int1_routed(), "hp": chip.hp_on_int1(),
                    "cfg": chip.regs[0x30]}}
    return ans
""")

MODE = PART["mode"]
STEP = PART["threshold_lsb_mg"][str(MODE["full_scale_g"])]
FLAT = [0, 0, 1000]


class Card:
    def __init__(self, batch):
        self.batch = batch

    def __call__(self, *ops, chip=None, fs=None) -> dict:
        req: dict = {"ops": list(ops)}
        if chip is not None:
            req["chip"] = chip
        if fs is not None:
            req["fs"] = fs
        return json.loads(self.batch.call(json.dumps(req)))


@pytest.fixture(scope="module")
def card(mpy):
    with mpy.Batch(SERVICE) as batch:
        yield Card(batch)


def test_the_fake_runs_the_same_on_cpython():
    namespace: dict = {}
    exec((HERE / "fake_lis2dh12.py").read_text(), namespace)
    chip = namespace["FakeLIS2DH12"]()
    assert chip.readfrom_mem(0x18, 0x0F, 1) == b"\x33"
    assert chip.readfrom_mem(0x18, 0x20 | 0x80, 2) == b"\x07\x00"  # auto-increment
    assert chip.readfrom_mem(0x18, 0x20, 2) == b"\x07\x07"  # no MSB: the same register again


def test_present_tells_the_chip_from_nothing_and_from_another_part(card):
    assert card(["present"], chip={})["out"] == [True]
    assert card(["present"], chip={"address": 0x19})["out"] == [False]
    assert card(["present"], chip={"who": 0x44})["out"] == [False]


def test_configure_sets_low_power_any_motion_on_int1_as_the_datasheet_says(card):
    ans = card(["configure", 96, 40], chip={})
    assert "error" not in ans, ans
    assert ans["errors"] == []
    chip = ans["chip"]
    assert chip["odr_hz"] == MODE["odr_hz"] and chip["low_power"] == MODE["low_power"]
    assert chip["fs_g"] == MODE["full_scale_g"]
    assert chip["threshold_mg"] == 96 and chip["duration"] == 1
    assert chip["latched"] and chip["routed"] and chip["hp"]
    assert chip["cfg"] == 0x2A  # OR of the X, Y, Z high events
    assert ans["out"] == [[96, 40]] and not ans["pin"]


@pytest.mark.parametrize("fs", [2, 4, 8, 16])
def test_threshold_steps_follow_the_full_scale(card, fs):
    step = PART["threshold_lsb_mg"][str(fs)]
    for mg in (0, 1, step // 2, step, step + step // 2 + 1, 5 * step, 300, 1000, 127 * step, 10 * 127 * step):
        ans = card(["configure", mg, 0], chip={}, fs=fs)
        assert "error" not in ans, ans
        got = ans["chip"]["threshold_mg"]
        assert ans["chip"]["fs_g"] == fs
        assert got == ans["out"][0][0]
        want = min(max(mg, step), 127 * step)
        assert abs(got - want) <= step // 2 + 1, (fs, mg, got)


def test_duration_rounds_to_data_rate_steps(card):
    period = 1000 // MODE["odr_hz"]
    for ms, samples in ((0, 0), (period // 2 - 1, 0), (period, 1), (3 * period + 1, 3), (10**6, 127)):
        ans = card(["configure", 96, ms], chip={})
        assert ans["chip"]["duration"] == samples, ms
        assert ans["out"][0][1] == samples * period


def test_motion_above_the_threshold_interrupts_once_and_is_counted(card):
    card(["configure", 96, 0], chip={})
    # at rest on a table gravity is filtered out: no interrupt however long
    ans = card(["hold", FLAT, 60000])
    assert ans["out"] == [0] and not ans["pin"]
    # picked up: 200 mg on X for half a second; the pin rises once and stays (latched)
    ans = card(["hold", [200, 0, 1000], 500], ["hold", FLAT, 5000])
    assert ans["out"] == [1, 0] and ans["pin"]
    ans = card(["isr"], ["take"])
    assert ans["out"] == [1, 1] and not ans["pin"] and ans["count"] == 1
    # a second burst, then a service with nothing pending is counted apart
    ans = card(["hold", [0, -300, 1000], 200], ["isr"], ["service"], ["take"])
    assert ans["out"] == [1, 1, 0, 1] and ans["spurious"] == 1 and ans["count"] == 2
    assert ans["errors"] == []


def test_motion_just_below_the_threshold_or_shorter_than_the_duration_is_ignored(card):
    period = 1000 // MODE["odr_hz"]
    card(["configure", 6 * STEP, 3 * period], chip={})
    ans = card(["hold", [6 * STEP - 1, 0, 1000], 2000], ["hold", FLAT, 100])
    assert ans["out"] == [0, 0] and ans["count"] == 0
    ans = card(["hold", [0, 0, 1000 + 6 * STEP + 50], 3 * period], ["hold", FLAT, 100])
    assert ans["out"] == [0, 0]
    ans = card(["hold", [0, 0, 1000 + 6 * STEP + 50], 5 * period])
    assert ans["out"] == [1]


def test_power_down_stops_the_sensor(card):
    card(["configure", 96, 0], chip={})
    ans = card(["off"], ["hold", [500, 500, 0], 1000])
    assert ans["out"] == [0, 0] and ans["errors"] == []


def test_errors_are_clear_and_say_where(card):
    ans = card(["configure", 96, 0], chip={"address": 0x19})
    assert "LIS2DH12 at 0x18: reading register 0x0f failed" in ans["error"]
    assert ans["error"].startswith("MotionError")
    ans = card(["configure", 96, 0], chip={"who": 0x44})
    assert "no LIS2DH12 at 0x18: WHO_AM_I reads 0x44, expected 0x33" in ans["error"]
    ans = card(["configure", 96, 0], chip={"stuck": {str(0x22): 0}})
    assert "register 0x22 reads 0x00 after writing 0x40" in ans["error"]
    ans = card(["steps", -1, 0], chip={})
    assert "cannot be negative" in ans["error"]


def test_service_allocates_nothing_per_interrupt(mpy):
    """Servicing an interrupt reads into a preallocated buffer: the heap used does not grow
    with the number of interrupts serviced (the loop itself costs a fixed few bytes)."""
    code = (HERE / "fake_lis2dh12.py").read_text() + """
import gc, lis2dh12
chip = FakeLIS2DH12()
acc = lis2dh12.LIS2DH12(chip)
acc.configure(96, 0)
def used(n):
    chip.regs[0x31] = 0x42
    gc.collect()
    gc.disable()
    before = gc.mem_free()
    for i in range(n):
        acc.service()
    after = gc.mem_free()
    gc.enable()
    return before - after
print(used(10), used(5000))
"""
    few, many = mpy.run(code).split()
    assert few == many


def test_part_data_and_pins_fit_together():
    assert 0x08 <= PART["i2c"]["address"] <= 0x77
    assert PART["i2c"]["address"] == (0x18 if PINS["accel_i2c"]["sa0"] == "GND" else 0x19)
    assert PART["mode"]["full_scale_g"] in (2, 4, 8, 16)
    steps = PART["threshold_lsb_mg"]
    assert [steps[k] for k in ("2", "4", "8", "16")] == sorted(steps[k] for k in ("2", "4", "8", "16"))
    pins = PINS["pins"]
    avoid = {int(k) for k in PINS["avoid"]}
    interrupt = pins["accel_int1"]
    # wakes deep sleep with the keys (ext1, any high): an RTC GPIO, active high, pulled down
    assert interrupt["gpio"] <= 21 and interrupt["wake"] == "ext1" and interrupt["active"] == "high"
    assert interrupt["pull"] == "down"
    for name in ("accel_int1", "accel_sda", "accel_scl"):
        assert pins[name]["gpio"] not in avoid
    power = json.loads((HARDWARE / "power.json").read_text())["figures"]
    for key in PART["power_figures"]:
        assert power[key]["verified"] is False and "LIS2DH12 datasheet" in power[key]["source"]
