"""Scenario files: a person's day or week with the card, in TOML (docs/virtual-card.md).

    scenario = load(Path("tools/vcard/scenarios/normal-day.toml"))
    scenario.duration_s, scenario.steps, scenario.contacts, scenario.expect

A scenario names places, the card's four contacts and how each answers, settings that differ
from the firmware's defaults, and a timeline of steps: where the person goes, when they sleep,
whether the card is worn, on a table or on the charger, key presses, incoming calls and SMS,
coverage holes, reboots and power loss. Expectations say what must come out of it. Every error
names the file, the step and the fix.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carecard.tools.vcard.modem_sim import CALL_KINDS

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

ENVIRONMENTS = ("outdoor", "indoor", "deep_indoor")
CARRY = ("worn", "table", "charger", "pocket")

# step kind -> (required keys, optional keys)
STEP_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "carry": (("state",), ()),                       # worn / table / charger / pocket
    "go": (("to",), ("minutes",)),                   # walk to a place (moving), arriving after minutes
    "sleep": ((), ()),                               # goes to bed: still, card as it is carried
    "wake": ((), ()),                                # gets up
    "fall": ((), ()),                                # a hard motion burst, then stillness
    "press": (("key",), ()),                         # short press of key 1-4: call contact N
    "hold": (("key",), ("seconds",)),                # long press: SOS
    "call_in": (("from",), ("ring_s", "talk_s")),    # an incoming call
    "sms_in": (("from", "text"), ()),                # an incoming SMS
    "coverage": (("up",), ()),                       # network coverage lost / back
    "reboot": ((), ()),                              # the card restarts (watchdog, crash)
    "power_loss": ((), ("during",)),                 # the battery connector: power gone and back
    "battery": (("percent",), ()),                   # set the state of charge (test set-ups)
    "modem_hang": ((), ()),                          # the modem stops answering
}
EXPECT_KINDS = ("delivered", "call", "sms_sent", "no_loss", "order", "min_days")


class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message names file, place and fix."""


@dataclass(frozen=True)
class Place:
    name: str
    lat: float
    lon: float
    env: str


@dataclass(frozen=True)
class Contact:
    key: int
    name: str
    number: str
    answers: str            # modem_sim.CALL_KINDS
    ring_s: float = 8.0
    talk_s: float = 30.0


@dataclass(frozen=True)
class Step:
    at_s: float             # seconds since the scenario's start
    kind: str
    args: dict[str, Any]


@dataclass
class Scenario:
    path: Path
    name: str
    description: str
    start_unix: int
    tz_quarters: int
    duration_s: float
    seed: int
    settings: dict[str, Any]
    places: dict[str, Place]
    home: str
    contacts: dict[int, Contact]
    steps: list[Step]
    expect: list[dict[str, Any]] = field(default_factory=list)
    battery_percent: float = 100.0


