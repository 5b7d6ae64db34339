"""`python -m carecard.tools.vcard.corpus DIR`: virtual-card days as entries of the alert
engine's evaluation corpus, played here on the card-like port against a real receiver (one
short day: the suite's own runs of the other corpus scenarios are judged in test_vcard_sim)."""

from __future__ import annotations

import json

from carecard.host.engine.evaluate import evaluate_corpus, format_report
from carecard.tools import micropython
from carecard.tools.vcard import corpus


def test_a_played_day_becomes_a_corpus_entry_the_report_judges(card_port, monkeypatch, tmp_path):
    monkeypatch.setenv(micropython.SELECT_VARIABLE, card_port.executable)
    (log,) = corpus.write_corpus(tmp_path, {"sos-no-answer-then-voicemail": "40m"}, parallel=1)
    assert log.name == "vcard-sos-no-answer-then-voicemail.jsonl"
    expected = json.loads((tmp_path / "vcard-sos-no-answer-then-voicemail.expected.json").read_text())
    assert [i["kind"] for i in expected["incidents"]] == ["sos"] and not expected["normal"]
    assert expected["settings"]["utc_offset"] == "+08:00" and expected["device_days"] == round(2400 / 86400, 3)
    report = evaluate_corpus(tmp_path)
    (result,) = report.scenarios
    assert (result.detected, result.late, result.missed) == (1, 0, 0), format_report(report)
    assert report.meets_targets()
