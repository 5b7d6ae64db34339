"""The alert engine's evaluation corpus: generated event logs with their expected incidents.

Each scenario is one card over one or more days, simulated tick by tick (a position and a status
frame every report interval, as a card reporting every 15 minutes sends them), made into events
with carecard.host.events.event_from_message and written as the JSON-lines sink writes them, plus
`<scenario>.expected.json` (the incidents, with the deadline each must be alerted by) and one
`settings.toml` for all of them. Deterministic (seeded).

    python tests/engine_corpus.py OUT_DIR      # write the corpus
    carecard replay --evaluate OUT_DIR         # the report
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from carecard.host.events import event_from_message, event_json
from carecard.host.timefmt import iso_utc

LOCAL = timezone(timedelta(hours=8))
DAY0 = int(datetime(2025, 11, 3, tzinfo=LOCAL).timestamp())  # local midnight of day 0
INTERVAL = 900
HOME = (24.7000000, 118.4000000)
MARKET = (24.7040000, 118.4030000)  # ~530 m away
FIELD = (24.7055000, 118.4060000)  # ~850 m away
THRESHOLD = 3 * 3600
AWAY_THRESHOLD = 2 * 3600


def local(day: int, hhmm: str) -> int:
    h, m = hhmm.split(":")
    return DAY0 + day * 86400 + int(h) * 3600 + int(m) * 60


def offset(point: tuple[float, float], north_m: float, east_m: float) -> tuple[float, float]:
    lat = point[0] + north_m / 111195.0
    lon = point[1] + east_m / (111195.0 * math.cos(math.radians(point[0])))
    return lat, lon


@dataclass
class Segment:
    start: int
    end: int
    mode: str  # charger, sleep, active, still, walk, away, card_left
    place: tuple[float, float] = HOME
    dest: tuple[float, float] | None = None
    sky: str = "good"  # good, bad, outdoor


@dataclass
class Card:
    device: int
    sensor: bool
    rng: random.Random
    battery: float = 90.0
    counter: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    queued: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    charging: bool = False
    dead: bool = False
    power_sent: set[str] = field(default_factory=set)
    end: int = 0  # when the simulation stopped (the evaluation runs the clock to here)
    # a protocol v3 card with a sensor, as the firmware runs it (positions.py): static hold (while
    # its sensor counts no motion since its last fix, a position re-sends that fix marked held,
    # its age growing), statuses hourly, and a hello saying which sensor it has
    v3: bool = False
    last_fix: dict[str, Any] | None = None
    fix_t: int = 0
    moved: bool = True  # motion since the last fix
    motion: int = 0  # motion counted since the last status
    status_t: int | None = None

    def send(self, kind: str, t: int, fields: dict[str, Any], covered: bool = True) -> None:
        if self.dead:
            return
        self.counter += 1
        message = {"type": kind, "direction": "uplink", "device": self.device, "counter": self.counter,
                   "time": t, "clock_synced": True, **fields}
        if not covered:
            self.queued.append((kind, t, message))
            return
        if self.queued:  # coverage is back: the outbox sends what waited, SOS first
            backlog = sorted(self.queued, key=lambda q: (q[0] != "sos", q[2]["counter"]))
            for i, (_k, _t, queued) in enumerate(backlog):
                self.events.append(event_from_message(queued, t + 1.0 + i * 0.05))
            self.queued.clear()
        self.events.append(event_from_message(message, t + 1.0 + self.rng.random()))

    def fix(self, t: int, lat: float, lon: float, sky: str, covered: bool) -> None:
        rng = self.rng
        if sky == "bad" and rng.random() < 0.15:
            self.send("position", t, dict(lat_e7=0, lon_e7=0, alt_m=0, hdop_x10=255, sats=0, fix="none",
                                          fix_age_s=65535, speed_cms=0, course_x10=0, source="fresh"), covered)
            return
        sigma, hdop = {"good": (6.0, rng.uniform(0.8, 1.6)), "outdoor": (3.0, rng.uniform(0.7, 1.2)),
                       "bad": (18.0, rng.uniform(1.8, 4.5))}[sky]
        if sky == "bad" and rng.random() < 0.08:  # multipath outlier of a few hundred metres
            bearing = rng.uniform(0, 2 * math.pi)
            dist = rng.uniform(150, 400)
            lat, lon = offset((lat, lon), dist * math.cos(bearing), dist * math.sin(bearing))
            hdop = rng.uniform(4.0, 9.0)
        else:
            lat, lon = offset((lat, lon), rng.gauss(0, sigma), rng.gauss(0, sigma))
        fields = dict(lat_e7=round(lat * 1e7), lon_e7=round(lon * 1e7), alt_m=30, hdop_x10=round(hdop * 10), sats=8,
                      fix="3d", fix_age_s=rng.randint(1, 20), speed_cms=0, course_x10=0, source="fresh")
        self.last_fix, self.fix_t = fields, t - fields["fix_age_s"]
        self.send("position", t, fields, covered)

    def held(self, t: int, covered: bool) -> None:
        assert self.last_fix is not None
        self.send("position", t, dict(self.last_fix, fix_age_s=min(65534, t - self.fix_t), source="held"), covered)

    def hello(self, t: int) -> None:
        self.send("hello", t, dict(fw_major=1, fw_minor=3, fw_patch=0, reset_cause="power_on", config_version=1,
                                   modem="a7670", downlink_min=0, motion_sensor="lis2dh12"))

    def status(self, t: int, motion: int, covered: bool) -> None:
        self.send("status", t, dict(battery_mv=3300 + int(self.battery * 9), battery_pct=int(self.battery),
                                    charging=("full" if self.battery >= 100 else "charging") if self.charging
                                    else "discharging", rssi_dbm=-75, motion_count=motion,
                                    outbox_depth=len(self.queued)), covered)

    def power(self, t: int, what: str, covered: bool = True) -> None:
        self.send("power", t, dict(event=what, battery_mv=3300 + int(self.battery * 9),
                                   battery_pct=int(self.battery)), covered)


def simulate(card: Card, segments: list[Segment], *, holes: tuple[tuple[int, int], ...] = (),
             sos: tuple[tuple[int, str], ...] = (), calls: tuple[int, ...] = (),
             battery_per_day: float = 12.0) -> None:
    """Tick through the segments: a position and a status per INTERVAL, power events at charger
    changes and battery thresholds, SOS frames and key-press calls at their times."""
    rng = card.rng
    t = segments[0].start + rng.randint(0, 60)
    end = card.end = segments[-1].end
    extra = sorted([(ts, "sos", trig) for ts, trig in sos] + [(ts, "call", "") for ts in calls])
    last_tick = t
    while t < end and not card.dead:
        covered = not any(a <= t < b for a, b in holes)
        while extra and extra[0][0] <= t:
            ts, what, trig = extra.pop(0)
            if what == "sos":
                card.send("sos", ts, dict(trigger=trig, lat_e7=round(HOME[0] * 1e7), lon_e7=round(HOME[1] * 1e7),
                                          fix="3d", fix_age_s=120, battery_pct=int(card.battery)),
                          not any(a <= ts < b for a, b in holes))
            else:
                card.send("call", ts, dict(key=1, number="+8613800138000", outcome="confirmed",
                                           ring_s=8, talk_s=120), not any(a <= ts < b for a, b in holes))
        seg = next(s for s in segments if s.start <= t < s.end)
        dt = t - last_tick
        last_tick = t
        charging = seg.mode == "charger"
        if charging != card.charging:
            card.charging = charging
            card.power(t, "charger_connected" if charging else "charger_removed", covered)
            card.power_sent.clear()
        if charging:
            card.battery = min(100.0, card.battery + dt / 3600 * 30)
        else:
            card.battery -= dt / 86400 * battery_per_day
            for level, what in ((20, "low"), (5, "critical"), (2, "shutdown")):
                if card.battery <= level and what not in card.power_sent:
                    card.power_sent.add(what)
                    card.power(t, what, covered)
                    if what == "shutdown":
                        card.dead = True
            if card.dead:
                break
        # where the card is, and the motion it counts
        if seg.mode == "walk":
            f = (t - seg.start) / max(1, seg.end - seg.start)
            dest = seg.dest or HOME
            lat = seg.place[0] + (dest[0] - seg.place[0]) * f
            lon = seg.place[1] + (dest[1] - seg.place[1]) * f
            sky, motion = "outdoor", rng.randint(30, 80)
        elif seg.mode == "away":
            lat, lon = offset(seg.place, rng.uniform(-120, 120), rng.uniform(-120, 120))
            sky, motion = "outdoor", rng.randint(10, 60)
        elif seg.mode == "active":
            lat, lon = seg.place
            sky, motion = seg.sky, rng.randint(3, 25)
        else:  # charger, sleep, still, card_left: the card does not move
            lat, lon = seg.place
            sky, motion = seg.sky, 0
        if not card.sensor:
            motion = 0  # without a sensor only key presses count (the calls below)
        if card.v3:
            if card.status_t is None:
                card.hello(t - 30)
            card.moved = card.moved or motion > 0
            if card.moved or card.last_fix is None:
                card.fix(t, lat, lon, sky, covered)
                card.moved = False
            else:
                card.held(t, covered)
            card.motion += motion
            if card.status_t is None or t - card.status_t >= 3600 - 60:
                card.status(t + 5, card.motion, covered)
                card.motion, card.status_t = 0, t
        else:
            card.fix(t, lat, lon, sky, covered)
            card.status(t + 5, motion, covered)
        t += INTERVAL + rng.randint(-20, 20)


def normal_day(day: int, rng: random.Random, *, charger: bool = True, market: bool = True,
               sky: str = "good", nap_h: float = 1.75, bedtime: str = "21:30",
               nap_charge: bool = True) -> list[Segment]:
    """A homebody's day: up around 07:00, busy at home, maybe the market, a nap, TV, bed."""
    wake = local(day, "07:00") + rng.randint(-1800, 1800)
    bed = local(day, bedtime) + rng.randint(-1200, 1200)
    night = "charger" if charger else "sleep"
    segs = [Segment(local(day, "00:00"), wake, night, sky=sky)]
    t = wake
    segs.append(Segment(t, t + 3600, "active", sky=sky))
    t += 3600
    if market:
        segs += [Segment(t, t + 900, "walk", HOME, MARKET), Segment(t + 900, t + 3600, "away", MARKET),
                 Segment(t + 3600, t + 4500, "walk", MARKET, HOME)]
        t += 4500
    noon = local(day, "12:15")
    while t < noon:
        step = min(noon, t + rng.randint(1800, 3600))
        segs.append(Segment(t, step, "active", sky=sky))
        t = step
        step = min(noon, t + rng.randint(1800, 4500))
        if step > t:
            segs.append(Segment(t, step, "still", sky=sky))
            t = step
    segs.append(Segment(t, t + 1800, "active", sky=sky))  # lunch
    t += 1800
    nap_end = t + int(nap_h * 3600)
    # wearing the card at night, it is charged during the nap every fourth day
    nap_on_charger = nap_charge and not charger and day % 4 == 3
    segs.append(Segment(t, nap_end, "charger" if nap_on_charger else "still", sky=sky))
    t = nap_end
    while t < bed:
        step = min(bed, t + rng.randint(1200, 3600))
        segs.append(Segment(t, step, "active", sky=sky))
        t = step
        step = min(bed, t + rng.randint(1800, 5400))
        if step > t:
            segs.append(Segment(t, step, "still", sky=sky))
            t = step
    segs.append(Segment(bed, local(day + 1, "00:00"), night, sky=sky))
    return segs


