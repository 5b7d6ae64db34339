"""The alert engine's evaluation corpus from full virtual-card days: what the receiver stored
while the real firmware lived a shipped scenario (`carecard sim SCENARIO --events OUT.jsonl`),
with the incidents the scenario's own timeline says happened.

    python -m carecard.tools.vcard.corpus OUT_DIR     # run the sims, write the corpus entries
    carecard replay --evaluate OUT_DIR                # the report (docs/events.md)

Each entry is `vcard-<scenario>.jsonl` (the stored events, received_at on the virtual clock) and
`vcard-<scenario>.expected.json` (host/engine/evaluate.py's format, with the card's engine
settings: its home and the scenario's time zone; everything else is the defaults, which are the
firmware's default intervals). `make test` adds these entries beside the generated corpus of
tests/engine_corpus.py: tests/test_vcard_sim.py writes the entry of each scenario it plays into
the folder named by CARECARD_VCARD_CORPUS, so the sims run once.

The incidents, from the scenario's steps (every scenario step kind that starts one):
- `fall`: `inactivity` from the fall; due within the stillness threshold (from the end of the
  sleeping hours if it falls inside them) plus one reporting interval;
- `carry` with state `table` while awake for at least the stillness threshold before the next
  `carry`: `inactivity` (a card left on a table is indistinguishable from a fall), due likewise;
- `hold` (an SOS): `sos` from the hold, due within 60 s of the SOS frame's arrival (inside a
  coverage hole the frame arrives when coverage returns);
- `coverage` down for longer than the offline time: `offline` from the start of the hole, due
  within the offline time plus one interval;
- the battery: `low_battery` from the first status at or below the low threshold or the first
  low/critical power event, due within one interval of it.
Scenarios without any of them are normal days: every alert raised is a false alert.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from carecard.host.engine.settings import DeviceSettings, Settings
from carecard.host.timefmt import iso_utc, parse_iso_utc
from carecard.tools.vcard import scenario as scenarios

# The corpus's scenarios and how much of each is played (None: all of it): the long ones up to
# the point their incidents are about.
CORPUS: dict[str, str | None] = {
    "normal-day": None,
    "fall-at-home": None,
    "left-on-table": None,
    "sos-no-answer-then-voicemail": None,
    "coverage-hole-6h": "7h30m",
    "battery-rundown": "20h",
}
SOS_DUE_S = 60
ENV_VARIABLE = "CARECARD_VCARD_CORPUS"


def engine_settings(sc: scenarios.Scenario) -> dict[str, Any]:
    """The card's table of the engine settings file: the scenario's home and time zone."""
    home = sc.places[sc.home]
    minutes = sc.tz_quarters * 15
    sign = "-" if minutes < 0 else "+"
    return {"name": sc.name, "home": {"lat": home.lat, "lon": home.lon},
            "utc_offset": f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"}


def _asleep_until(s: DeviceSettings, t: float) -> float:
    """When the sleeping hours around `t` end (t itself when awake)."""
    day = 86400
    local = (t + s.utc_offset) % day
    start, end = s.bedtime, (s.wake + s.wake_grace) % day
    asleep = (local >= start or local < end) if start > end else start <= local < end
    return t + ((end - local) % day) if asleep else t


def incidents(sc: scenarios.Scenario, events: list[dict[str, Any]], end_unix: float,
              s: DeviceSettings) -> list[dict[str, Any]]:
    """The incidents of the scenario's steps up to `end_unix` (module doc)."""
    out: list[dict[str, Any]] = []
    steps = [step for step in sc.steps if sc.start_unix + step.at_s <= end_unix]

    def add(kind: str, start: float, due: float, what: str) -> None:
        out.append({"kind": kind, "start": iso_utc(start), "deadline": iso_utc(due), "what": what})

    received = sorted((parse_iso_utc(e["received_at"]), e) for e in events)
    for index, step in enumerate(steps):
        t = sc.start_unix + step.at_s
        if step.kind == "fall":
            add("inactivity", t, _asleep_until(s, t + s.stillness_threshold) + s.report_interval,
                "a fall (the scenario's fall step)")
        elif step.kind == "carry" and step.args.get("state") == "table":
            later = [x for x in steps[index + 1:] if x.kind == "carry"]
            until = min(sc.start_unix + later[0].at_s if later else end_unix, end_unix)
            awake = _asleep_until(s, t)
            if until - awake >= s.stillness_threshold:
                add("inactivity", t, awake + s.stillness_threshold + s.report_interval,
                    "the card left on a table while the person is up")
        elif step.kind == "hold":
            frame = next((rx for rx, e in received if e["kind"] == "sos" and rx >= t), None)
            if frame is not None:
                add("sos", t, frame + SOS_DUE_S, "SOS held (due within 60 s of its frame)")
            else:
                add("sos", t, t + SOS_DUE_S, "SOS held (no SOS frame stored)")
        elif step.kind == "coverage" and step.args.get("up") is False:
            back = next((sc.start_unix + x.at_s for x in steps[index + 1:]
                         if x.kind == "coverage" and x.args.get("up") is True), end_unix)
            if back - t > s.offline_after_s:
                add("offline", t, t + s.offline_after_s + s.report_interval, "a coverage hole")
    for rx, e in received:
        data = e.get("data") or {}
        pct = data.get("battery_pct")
        low = (e["kind"] == "status" and data.get("charging") != "charging" and isinstance(pct, int)
               and pct <= s.low_battery_pct) or \
              (e["kind"] == "power" and data.get("event") in ("low", "critical"))
        if low:
            add("low_battery", rx, rx + s.report_interval, "the battery runs low")
            break
    return out


