"""Evaluate the engine on a scenario corpus: which incidents it alerted, how soon, and how often
it alerted without one.

A corpus is a folder of `<scenario>.jsonl` event logs (the JSON-lines sink's format), each with
`<scenario>.expected.json`:

    {"scenario": "fall_morning", "description": "...", "device": "861234500000011",
     "device_days": 3, "normal": false, "end": "2025-11-05T16:00:00Z",
     "incidents": [{"kind": "inactivity", "start": "2025-11-04T01:30:00Z",
                    "deadline": "2025-11-04T04:45:00Z", "what": "fall at home at 09:30"}]}

(`end`, optional: the clock runs to it after the last event; `settings`, optional: the device's
table of the settings file, over the folder's) and an optional `settings.toml` (or
`settings.json`) for all of them (docs/events.md). An
incident is detected by the first alert of its kind raised from 5 minutes before its start on
(its first step: the check-in prompt for inactivity); late when that is after its deadline;
missed when there is none. Every other alert raised is a false alert. Targets: no incident
missed or late, at most one false alert per device-month over the normal-day scenarios.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from carecard.host.engine.core import Notify
from carecard.host.engine.replay import replay
from carecard.host.engine.settings import Settings
from carecard.host.timefmt import iso_utc, parse_iso_utc

EARLY_SLACK_S = 300
FALSE_ALERTS_PER_DEVICE_MONTH_MAX = 1.0
_FIRST_STEPS = ("checkin", "raised")


class CorpusError(ValueError):
    """A corpus folder or expectation file that cannot be used (says which file and why)."""


@dataclass
class Incident:
    kind: str
    start: float
    deadline: float
    what: str
    alerted_at: float | None = None

    @property
    def late(self) -> bool:
        return self.alerted_at is not None and self.alerted_at > self.deadline


@dataclass
class ScenarioResult:
    name: str
    description: str
    device_days: float
    normal: bool
    incidents: list[Incident]
    false_alerts: list[tuple[str, float]]  # (kind, raised at)
    bad_lines: int = 0

    @property
    def detected(self) -> int:
        return sum(1 for i in self.incidents if i.alerted_at is not None and not i.late)

    @property
    def late(self) -> int:
        return sum(1 for i in self.incidents if i.late)

    @property
    def missed(self) -> int:
        return sum(1 for i in self.incidents if i.alerted_at is None)


@dataclass
class Report:
    scenarios: list[ScenarioResult] = field(default_factory=list)

    def total(self, attr: str) -> int:
        return sum(getattr(s, attr) for s in self.scenarios)

    def false_per_device_month(self, normal_only: bool) -> float:
        chosen = [s for s in self.scenarios if s.normal or not normal_only]
        days = sum(s.device_days for s in chosen)
        return sum(len(s.false_alerts) for s in chosen) / (days / 30.0) if days else 0.0

    def meets_targets(self) -> bool:
        return (self.total("missed") == 0 and self.total("late") == 0
                and self.false_per_device_month(True) <= FALSE_ALERTS_PER_DEVICE_MONTH_MAX)


def _load_expected(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        incidents = [Incident(str(i["kind"]), parse_iso_utc(i["start"]), parse_iso_utc(i["deadline"]),
                              str(i.get("what", ""))) for i in data["incidents"]]
        end = parse_iso_utc(data["end"]) if data.get("end") is not None else None
        own = data.get("settings")
        settings = None if own is None else {"devices": {str(data["device"]): own}}
        return {"description": str(data.get("description", "")), "device_days": float(data["device_days"]),
                "end": end, "settings": settings,
                "normal": bool(data.get("normal", False)), "incidents": incidents}
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CorpusError(f"{path}: not an expectation file (needs device_days and incidents with "
                          f"kind, start and deadline): {exc!r}") from None


def evaluate_scenario(log: Path, expected: dict[str, Any], settings: Settings) -> ScenarioResult:
    result = replay(log, settings, until=expected["end"])
    raised = [(a.kind, a.at) for a in result.actions if isinstance(a, Notify) and a.step in _FIRST_STEPS]
    incidents: list[Incident] = expected["incidents"]
    used: set[int] = set()
    for incident in sorted(incidents, key=lambda i: i.start):
        for index, (kind, at) in enumerate(raised):
            if index not in used and kind == incident.kind and at >= incident.start - EARLY_SLACK_S:
                incident.alerted_at = at
                used.add(index)
                break
    false_alerts = [r for index, r in enumerate(raised) if index not in used]
    return ScenarioResult(log.name[:-len(".jsonl")], expected["description"], expected["device_days"],
                          expected["normal"], incidents, false_alerts, len(result.bad_lines))


def evaluate_corpus(folder: Path | str) -> Report:
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"{folder}: not a folder (a corpus is a folder of *.jsonl and *.expected.json)")
    tables: dict[str, Any] = {}
    for name in ("settings.toml", "settings.json"):
        if (folder / name).exists():
            tables = Settings.load_tables(folder / name)
            break
    settings = Settings.from_mapping(tables)
    logs = sorted(folder.glob("*.jsonl"))
    if not logs:
        raise CorpusError(f"{folder}: no *.jsonl event logs (write one with "
                          f"`python tests/engine_corpus.py {folder}`)")
    report = Report()
    for log in logs:
        report.scenarios.append(evaluate_entry(log, tables, settings))
    return report


def evaluate_entry(log: Path, tables: Mapping[str, Any] | None = None,
                   settings: Settings | None = None) -> ScenarioResult:
    """One scenario of a corpus: its log with the `.expected.json` beside it, judged with the
    folder's settings (`tables`, the settings file's document, made into `settings`) and the
    scenario's own. Raises CorpusError, SettingsError, ReplayError."""
    expected_path = log.with_name(log.name[:-len(".jsonl")] + ".expected.json")
    if not expected_path.exists():
        raise CorpusError(f"{log}: no {expected_path.name} beside it (the expected incidents)")
    expected = _load_expected(expected_path)
    if expected["settings"] is not None:
        settings = Settings.combine(tables or {}, expected["settings"], where=str(expected_path))
    elif settings is None:
        settings = Settings.from_mapping(tables or {})
    return evaluate_scenario(log, expected, settings)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def format_report(report: Report) -> str:
    w = max([32, *(len(s.name) for s in report.scenarios)])
    lines = [f"{'scenario':{w}} {'incidents':>9} {'detected':>8} {'late':>4} {'missed':>6} "
             f"{'false':>5} {'false/dev-month':>15}  first alert after start"]
    for s in report.scenarios:
        delays = ", ".join(f"{i.kind} {_minutes(i.alerted_at - i.start)}"
                           f"{' LATE' if i.late else ''}" for i in s.incidents if i.alerted_at is not None)
        missed = ", ".join(f"{i.kind} MISSED ({i.what})" for i in s.incidents if i.alerted_at is None)
        rate = len(s.false_alerts) / (s.device_days / 30.0)
        lines.append(f"{s.name:{w}} {len(s.incidents):9d} {s.detected:8d} {s.late:4d} {s.missed:6d} "
                     f"{len(s.false_alerts):5d} {rate:15.2f}  {'; '.join(x for x in (delays, missed) if x)}")
        for kind, at in s.false_alerts:
            lines.append(f"{'':{w}}   false alert: {kind} at {iso_utc(at)}")
    incidents = report.total("detected") + report.total("late") + report.total("missed")
    lines.append(f"{'total':{w}} {incidents:9d} {report.total('detected'):8d} {report.total('late'):4d} "
                 f"{report.total('missed'):6d} {sum(len(s.false_alerts) for s in report.scenarios):5d} "
                 f"{report.false_per_device_month(False):15.2f}")
    normal_days = sum(s.device_days for s in report.scenarios if s.normal)
    lines.append(f"false alerts per device-month on normal days: {report.false_per_device_month(True):.2f} "
                 f"over {normal_days:.0f} device-days (target <= {FALSE_ALERTS_PER_DEVICE_MONTH_MAX:g}); "
                 f"targets {'met' if report.meets_targets() else 'NOT met'}")
    return "\n".join(lines)