def farmer_day(day: int, rng: random.Random, sky: str = "good") -> list[Segment]:
    """A farmer's day: up at 06:00, two spells in the field with lunch at home, early to bed."""
    w = rng.randint(-900, 900)
    return [Segment(local(day, "00:00"), local(day, "06:00") + w, "charger", sky=sky),
            Segment(local(day, "06:00") + w, local(day, "07:00"), "active", sky=sky),
            Segment(local(day, "07:00"), local(day, "07:20"), "walk", HOME, FIELD),
            Segment(local(day, "07:20"), local(day, "11:30"), "away", FIELD),
            Segment(local(day, "11:30"), local(day, "11:50"), "walk", FIELD, HOME),
            Segment(local(day, "11:50"), local(day, "14:00"), "still", sky=sky),
            Segment(local(day, "14:00"), local(day, "14:20"), "walk", HOME, FIELD),
            Segment(local(day, "14:20"), local(day, "17:40"), "away", FIELD),
            Segment(local(day, "17:40"), local(day, "18:00"), "walk", FIELD, HOME),
            Segment(local(day, "18:00"), local(day, "20:30") + w, "still", sky=sky),
            Segment(local(day, "20:30") + w, local(day + 1, "00:00"), "charger", sky=sky)]


def cut_at(segments: list[Segment], t: int, tail: list[Segment]) -> list[Segment]:
    """The segments up to `t`, then `tail` (an incident replacing the rest of the plan)."""
    out = []
    for seg in segments:
        if seg.end <= t:
            out.append(seg)
        elif seg.start < t:
            out.append(Segment(seg.start, t, seg.mode, seg.place, seg.dest, seg.sky))
    return out + tail


