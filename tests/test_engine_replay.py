"""`carecard replay` over logs the JSON-lines sink wrote, and the evaluation corpus's targets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest

from carecard.host.cli import main
from carecard.host.engine.evaluate import CorpusError, evaluate_corpus
from carecard.host.sinks.jsonl import JsonLinesSink

from engine_corpus import write_corpus
from enginegen import Gen, local

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "docs" / "event.schema.json").read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("engine-corpus")
    write_corpus(folder)
    return folder


def test_the_evaluation_corpus_meets_the_targets(corpus: Path) -> None:
    report = evaluate_corpus(corpus)
    names = {s.name for s in report.scenarios}
    assert {"homebody_month", "farmer_month", "fall_morning", "fall_after_nap", "fall_evening", "fall_night",
            "fall_outside", "fall_bad_sky_no_sensor", "card_left_on_table", "coverage_hole", "flat_battery",
            "sos_night"} <= names
    for scenario in report.scenarios:
        for incident in scenario.incidents:
            assert incident.alerted_at is not None, f"{scenario.name}: {incident.kind} missed ({incident.what})"
            assert incident.alerted_at <= incident.deadline, f"{scenario.name}: {incident.kind} late"
            if incident.kind == "sos":
                assert incident.alerted_at - incident.start <= 60
    assert sum(s.device_days for s in report.scenarios if s.normal) >= 150
    assert report.false_per_device_month(normal_only=True) <= 1.0
    assert report.meets_targets()


def test_the_evaluation_report_command(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--evaluate", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "fall_night" in out and out.splitlines()[-2].startswith("total")
    assert "targets met" in out


def test_a_missed_incident_fails_the_evaluation(corpus: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("sos_night.jsonl", "settings.toml"):
        (tmp_path / name).write_bytes((corpus / name).read_bytes())
    expected = json.loads((corpus / "sos_night.expected.json").read_text())
    expected["incidents"].append({"kind": "offline", "start": expected["incidents"][0]["start"],
                                  "deadline": expected["incidents"][0]["deadline"], "what": "never happens"})
    (tmp_path / "sos_night.expected.json").write_text(json.dumps(expected))
    assert main(["replay", "--evaluate", str(tmp_path)]) == 1
    assert "offline MISSED (never happens)" in capsys.readouterr().out
    with pytest.raises(CorpusError, match="no .*expected.json"):
        (tmp_path / "sos_night.expected.json").unlink()
        evaluate_corpus(tmp_path)


def _write_with_sink(path: Path, events: list[dict]) -> None:
    sink = JsonLinesSink("jsonl", str(path))

    async def go() -> None:
        await sink.deliver(events)
        await sink.close()

    asyncio.run(go())


def test_replay_prints_every_step_as_alert_events_from_the_sinks_file(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    gen = Gen()
    events = []
    t = local(8)
    while t < local(13):
        events.append(gen.pos(t))
        events.append(gen.status(t + 5, motion=3 if t < local(9) else 0))
        t += 900
    events.append(gen.sos(local(13.2)))
    log = tmp_path / "events.jsonl"
    _write_with_sink(log, events)
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[devices."{gen.device}"]\nmotion_sensor = true\nfamily = ["+86 son"]\n')
    assert main(["replay", str(log), "--settings", str(settings), "--state-out", str(tmp_path / "state.json")]) == 0
    captured = capsys.readouterr()
    alerts = [json.loads(line) for line in captured.out.splitlines()]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for alert in alerts:
        validator.validate(alert)
    assert [(a["data"]["alert"], a["data"]["details"]["step"]) for a in alerts] == [
        ("inactivity", "checkin"), ("inactivity", "family"), ("inactivity", "grid_worker"), ("sos", "raised")]
    assert len({a["id"] for a in alerts}) == 4
    assert "0 lines skipped" in captured.err
    assert json.loads((tmp_path / "state.json").read_text())["version"] == 1
    # --until stops the clock: before the family step
    assert main(["replay", str(log), "--settings", str(settings), "--until", "2025-11-04T04:00:00Z"]) == 0
    steps = [json.loads(line)["data"]["details"]["step"] for line in capsys.readouterr().out.splitlines()]
    assert steps == ["checkin"]


def test_replay_reports_bad_lines_and_refuses_bad_arguments(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    gen = Gen()
    log = tmp_path / "events.jsonl"
    _write_with_sink(log, [gen.status(local(8))])
    with log.open("a") as handle:
        handle.write("not json\n[1]\n{\"kind\": \"status\"}\n")
    assert main(["replay", str(log)]) == 0
    err = capsys.readouterr().err
    assert "line 2 skipped: not JSON" in err and "line 3 skipped: not a JSON object" in err
    assert "line 4 skipped: no valid received_at" in err and "3 lines skipped" in err
    assert main(["replay", str(tmp_path / "missing.jsonl")]) == 1
    assert "cannot read the event log" in capsys.readouterr().err
    assert main(["replay", str(log), "--until", "soon"]) == 2
    assert "--until 'soon': not an ISO 8601 time" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[defaults]\nwake = 7\n")
    assert main(["replay", str(log), "--settings", str(tmp_path / "bad.toml")]) == 1
    assert "defaults.wake" in capsys.readouterr().err
    assert main(["replay"]) == 2
