"""Weekly energy budget of the card from the power figures in hardware/power.json.

    from carecard.hardware.power import DutyCycle, weekly_budget
    budget = weekly_budget(DutyCycle(fixes_per_day=24, fix_s=30, uplinks_per_day=24, uplink_s=8))
    budget.total_mah, budget.items

The model: the modem stays registered in DRX sleep all week (the card must ring; PSM would make it
unreachable) and adds (TX - sleep) current for its uplink and call seconds; the GNSS draws its
acquisition/tracking current for each fix and its standby or backup current the rest of the time;
the MCU sleeps (light or deep) all week and adds (active - sleep) for its awake seconds. Every
current comes from power.json by name; nothing here restates a figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

POWER_JSON = Path(__file__).resolve().parent / "power.json"
WEEK_H = 7 * 24
DAY_S = 24 * 3600


class PowerDataError(ValueError):
    """power.json is missing a figure or a duty cycle names an unknown part."""


def load(path: Path | None = None) -> dict:
    """The parsed power.json (or another file of the same layout)."""
    return json.loads((path or POWER_JSON).read_text(encoding="utf-8"))


def figure_ma(data: dict, key: str) -> float:
    """A current in mA from power.json by key, e.g. 'a7670.sleep_drx'."""
    try:
        entry = data["figures"][key]
    except KeyError:
        raise PowerDataError(
            f"power.json has no figure {key!r}: add it with its value, unit and source"
        ) from None
    if entry.get("unit") != "mA":
        raise PowerDataError(f"power.json figure {key!r} is in {entry.get('unit')!r}, not mA")
    return float(entry["value"])


@dataclass(frozen=True)
class DutyCycle:
    """What the card does in a day. Parts name power.json prefixes."""

    fixes_per_day: float = 0
    fix_s: float = 0  # GNSS on-time per fix (TTFF plus settling)
    uplinks_per_day: float = 0
    uplink_s: float = 0  # modem transmitting per uplink
    call_minutes_per_day: float = 0
    mcu_awake_s_per_day: float = 0
    mcu_sleep: str = "light"  # "light" or "deep"
    modem: str = "a7670"  # "a7670" or "ec800m"
    modem_tx: str = "a7670.tx_lte"  # figure used for transmit seconds
    gnss: str = "l76k"  # "l76k" or "at6558r"
    gnss_idle: str = "standby"  # figure suffix between fixes: "standby" / "backup"; "off" = 0
    modem_sleep: str = "sleep_drx"


@dataclass
class Budget:
    items: dict[str, float] = field(default_factory=dict)  # mAh per week by item

    @property
    def total_mah(self) -> float:
        return sum(self.items.values())

    def average_ma(self) -> float:
        return self.total_mah / WEEK_H


def weekly_budget(duty: DutyCycle, data: dict | None = None) -> Budget:
    """mAh per week for `duty`, itemised."""
    data = data or load()
    for name, value in (("fixes_per_day", duty.fixes_per_day), ("fix_s", duty.fix_s),
                        ("uplinks_per_day", duty.uplinks_per_day), ("uplink_s", duty.uplink_s),
                        ("call_minutes_per_day", duty.call_minutes_per_day),
                        ("mcu_awake_s_per_day", duty.mcu_awake_s_per_day)):
        if value < 0:
            raise PowerDataError(f"duty cycle {name} must not be negative, got {value}")
    gnss_s = duty.fixes_per_day * duty.fix_s
    tx_s = duty.uplinks_per_day * duty.uplink_s
    call_s = duty.call_minutes_per_day * 60
    for name, seconds in (("GNSS on-time", gnss_s), ("modem transmit and call time", tx_s + call_s),
                          ("MCU awake time", duty.mcu_awake_s_per_day)):
        if seconds > DAY_S:
            raise PowerDataError(f"{name} of {seconds:.0f} s per day is more than a day")
    sleep_ma = figure_ma(data, f"{duty.modem}.{duty.modem_sleep}")
    items: dict[str, float] = {}
    items[f"{duty.modem} {duty.modem_sleep}, all week"] = sleep_ma * WEEK_H
    if tx_s:
        items[f"{duty.modem} transmit ({duty.modem_tx})"] = (
            (figure_ma(data, duty.modem_tx) - sleep_ma) * tx_s * 7 / 3600
        )
    if call_s:
        items[f"{duty.modem} voice calls"] = (
            (figure_ma(data, f"{duty.modem}.voice_call") - sleep_ma) * call_s * 7 / 3600
        )
    if duty.gnss_idle == "off":
        idle_ma = 0.0
    else:
        idle_ma = figure_ma(data, f"{duty.gnss}.{duty.gnss_idle}")
    active_key = "acquisition" if f"{duty.gnss}.acquisition" in data["figures"] else "tracking"
    if gnss_s:
        items[f"{duty.gnss} {active_key}"] = figure_ma(data, f"{duty.gnss}.{active_key}") * gnss_s * 7 / 3600
    if idle_ma:
        items[f"{duty.gnss} {duty.gnss_idle}"] = idle_ma * (DAY_S - gnss_s) * 7 / 3600
    mcu_sleep_ma = figure_ma(data, f"esp32s3.{duty.mcu_sleep}_sleep")
    items[f"esp32s3 {duty.mcu_sleep} sleep, all week"] = mcu_sleep_ma * WEEK_H
    if duty.mcu_awake_s_per_day:
        items["esp32s3 awake"] = (
            (figure_ma(data, "esp32s3.active") - mcu_sleep_ma) * duty.mcu_awake_s_per_day * 7 / 3600
        )
    return Budget(items)