@dataclass
class Scenario:
    name: str
    description: str
    device: int
    sensor: bool
    days: int
    normal: bool
    settings: dict[str, Any]
    build: Any  # (card, rng) -> list of incidents
    incidents: list[dict[str, Any]] = field(default_factory=list)
    v3: bool = False  # a protocol v3 card (Card.v3)


def incident(kind: str, start: int, deadline: int, what: str) -> dict[str, Any]:
    return {"kind": kind, "start": iso_utc(start), "deadline": iso_utc(deadline), "what": what}


def _days(fn, days: int, rng: random.Random, **kw) -> list[Segment]:
    return [seg for d in range(days) for seg in fn(d, rng, **kw)]


def build_normal(charger=True, market=True, sky="good", nap_h=1.75):
    def build(card: Card, days: int) -> list[dict[str, Any]]:
        simulate(card, _days(normal_day, days, card.rng, charger=charger, market=market, sky=sky, nap_h=nap_h),
                 calls=tuple(local(d, "19:30") + card.rng.randint(0, 3600) for d in range(days) if d % 3 == 0),
                 battery_per_day=12.0 if charger else 3.0)
        return []
    return build


def build_farmer(card: Card, days: int) -> list[dict[str, Any]]:
    simulate(card, _days(farmer_day, days, card.rng))
    return []


