"""The energy model: each component's state timed in virtual time, times its current from
hardware/power.json.

    ledger = Ledger()
    ledger.set("modem", "sleep", now_ms)         # the simulators report their states here
    ...
    report = energy_report(ledger, end_ms)       # mAh/day per component and state, days/charge

Components and states (the simulators' and the simulated board's words), and the power.json
figure each is charged at:

    modem   off, booting, idle, sleep (DRX), tx, call, searching (no coverage)
    gnss    off, backup, acquiring, tracking
    mcu     deep, light, active
    motion  on (low-power any-motion mode), off

Where no published figure exists for a state the choice is named in ASSUMED (and shown as
"assumed" in reports): it is not a measurement.

`play_duty(scenario, duty)` plays a scenario with the firmware's scheduling rules as a duty
model (DutyModel: when the card wakes, transmits, takes fixes, calls) and fills a Ledger; the
virtual card's runner fills the same ledger from the simulators when the firmware itself runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from carecard.hardware import power as power_data
from carecard.tools.vcard.scenario import Scenario

DAY_MS = 86_400_000

# (component, state) -> power.json figure key (None: switched off, 0 mA)
FIGURES: dict[tuple[str, str], str | None] = {
    ("modem", "off"): "a7670.off",
    ("modem", "booting"): "a7670.idle",
    ("modem", "idle"): "a7670.idle",
    ("modem", "sleep"): "a7670.sleep_drx",
    ("modem", "tx"): "a7670.tx_lte",
    ("modem", "call"): "a7670.voice_call",
    ("modem", "searching"): "a7670.sleep_drx_gsm",
    ("gnss", "off"): None,
    ("gnss", "backup"): "at6558r.backup",
    ("gnss", "acquiring"): "l76k.acquisition",
    ("gnss", "tracking"): "l76k.acquisition",
    ("mcu", "deep"): "esp32s3.deep_sleep",
    ("mcu", "light"): "esp32s3.light_sleep",
    ("mcu", "active"): "esp32s3.active",
    ("motion", "on"): "lis2dh12.low_power_25hz",
    ("motion", "off"): "lis2dh12.power_down",
}
ASSUMED: dict[tuple[str, str], str] = {
    ("modem", "booting"): "no boot-current figure found; charged as idle (UART awake)",
    ("modem", "searching"): "no published no-service figure; a modem scans with back-off and "
                            "sleeps between scans: charged as DRX sleep on GSM (2.3 mA)",
    ("gnss", "backup"): "the L76K is built on the AT6558R chip (hardware/gnss_l76k.json); its "
                        "V_BCKP figure is the AT6558R's 8 uA",
    ("gnss", "off"): "main and backup supplies switched off: 0 mA (load switch leakage ignored)",
}


class EnergyError(ValueError):
    """A state without a figure, or a ledger used out of time order."""


class Ledger:
    """Milliseconds spent by each component in each state."""

    def __init__(self, start_ms: int = 0) -> None:
        self.start_ms = start_ms
        self._state: dict[str, tuple[str, int]] = {}
        self.ms: dict[tuple[str, str], int] = {}

    def set(self, component: str, state: str, now_ms: int) -> None:
        if (component, state) not in FIGURES:
            raise EnergyError(f"no power figure for {component} in state {state!r}; known: "
                              + ", ".join(s for c, s in FIGURES if c == component))
        old = self._state.get(component)
        if old is not None:
            old_state, since = old
            if now_ms < since:
                raise EnergyError(f"{component}: state {state!r} at {now_ms} ms is before the "
                                  f"last change at {since} ms")
            if old_state == state:
                return
            key = (component, old_state)
            self.ms[key] = self.ms.get(key, 0) + now_ms - since
        self._state[component] = (state, now_ms)

    def state(self, component: str) -> str | None:
        old = self._state.get(component)
        return old[0] if old else None

    def totals(self, end_ms: int) -> dict[tuple[str, str], int]:
        out = dict(self.ms)
        for component, (state, since) in self._state.items():
            out[(component, state)] = out.get((component, state), 0) + max(0, end_ms - since)
        return out


def capacity_mah() -> float:
    """The reference battery's capacity (hardware/battery_lipo.json capacity_mah)."""
    from carecard.tools.cardimage import HARDWARE_DIR

    data = json.loads((HARDWARE_DIR / "battery_lipo.json").read_text(encoding="utf-8"))
    try:
        return float(data["capacity_mah"]["value"])
    except (KeyError, TypeError, ValueError):
        raise EnergyError("hardware/battery_lipo.json has no capacity_mah.value") from None