_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m(?:in)?)?\s*(?:(\d+)s)?\s*$")
_CLOCK = re.compile(r"^(?:day\s*(\d+)\s+)?(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_duration(text: str | int | float, where: str) -> float:
    """'6h', '1d 2h', '90m', '30s' or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ScenarioError(f"{where}: duration {text} is negative")
        return float(text)
    m = _DURATION.match(str(text))
    if not m or not any(m.groups()):
        raise ScenarioError(f"{where}: {text!r} is not a duration; write e.g. '6h', '1d 2h', "
                            "'90m', '30s' or seconds as a number")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return float(d * 86400 + h * 3600 + mi * 60 + s)


def _when(text: Any, where: str, start_local_s: float) -> float:
    """'07:30' / 'day 2 07:30' (local clock; day 1 is the first) or '+2h' (since the start)."""
    if isinstance(text, str) and text.startswith("+"):
        return parse_duration(text[1:], where)
    m = _CLOCK.match(str(text).strip())
    if not m:
        raise ScenarioError(f"{where}: 'at = {text!r}' is neither a clock time ('07:30', "
                            "'day 2 07:30') nor an offset from the start ('+2h30m')")
    day = int(m.group(1) or 1)
    hh, mm, ss = int(m.group(2)), int(m.group(3)), int(m.group(4) or 0)
    if day < 1 or hh > 23 or mm > 59 or ss > 59:
        raise ScenarioError(f"{where}: 'at = {text!r}' is not a time of day (day >= 1, 00:00-23:59)")
    target = (day - 1) * 86400 + hh * 3600 + mm * 60 + ss
    start_of_day = start_local_s % 86400
    offset = target - start_of_day
    if offset < 0:
        raise ScenarioError(f"{where}: 'at = {text!r}' is before the scenario's start")
    return float(offset)


def _start(text: str, where: str) -> tuple[int, int]:
    m = re.match(r"^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d))?([+-])(\d\d):(\d\d)$", text)
    if not m:
        raise ScenarioError(f"{where}: start {text!r} is not a local time with its offset, e.g. "
                            "'2026-12-07T06:00:00+08:00'")
    import calendar

    y, mo, d, hh, mi = (int(m.group(i)) for i in range(1, 6))
    ss = int(m.group(6) or 0)
    tz_min = (int(m.group(8)) * 60 + int(m.group(9))) * (1 if m.group(7) == "+" else -1)
    local = calendar.timegm((y, mo, d, hh, mi, ss))
    return local - tz_min * 60, tz_min // 15


def _need(table: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in table:
        raise ScenarioError(f"{where}: '{key}' is missing")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ScenarioError(f"{where}: '{key}' = {value!r} has the wrong type")
    return value


def load(path: Path) -> Scenario:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: Path) -> Scenario:
    where = str(path)
    head = data.get("scenario")
    if not isinstance(head, dict):
        raise ScenarioError(f"{where}: a [scenario] table (name, start, duration) is missing")
    name = _need(head, "name", str, f"{where} [scenario]")
    start_unix, tz = _start(_need(head, "start", str, f"{where} [scenario]"), f"{where} [scenario]")
    duration = parse_duration(_need(head, "duration", (str, int, float), f"{where} [scenario]"),
                              f"{where} [scenario] duration")
    seed = head.get("seed", 0)
    battery = head.get("battery_percent", 100)
    if not isinstance(battery, (int, float)) or not 0 <= battery <= 100:
        raise ScenarioError(f"{where} [scenario]: battery_percent {battery!r} is not 0-100")
    places: dict[str, Place] = {}
    for pname, p in (data.get("places") or {}).items():
        pw = f"{where} [places.{pname}]"
        if not isinstance(p, dict):
            raise ScenarioError(f"{pw}: want {{ lat = .., lon = .., env = .. }}")
        env = p.get("env", "outdoor")
        if env not in ENVIRONMENTS:
            raise ScenarioError(f"{pw}: env {env!r} is not one of {', '.join(ENVIRONMENTS)}")
        lat, lon = _need(p, "lat", (int, float), pw), _need(p, "lon", (int, float), pw)
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ScenarioError(f"{pw}: {lat}, {lon} is not a position in degrees")
        places[pname] = Place(pname, float(lat), float(lon), env)
    home = head.get("home", "home")
    if home not in places:
        raise ScenarioError(f"{where}: the home place {home!r} is not in [places]; add it or set "
                            "[scenario] home = \"<place>\"")
    contacts: dict[int, Contact] = {}
    for key_text, c in (data.get("contacts") or {}).items():
        cw = f"{where} [contacts.{key_text}]"
        if key_text not in ("1", "2", "3", "4"):
            raise ScenarioError(f"{cw}: contacts are keyed by the card's keys 1-4")
        answers = c.get("answers", "confirms")
        if answers not in CALL_KINDS:
            raise ScenarioError(f"{cw}: answers = {answers!r} is not one of {', '.join(CALL_KINDS)}")
        number = _need(c, "number", str, cw)
        if not re.fullmatch(r"\+?\d{3,20}", number):
            raise ScenarioError(f"{cw}: number {number!r} is not a phone number (digits, optional +)")
        contacts[int(key_text)] = Contact(int(key_text), c.get("name", f"contact {key_text}"), number,
                                          answers, float(c.get("ring_s", 8)), float(c.get("talk_s", 30)))
    steps: list[Step] = []
    start_local = start_unix + tz * 900
    for i, raw in enumerate(data.get("timeline") or []):
        sw = f"{where} [[timeline]] #{i + 1}"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{sw}: want a table with 'at' and 'do'")
        kind = _need(raw, "do", str, sw)
        if kind not in STEP_KINDS:
            raise ScenarioError(f"{sw}: do = {kind!r} is not one of {', '.join(STEP_KINDS)}")
        at_s = _when(_need(raw, "at", (str, int), sw), sw, start_local)
        required, optional = STEP_KINDS[kind]
        args = {k: v for k, v in raw.items() if k not in ("at", "do")}
        for k in required:
            if k not in args:
                raise ScenarioError(f"{sw} ({kind}): '{k}' is missing")
        for k in args:
            if k not in required and k not in optional:
                raise ScenarioError(f"{sw} ({kind}): unknown key '{k}' (known: "
                                    f"{', '.join(required + optional) or 'none'})")
        _check_step(kind, args, sw, places, contacts)
        if steps and at_s < steps[-1].at_s:
            raise ScenarioError(f"{sw}: at {raw['at']!r} is earlier than the step before; keep the "
                                "timeline in time order")
        if at_s > duration:
            raise ScenarioError(f"{sw}: at {raw['at']!r} is after the scenario's end")
        steps.append(Step(at_s, kind, args))
    expect = data.get("expect") or []
    for i, e in enumerate(expect):
        ew = f"{where} [[expect]] #{i + 1}"
        if not isinstance(e, dict) or e.get("kind") not in EXPECT_KINDS:
            raise ScenarioError(f"{ew}: kind must be one of {', '.join(EXPECT_KINDS)}")
    settings = data.get("card") or {}
    if not isinstance(settings, dict):
        raise ScenarioError(f"{where}: [card] must be a table of firmware settings")
    return Scenario(path, name, head.get("description", ""), start_unix, tz, duration, int(seed),
                    dict(settings), places, home, contacts, steps, list(expect), float(battery))


def _check_step(kind: str, args: dict, where: str, places: dict, contacts: dict) -> None:
    if kind == "carry" and args["state"] not in CARRY:
        raise ScenarioError(f"{where}: state {args['state']!r} is not one of {', '.join(CARRY)}")
    if kind == "go" and args["to"] not in places:
        raise ScenarioError(f"{where}: place {args['to']!r} is not in [places]")
    if kind in ("press", "hold"):
        if args["key"] not in (1, 2, 3, 4):
            raise ScenarioError(f"{where}: key {args['key']!r} is not 1-4")
        if kind == "press" and args["key"] not in contacts:
            raise ScenarioError(f"{where}: key {args['key']} has no contact in [contacts]")
    if kind == "coverage" and not isinstance(args["up"], bool):
        raise ScenarioError(f"{where}: up must be true or false")
    if kind == "battery" and not (isinstance(args["percent"], (int, float)) and 0 <= args["percent"] <= 100):
        raise ScenarioError(f"{where}: percent {args['percent']!r} is not 0-100")
    if kind == "power_loss" and args.get("during", "idle") not in ("idle", "outbox_write"):
        raise ScenarioError(f"{where}: during must be 'idle' or 'outbox_write'")


def find(name_or_path: str) -> Path:
    """A scenario by path, or by the name of a shipped one ('normal-day')."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    shipped = SCENARIO_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
    raise ScenarioError(f"no scenario {name_or_path!r}: give a .toml file or one of: {names}")


def shipped() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.toml"))