def build_farmer_bad_sky(card: Card, days: int) -> list[dict[str, Any]]:
    simulate(card, _days(farmer_day, days, card.rng, sky="bad"))
    return []


def build_fall_at_home(day: int, hhmm: str, *, sky: str = "good", nap_h: float = 1.75, charger: bool = True,
                       what: str = ""):
    def build(card: Card, days: int) -> list[dict[str, Any]]:
        segs = _days(normal_day, days, card.rng, sky=sky, nap_h=nap_h, charger=charger)
        fall = local(day, hhmm)
        segs = cut_at(segs, fall, [Segment(fall, fall + 10 * 3600, "still", sky=sky)])
        simulate(card, segs, battery_per_day=3.0 if not charger else 12.0)
        wake_end = local(day, "08:30") if local(day, "00:00") <= fall < local(day, "08:30") else 0
        deadline = max(fall + THRESHOLD, wake_end) + INTERVAL
        return [incident("inactivity", fall, deadline, what or f"fall at home at {hhmm}")]
    return build


def build_fall_night(card: Card, days: int) -> list[dict[str, Any]]:
    segs = _days(normal_day, days, card.rng, charger=False)
    fall = local(2, "02:40")
    segs = cut_at(segs, local(2, "02:30"), [Segment(local(2, "02:30"), fall, "active"),
                                            Segment(fall, local(2, "14:00"), "still")])
    simulate(card, segs, battery_per_day=3.0)
    return [incident("inactivity", fall, local(2, "08:30") + INTERVAL, "up at night, fell at 02:40")]


def build_fall_outside(card: Card, days: int) -> list[dict[str, Any]]:
    segs = _days(farmer_day, days, card.rng)
    fall = local(2, "10:00")
    segs = cut_at(segs, fall, [Segment(fall, fall + 10 * 3600, "still", FIELD, sky="outdoor")])
    simulate(card, segs)
    return [incident("inactivity", fall, fall + AWAY_THRESHOLD + INTERVAL, "fall in the field at 10:00")]