def energy_report(ledger: Ledger, end_ms: int, data: dict | None = None) -> dict[str, Any]:
    """mAh per day by component and state, the average current and days per charge of the
    reference battery. JSON-ready."""
    data = data or power_data.load()
    span_ms = end_ms - ledger.start_ms
    if span_ms <= 0:
        raise EnergyError("the ledger covers no time")
    days = span_ms / DAY_MS
    breakdown: dict[str, Any] = {}
    total_mah = 0.0
    for (component, state), ms in sorted(ledger.totals(end_ms).items()):
        key = FIGURES[(component, state)]
        if key is None:
            ma, verified, source = 0.0, True, "switched off"
        else:
            ma = power_data.figure_ma(data, key)
            fig = data["figures"][key]
            verified, source = bool(fig.get("verified")), fig.get("source", "")
        mah = ma * ms / 3_600_000
        total_mah += mah
        comp = breakdown.setdefault(component, {"mah_per_day": 0.0, "states": {}})
        comp["mah_per_day"] += mah / days
        comp["states"][state] = {
            "hours_per_day": ms / 3_600_000 / days, "ma": ma, "mah_per_day": mah / days,
            "figure": key, "verified": verified, "source": source,
            "assumed": ASSUMED.get((component, state)),
        }
    mah_per_day = total_mah / days
    capacity = capacity_mah()
    return {
        "days": days,
        "mah_per_day": mah_per_day,
        "average_ma": mah_per_day / 24,
        "battery_mah": capacity,
        "days_per_charge": capacity / mah_per_day if mah_per_day else None,
        "breakdown": breakdown,
    }


def format_report(report: dict[str, Any], title: str, width: int = 40) -> str:
    """The report as text with a bar per component and state: where the charge goes."""
    lines = [f"{title}: {report['days']:.2f} simulated days",
             f"  {report['mah_per_day']:.1f} mAh/day, average {report['average_ma']:.2f} mA, "
             f"{report['days_per_charge']:.1f} days per charge of the {report['battery_mah']:.0f} mAh "
             "reference battery", ""]
    total = report["mah_per_day"] or 1.0
    for component, comp in sorted(report["breakdown"].items(), key=lambda kv: -kv[1]["mah_per_day"]):
        lines.append(f"  {component:<7} {comp['mah_per_day']:7.2f} mAh/day "
                     f"{'#' * round(width * comp['mah_per_day'] / total)}")
        for state, s in sorted(comp["states"].items(), key=lambda kv: -kv[1]["mah_per_day"]):
            if s["mah_per_day"] < 0.005 and s["hours_per_day"] < 0.01:
                continue
            mark = "" if s["verified"] else " (figure unverified)"
            if s["assumed"]:
                mark = " (assumed: see energy.ASSUMED)"
            bar = "=" * round(width * s["mah_per_day"] / total)
            lines.append(f"    {state:<10} {s['hours_per_day']:6.2f} h/day x {s['ma']:8.3f} mA = "
                         f"{s['mah_per_day']:6.2f} mAh/day {bar}{mark}")
    return "\n".join(lines)


# ---- the duty model ------------------------------------------------------------------------

@dataclass(frozen=True)
class DutyModel:
    """When the card's parts are on, at given settings. Defaults: the firmware's config.DEFAULTS
    (position_s 900, status_s 3600) and the modem's hardware timing (sleep entry 20 s)."""

    position_s: float = 900          # a position report while still (config position_s)
    status_s: float = 3600           # a status report (config status_s)
    moving_fix_s: float = 60         # a fix per minute while moving, a track frame per ...
    moving_uplink_s: float = 300     # ... 5 minutes
    moving_gnss_continuous: bool = True   # the receiver stays on (tracking) while moving;
                                     # False: off between the moving fixes (hot starts)
    batch_positions: bool = False    # True: still positions ride with the next status report
    fix_s_hot: float = 6.0           # GNSS on per fix: hot start (L76K 5.5 s) plus one epoch
    fix_s_cold: float = 31.0         # after the backup supply was off / ephemeris stale
    indoor_fix_factor: float = 3.0   # as gnss_sim.GnssModel.indoor_ttff_factor
    gnss_timeout_s: float = 120      # config gnss_timeout_s: deep indoors, a failed fix
    tx_s: float = 0.5                # radio at the LTE TX figure per datagram (max power: an
                                     # upper bound; a small datagram takes less)
    awake_tail_s: float = 25         # modem UART awake per exchange: AT, the ack, then the
                                     # sleep entry after DTR high (hardware/modem_a7670.json 20 s)
    mcu_active_s: float = 2.0        # MCU awake per wake-up (key, timer, RI, uplink)
    mcu_sleep: str = "light"         # "light" or "deep" between wake-ups
    ring_timeout_s: float = 45       # the driver's ring timeout (modem.Modem ring_timeout_ms)
    sos_rounds: int = 3              # config sos_rounds
    motion_sensor: bool = True

    def with_settings(self, settings: dict[str, Any]) -> "DutyModel":
        known = {k: v for k, v in settings.items() if k in self.__dataclass_fields__}
        return replace(self, **known)