def entry(sc: scenarios.Scenario, device: str, events: list[dict[str, Any]],
          until_s: float | None) -> dict[str, Any]:
    """The expectation file's content for one played scenario (host/engine/evaluate.py)."""
    played = min(until_s if until_s is not None else sc.duration_s, sc.duration_s)
    end_unix = sc.start_unix + played
    table = engine_settings(sc)
    found = incidents(sc, events, end_unix, Settings(devices={device: table}).for_device(device))
    return {"scenario": f"vcard-{sc.name}", "description": f"virtual card: {sc.description}",
            "device": device, "device_days": round(played / 86400, 3), "normal": not found,
            "end": iso_utc(end_unix), "incidents": found, "settings": table}


def write_entry(out_dir: Path, sc: scenarios.Scenario, events_file: Path,
                until_s: float | None) -> Path:
    """Copy the stored events of a played scenario into the corpus folder with their
    expectations; returns the log's path. Raises ValueError for an events file without events."""
    text = events_file.read_text(encoding="utf-8")
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not events:
        raise ValueError(f"{events_file}: no events (the scenario {sc.name} stored nothing)")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / f"vcard-{sc.name}.jsonl"
    log.write_text(text, encoding="utf-8")
    expected = entry(sc, events[0]["device"], events, until_s)
    (out_dir / f"vcard-{sc.name}.expected.json").write_text(
        json.dumps(expected, indent=1, ensure_ascii=False), encoding="utf-8")
    return log


def write_corpus(out_dir: Path, names: dict[str, str | None] = CORPUS, parallel: int = 2) -> list[Path]:
    """Play each scenario on the virtual card against its own receiver and write its entry.
    Raises sim.SimError."""
    import tempfile

    from carecard.tools.vcard import sim

    def one(name: str) -> Path:
        sc = scenarios.load(scenarios.find(name))
        until = names[name]
        until_s = scenarios.parse_duration(until, "until") if until else None
        with tempfile.TemporaryDirectory(prefix="carecard-corpus-") as tmp:
            result = sim.run_scenario(sc, sim.SimOptions(until_s=until_s))
            events = Path(tmp) / "events.jsonl"
            events.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n"
                                      for e in sim.virtual_events(result)), encoding="utf-8")
            return write_entry(out_dir, sc, events, until_s)

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, names))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m carecard.tools.vcard.corpus OUT_DIR")
    for path in write_corpus(Path(sys.argv[1])):
        print(path)