def build_fall_home_farmer(sky: str):
    def build(card: Card, days: int) -> list[dict[str, Any]]:
        segs = _days(farmer_day, days, card.rng, sky=sky)
        fall = local(1, "12:30")
        segs = cut_at(segs, fall, [Segment(fall, fall + 10 * 3600, "still", sky=sky)])
        simulate(card, segs)
        return [incident("inactivity", fall, fall + THRESHOLD + INTERVAL, f"fall at home at 12:30, {sky} sky view")]
    return build


def build_card_left(card: Card, days: int) -> list[dict[str, Any]]:
    segs = _days(normal_day, days, card.rng, market=False)
    leave, back = local(1, "09:00"), local(1, "15:00")
    rest = [s for s in segs if s.start >= back]
    segs = cut_at(segs, leave, [Segment(leave, back, "card_left")]) + \
        [Segment(back, rest[0].start, "active")] + rest
    simulate(card, segs)
    return [incident("inactivity", leave, leave + THRESHOLD + INTERVAL,
                     "card left on the table 09:00-15:00 while out (indistinguishable from a fall: alerted)")]


def build_coverage_hole(card: Card, days: int) -> list[dict[str, Any]]:
    start, end = local(1, "09:40"), local(1, "15:10")
    simulate(card, _days(farmer_day, days, card.rng), holes=((start, end),))
    return [incident("offline", start, start + 4 * INTERVAL + INTERVAL,
                     "no coverage in the field 09:40-15:10 (queued data arrives after)")]


def build_flat_battery(card: Card, days: int) -> list[dict[str, Any]]:
    card.battery = 60.0
    segs = _days(normal_day, days, card.rng, charger=False, nap_charge=False)
    simulate(card, segs, battery_per_day=12.0)
    # battery 60 % at day 0, 12 %/day: 20 % after 3.33 days, off (2 %) after 4.83 days
    low = DAY0 + int((60 - 21) / 12 * 86400)  # the status reports whole percent
    dead = DAY0 + int((60 - 2) / 12 * 86400)
    return [incident("low_battery", low, low + INTERVAL + 900, "battery reaches 20 %"),
            incident("offline", dead, dead + 4 * INTERVAL + INTERVAL, "flat battery: the card switched off")]


def build_sos_night(card: Card, days: int) -> list[dict[str, Any]]:
    segs = _days(normal_day, days, card.rng, charger=False)
    sos_t = local(1, "02:13")
    simulate(card, segs, sos=((sos_t, "long_press"),), battery_per_day=3.0)
    return [incident("sos", sos_t, sos_t + 60, "SOS key at 02:13")]


def build_not_charged(card: Card, days: int) -> list[dict[str, Any]]:
    segs = _days(normal_day, days, card.rng, charger=False, nap_charge=False)
    simulate(card, segs, battery_per_day=1.0)
    return [incident("not_charged", DAY0, DAY0 + 6 * 86400 + 3600, "never charged for 6 days")]


BASE = 861234500000000