@dataclass
class _Card:
    carry: str = "worn"
    place: str = ""
    moving_until: float = -1.0
    coverage: bool = True
    asleep: bool = False


def play_duty(scenario: Scenario, duty: DutyModel) -> tuple[Ledger, int]:
    """Play `scenario` with the duty model; returns the filled ledger and its end (ms)."""
    ledger = Ledger(0)
    end_ms = int(scenario.duration_s * 1000)
    # events in time: (t_s, order, kind, args)
    card = _Card(place=scenario.home)
    busy: list[tuple[float, float, str, str]] = []   # (start, end, component, state) bursts

    def burst(t: float, seconds: float, component: str, state: str) -> None:
        if seconds > 0:
            busy.append((t, min(t + seconds, scenario.duration_s), component, state))

    def uplink(t: float) -> None:
        if not card.coverage:
            return   # queued: sent when coverage returns (counted there)
        burst(t, duty.awake_tail_s, "modem", "idle")
        burst(t + 0.5, duty.tx_s, "modem", "tx")
        burst(t, duty.mcu_active_s, "mcu", "active")

    def fix(t: float) -> None:
        env = scenario.places[card.place].env
        if env == "deep_indoor":
            seconds = duty.gnss_timeout_s
        else:
            seconds = duty.fix_s_hot * (duty.indoor_fix_factor if env == "indoor" else 1)
        burst(t, seconds, "gnss", "acquiring")
        burst(t, seconds, "mcu", "active")

    def call(t: float, seconds: float) -> None:
        burst(t, seconds, "modem", "call")
        burst(t, duty.mcu_active_s, "mcu", "active")

    def callee_seconds(contact) -> tuple[float, bool]:
        kind = contact.answers
        if kind == "confirms":
            return contact.ring_s + 3 + contact.talk_s, True
        if kind == "answers":
            return min(duty.ring_timeout_s, contact.ring_s + contact.talk_s), False
        if kind == "busy":
            return 3.0, False
        if kind == "unreachable":
            return 8.0, False
        if kind == "rejects":
            return contact.ring_s, False
        return duty.ring_timeout_s, False

    steps = list(scenario.steps)
    next_position = duty.position_s
    next_status = duty.status_s
    t = 0.0
    pending_uplinks = 0
    step_i = 0
    while t < scenario.duration_s:
        t_next = min(next_position, next_status, scenario.duration_s)
        if step_i < len(steps):
            t_next = min(t_next, steps[step_i].at_s)
        t = t_next
        if t >= scenario.duration_s:
            break
        if step_i < len(steps) and steps[step_i].at_s <= t:
            step = steps[step_i]
            step_i += 1
            a = step.args
            if step.kind == "carry":
                card.carry = a["state"]
            elif step.kind == "go":
                minutes = float(a.get("minutes", 10))
                card.moving_until = t + minutes * 60
                if duty.moving_gnss_continuous:
                    burst(t, minutes * 60, "gnss", "tracking")
                else:
                    for i in range(max(1, int(minutes * 60 // duty.moving_fix_s))):
                        burst(t + i * duty.moving_fix_s, duty.fix_s_hot, "gnss", "acquiring")
                        burst(t + i * duty.moving_fix_s, duty.fix_s_hot, "mcu", "active")
                n = max(1, int(minutes * 60 // duty.moving_uplink_s))
                for i in range(n):
                    uplink(t + (i + 1) * duty.moving_uplink_s)
                card.place = a["to"]
            elif step.kind in ("press",):
                contact = scenario.contacts[a["key"]]
                seconds, _ = callee_seconds(contact)
                call(t + 1, seconds)
                uplink(t + seconds + 2)
            elif step.kind == "hold" or step.kind == "fall":
                if step.kind == "hold":
                    uplink(t)
                    fix(t)
                    at = t + 5
                    done = False
                    for _round in range(duty.sos_rounds):
                        for key in sorted(scenario.contacts):
                            seconds, confirmed = callee_seconds(scenario.contacts[key])
                            call(at, seconds)
                            at += seconds + 3
                            uplink(at)
                            if confirmed:
                                done = True
                                break
                        if done:
                            break
                    if not done:
                        burst(at, 3.0 * len(scenario.contacts), "modem", "tx")   # SMS to all
                else:
                    uplink(t)
            elif step.kind == "call_in":
                ring = float(a.get("ring_s", 15))
                talk = float(a.get("talk_s", 60))
                call(t, ring + talk)
                uplink(t + ring + talk + 1)
            elif step.kind == "sms_in":
                burst(t, duty.awake_tail_s, "modem", "idle")
                burst(t, duty.mcu_active_s, "mcu", "active")
                burst(t + 1, 3.0, "modem", "tx")   # the answer by SMS
            elif step.kind == "coverage":
                card.coverage = bool(a["up"])
                if not card.coverage:
                    burst(t, 1e9, "modem", "searching")
                else:
                    busy[:] = [(s, min(e, t) if (c, st) == ("modem", "searching") else e, c, st)
                               for s, e, c, st in busy]
                    for _ in range(min(pending_uplinks, 1)):
                        uplink(t + 1)
                    pending_uplinks = 0
            elif step.kind in ("reboot", "power_loss"):
                burst(t, 15, "modem", "booting")
                burst(t, 10, "mcu", "active")
                uplink(t + 30)
            elif step.kind == "sleep":
                card.asleep = True
            elif step.kind == "wake":
                card.asleep = False
            continue
        if t >= next_status:
            next_status += duty.status_s
            if card.coverage:
                uplink(t)
            else:
                pending_uplinks += 1
        if t >= next_position:
            next_position += duty.position_s
            moving = t < card.moving_until
            if not moving:
                # static hold: a card lying still (table, charger, or asleep with it put down)
                # re-sends its held fix: no GNSS. A worn card takes a fresh fix.
                if card.carry in ("worn", "pocket") and not card.asleep:
                    fix(t)
                if not duty.batch_positions:
                    if card.coverage:
                        uplink(t + 10)
                    else:
                        pending_uplinks += 1
    # background states, then the bursts on top (a burst wins over the background)
    base = {"modem": "sleep", "gnss": "backup", "mcu": duty.mcu_sleep,
            "motion": "on" if duty.motion_sensor else "off"}
    _fill(ledger, base, busy, end_ms)
    return ledger, end_ms


_PRIORITY = {"call": 5, "tx": 4, "searching": 2, "idle": 3, "booting": 3, "tracking": 2,
             "acquiring": 3, "active": 2}


def _fill(ledger: Ledger, base: dict[str, str], busy: list, end_ms: int) -> None:
    for component, background in base.items():
        spans = sorted((int(s * 1000), int(e * 1000), st) for s, e, c, st in busy if c == component)
        # sweep: at each boundary, the highest-priority active state, else the background
        points = sorted({0, end_ms} | {s for s, _, _ in spans} | {e for _, e, _ in spans})
        for start in points:
            if start >= end_ms:
                break
            active = [st for s, e, st in spans if s <= start < e]
            state = max(active, key=lambda st: _PRIORITY.get(st, 1)) if active else background
            ledger.set(component, state, start)


# settings that change the budget, each tried alone and all together by setting_effects
ALTERNATIVES: dict[str, dict[str, Any]] = {
    "MCU in deep sleep between wake-ups (mcu_sleep = deep)": {"mcu_sleep": "deep"},
    "still positions sent with the hourly status (batch_positions = true)": {"batch_positions": True},
    "GNSS off between the moving fixes (moving_gnss_continuous = false)": {"moving_gnss_continuous": False},
    "a position every 30 min while still (position_s = 1800)": {"position_s": 1800},
}


def days_for(scenario: Scenario, duty: DutyModel) -> dict[str, Any]:
    ledger, end = play_duty(scenario, duty)
    return energy_report(ledger, end)


def setting_effects(scenario: Scenario, duty: DutyModel) -> list[dict[str, Any]]:
    """Days per charge at `duty`, with each ALTERNATIVES setting alone, and all of them."""
    base = days_for(scenario, duty)
    rows = [{"setting": "as given", "changes": {}, "days_per_charge": base["days_per_charge"],
             "mah_per_day": base["mah_per_day"]}]
    together: dict[str, Any] = {}
    for label, change in ALTERNATIVES.items():
        together.update(change)
        r = days_for(scenario, replace(duty, **change))
        rows.append({"setting": label, "changes": change, "days_per_charge": r["days_per_charge"],
                     "mah_per_day": r["mah_per_day"]})
    r = days_for(scenario, replace(duty, **together))
    rows.append({"setting": "all of the above", "changes": together,
                 "days_per_charge": r["days_per_charge"], "mah_per_day": r["mah_per_day"]})
    return rows