def scenarios() -> list[Scenario]:
    home = {"home": {"lat": HOME[0], "lon": HOME[1]}, "family": ["+8613800138000 Son"],
            "grid_worker": ["+8613900139000 Grid worker"]}
    sensor = dict(home, motion_sensor=True)
    plain = dict(home, motion_sensor=False, wake="06:00", bedtime="20:30")
    out = [
        Scenario("homebody_month", "homebody, market most mornings, nights on the charger", BASE + 1, True, 30,
                 True, sensor, build_normal()),
        Scenario("homebody_rainy_month", "homebody at home all day (rain), long naps", BASE + 2, True, 30, True,
                 sensor, build_normal(market=False, nap_h=2.5)),
        Scenario("homebody_worn_nights_month", "homebody wearing the card at night", BASE + 3, True, 30, True,
                 dict(sensor, not_charged="60d"), build_normal(charger=False)),
        Scenario("homebody_bad_sky_month", "homebody in a house with a bad sky view (jitter, outliers, lost fixes)",
                 BASE + 4, True, 30, True, sensor, build_normal(sky="bad")),
        Scenario("farmer_month", "farmer without motion sensor: fields morning and afternoon", BASE + 5, False, 30,
                 True, plain, build_farmer),
        Scenario("fall_morning", "fall at home at 09:30", BASE + 11, True, 3, False, sensor,
                 build_fall_at_home(1, "09:30")),
        Scenario("fall_after_nap", "fall at home at 15:20, after the nap", BASE + 12, True, 3, False, sensor,
                 build_fall_at_home(1, "15:20")),
        Scenario("fall_evening", "fall at home at 18:10", BASE + 13, True, 3, False, sensor,
                 build_fall_at_home(1, "18:10")),
        Scenario("fall_night", "up at night, falls at 02:40 (card worn)", BASE + 14, True, 3, False,
                 dict(sensor, not_charged="60d"), build_fall_night),
        Scenario("fall_good_sky_no_sensor", "farmer without sensor falls at home at 12:30, good sky view",
                 BASE + 15, False, 3, False, plain, build_fall_home_farmer("good")),
        Scenario("fall_bad_sky_no_sensor", "farmer without sensor falls at home at 12:30, bad sky view "
                 "(jitter, outliers of 150-400 m, lost fixes)", BASE + 16, False, 3, False, plain,
                 build_fall_home_farmer("bad")),
        Scenario("farmer_bad_sky_month", "farmer without sensor, house with a bad sky view", BASE + 6, False, 30,
                 True, plain, build_farmer_bad_sky),
        Scenario("fall_outside", "farmer falls in the field at 10:00", BASE + 17, False, 3, False, plain,
                 build_fall_outside),
        Scenario("card_left_on_table", "card left on the table while out", BASE + 18, True, 3, False, sensor,
                 build_card_left),
        Scenario("coverage_hole", "farmer in a field without coverage for 5.5 h", BASE + 19, False, 3, False,
                 plain, build_coverage_hole),
        Scenario("flat_battery", "never charged: low battery, then the card switches off", BASE + 20, True, 6,
                 False, dict(sensor, not_charged="30d"), build_flat_battery),
        Scenario("sos_night", "SOS at night", BASE + 21, True, 3, False, dict(sensor, not_charged="60d"),
                 build_sos_night),
        Scenario("not_charged", "a week without charging (slow battery)", BASE + 22, True, 8, False, sensor,
                 build_not_charged),
        # protocol v3 cards: static hold and hourly statuses; the sensor known from the hello only
        Scenario("v3_homebody_month", "v3 card holding its fix while still, statuses hourly", BASE + 7, True, 30,
                 True, home, build_normal(), v3=True),
        Scenario("v3_fall_morning", "v3 card: fall at home at 09:30, then only held fixes", BASE + 23, True, 3,
                 False, home, build_fall_at_home(1, "09:30"), v3=True),
        Scenario("v3_card_left_on_table", "v3 card left on the table while out: held fixes", BASE + 24, True, 3,
                 False, home, build_card_left, v3=True),
    ]
    return out


def write_corpus(out_dir: Path | str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    settings_lines = ["# Settings of the generated evaluation corpus (tests/engine_corpus.py)", ""]
    for number, sc in enumerate(scenarios()):
        card = Card(sc.device, sc.sensor, random.Random(1000 + number), v3=sc.v3)
        incidents = sc.build(card, sc.days)
        events = sorted(card.events, key=lambda e: e["received_at"])
        log = out_dir / f"{sc.name}.jsonl"
        log.write_text("".join(event_json(e) + "\n" for e in events), encoding="utf-8")
        expected = {"scenario": sc.name, "description": sc.description, "device": str(sc.device),
                    "device_days": round((card.end - DAY0) / 86400, 2), "normal": sc.normal,
                    "end": iso_utc(card.end), "incidents": incidents}
        (out_dir / f"{sc.name}.expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False))
        settings_lines.append(f'[devices."{sc.device}"]  # {sc.name}')
        settings_lines += [f"{key} = {_toml(value)}" for key, value in sc.settings.items()]
        settings_lines.append("")
        written.append(log)
    (out_dir / "settings.toml").write_text("\n".join(settings_lines), encoding="utf-8")
    return written


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value, ensure_ascii=False)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/engine_corpus.py OUT_DIR")
    for path in write_corpus(sys.argv[1]):
        print(path)
