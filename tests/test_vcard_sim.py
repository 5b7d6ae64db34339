"""`carecard sim`: every shipped scenario end to end. The card image's main.py on the MicroPython
unix port with the simulated board, A7670 and GNSS in virtual time, against a real `carecard
receive` on 127.0.0.1 (a subprocess the command starts): frames acked and stored, the stored
events in the documented schema with received_at on the simulated clock, the expectations of
each scenario checked, the energy of the states the firmware drove beside the duty model's.

These whole-system runs use the 32-bit port built like the card's (`card_port`); the firmware's
modules are each tested on both ports in their own tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from carecard.host.engine.evaluate import Report, evaluate_entry, format_report
from carecard.tools import micropython
from carecard.tools.vcard import corpus as vcard_corpus
from carecard.tools.vcard import scenario
from receiver_helpers import ReceiverProcess

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "docs" / "event.schema.json").read_text())

# How much of each scenario the suite plays (virtual time; the rest is what `carecard sim NAME`
# plays in full): the long ones up to the point their expectations are about.
UNTIL = {
    "week-skipped-charging": "26h",   # a whole day, the night on the table and the next morning
    "battery-rundown": "20h",         # from 42 %: low, then critical
    "coverage-hole-6h": "7h30m",      # the hole from 09:00 to 15:00, then half an hour
}
# Expectations the card's runtime may not meet today, and why (scenario name -> kinds); every
# other expectation must pass. Empty: every shipped expectation is met.
UNMET: dict[str, set[str]] = {}


@pytest.fixture
def card_mpy(card_port, monkeypatch):
    monkeypatch.setenv(micropython.SELECT_VARIABLE, card_port.executable)


def sim(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carecard.host.cli", "sim", *args],
                          capture_output=True, text=True, timeout=timeout)


def checks_of(stdout: str) -> list[tuple[bool, str, str]]:
    """(passed, kind, line) per expectation line of the summary."""
    out = []
    for line in stdout.splitlines():
        m = re.match(r"^  (ok  |FAIL) kind=(\w+)", line)
        if m:
            out.append((m.group(1) == "ok  ", m.group(2), line))
    return out


@pytest.mark.parametrize("path", scenario.shipped(), ids=lambda p: p.stem)
def test_each_shipped_scenario_runs_end_to_end_against_a_real_receiver(card_mpy, tmp_path, path):
    events_file = tmp_path / "events.jsonl"
    args = [path.stem, "--events", str(events_file)]
    if path.stem in UNTIL:
        args += ["--until", UNTIL[path.stem]]
    run = sim(*args)
    assert "Traceback" not in run.stderr, run.stderr
    sc = scenario.load(path)
    checks = checks_of(run.stdout)
    # every expectation of the scenario is checked and reported
    assert len(checks) == len(sc.expect), run.stdout
    failed = {kind for passed, kind, _ in checks if not passed}
    assert failed <= UNMET.get(path.stem, set()), run.stdout[-3000:]
    assert run.returncode == (1 if failed else 0), run.stderr
    # the timeline: the card booted, sent frames and the receiver acked them
    assert re.search(r"!! boot detail=power_on", run.stdout)
    assert re.search(r"-> hello #\d+", run.stdout) and re.search(r"<- ack #\d+ \(hello\)", run.stdout)
    summary = re.search(r"receiver stored (\d+) frames .*, acked (\d+) counters", run.stdout)
    assert summary and int(summary.group(1)) == int(summary.group(2)) > 0
    # what the receiver stored, in the documented schema, received_at on the simulated clock
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert len(events) == int(summary.group(1))
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for event in events:
        validator.validate(event)
    received = [e["received_at"] for e in events]
    start = scenario_start_iso(sc)
    assert received == sorted(received) and received[0] >= start
    if path.stem in vcard_corpus.CORPUS:
        judged_by_the_alert_engine(sc, events_file, UNTIL.get(path.stem), tmp_path)
    # the energy comes from the run: the modem, GNSS and MCU states the firmware drove
    energy = re.search(r"energy \(the states the firmware drove\): ([\d.]+) mAh/day.* ([\d.]+) days "
                       r"per 1000 mAh charge; duty model ([\d.]+) days", run.stdout)
    assert energy and float(energy.group(1)) > 0 and float(energy.group(3)) > 0


def judged_by_the_alert_engine(sc: scenario.Scenario, events_file: Path, until: str | None,
                               tmp_path: Path) -> None:
    """The alert engine over what the receiver stored that day (an entry of the evaluation
    corpus, tools/vcard/corpus.py): every incident of the scenario's steps alerted on time, no
    alert on a normal day. The entry goes to the folder CARECARD_VCARD_CORPUS names (`make
    test` sets it: its evaluation report then has these days, from these very runs)."""
    assert until == vcard_corpus.CORPUS[sc.name], "play the corpus's days (tools/vcard/corpus.py CORPUS)"
    out_dir = Path(os.environ.get(vcard_corpus.ENV_VARIABLE) or tmp_path / "corpus")
    until_s = scenario.parse_duration(until, "until") if until else None
    result = evaluate_entry(vcard_corpus.write_entry(out_dir, sc, events_file, until_s))
    report = format_report(Report([result]))
    assert result.incidents or result.normal, report
    assert result.missed == 0 and result.late == 0, report
    if result.normal:
        assert result.false_alerts == [], report


def scenario_start_iso(sc: scenario.Scenario) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(sc.start_unix, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def test_the_firmware_runs_energy_and_the_card_side_timeline_as_json_lines(card_mpy, tmp_path):
    run = sim("sos-no-answer-then-voicemail", "--timeline-jsonl", "--until", "40m")
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    kinds = [e["kind"] for e in lines]
    assert "boot" in kinds and "uplink" in kinds and "ack" in kinds
    hold = next(e for e in lines if e["kind"] == "step" and e["do"] == "hold")
    sos = next(e for e in lines if e["kind"] == "uplink" and e["type"] == "sos")
    ack = next(e for e in lines if e["kind"] == "ack" and e["acked"] == sos["counter"])
    # the SOS left after the long press, and the receiver acked it: virtual ms on one clock
    assert hold["t_ms"] + 2000 <= sos["t_ms"] <= ack["t_ms"]
    assert sos["fields"]["trigger"] == "long_press"
    assert all(e["t_ms"] <= 40 * 60_000 for e in lines)


def test_against_a_receiver_already_running(card_mpy, tmp_path):
    data = tmp_path / "data"
    receiver = ReceiverProcess(data)
    try:
        run = sim("reboot-during-call", "--receiver", f"127.0.0.1:{receiver.udp_port}",
                  "--data", str(data), "--quiet")
    finally:
        receiver.terminate()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok   kind=delivered, type=hello: 2 hello stored" in run.stdout
    # the reboot during the call: the card came back (watchdog) and reported it in its hello
    assert re.search(r"resets: power_on@0\.00h, watchdog@0\.17h", run.stdout)


@pytest.mark.parametrize("text, message", [
    ("[scenario]\nname = 'x'\nstart = '2026-12-07T08:00:00+08:00'\nduration = '2h'\n[places]\n"
     "home = { lat = 24.9, lon = 118.5 }\n[[timeline]]\nat = '09:00'\ndo = 'dance'\n",
     r"\[\[timeline\]\] #1: do = 'dance' is not one of carry, go"),
    ("[scenario]\nname = 'x'\nstart = '2026-12-07T08:00:00+08:00'\nduration = '2h'\n[places]\n"
     "home = { lat = 24.9, lon = 118.5 }\n[[timeline]]\nat = '09:00'\ndo = 'go'\nto = 'moon'\n",
     r"\[\[timeline\]\] #1: place 'moon' is not in \[places\]"),
    ("[scenario]\nname = 'x'\nstart = 'tomorrow'\nduration = '2h'\n",
     r"start 'tomorrow' is not a local time with its offset"),
    ("[scenario\nname = 'x'\n", r"not valid TOML"),
])
def test_a_malformed_scenario_is_refused_naming_the_file_and_the_step(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    run = sim(str(path))
    assert run.returncode == 1
    assert run.stderr.startswith(f"carecard sim: {path}") and re.search(message, run.stderr), run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_usage_errors(tmp_path):
    run = sim("no-such-scenario")
    assert run.returncode == 1 and "no scenario 'no-such-scenario': give a .toml file or one of:" in run.stderr
    run = sim("normal-day", "--receiver", "127.0.0.1:5683")
    assert run.returncode == 2 and "--receiver needs --data DIR" in run.stderr
    run = sim("normal-day", "--receiver", "localhost", "--data", str(tmp_path))
    assert run.returncode == 2 and "is not HOST:PORT" in run.stderr
    run = sim("normal-day", "--until", "soon")
    assert run.returncode == 1 and "'soon' is not a duration" in run.stderr
    run = sim("normal-day", "--card", str(tmp_path))
    assert run.returncode == 1 and "cannot read config.json" in run.stderr and "carecard provision" in run.stderr


def test_order_is_judged_on_what_left_after_coverage_came_back_not_on_first_attempts() -> None:
    """coverage-hole-6h's `order` failed while the card's timeline showed the SOS first: a call
    record whose first datagram left just before the hole (its ack lost in it) ranked before the
    SOS by that first attempt, though its retransmission left after the SOS's."""
    from types import SimpleNamespace

    from carecard.tools.vcard import sim as simmod

    sc = SimpleNamespace(expect=[{"kind": "order", "first": "sos"}])
    back = 6 * 3600_000
    events = [  # (kind, counter, the stored transmission's virtual ms, rank of its first one)
        {"kind": "call", "counter": 7, "virtual_ms": back + 9_000, "sent_rank": 6},
        {"kind": "sos", "counter": 9, "virtual_ms": back + 2_000, "sent_rank": 8},
        {"kind": "status", "counter": 5, "virtual_ms": back - 60_000, "sent_rank": 4},
    ]
    r = SimpleNamespace(events=events)
    world = SimpleNamespace(coverage_back_ms=[back])
    [check] = simmod.check_expectations(sc, r, world, None)  # type: ignore[arg-type]
    assert check.passed, check.detail
    assert "sos" in check.detail
    # and a call that really went first fails it
    events[0]["virtual_ms"] = back + 1_000
    [check] = simmod.check_expectations(sc, r, world, None)  # type: ignore[arg-type]
    assert not check.passed and "call" in check.detail


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def test_a_terminated_sim_stops_the_receiver_it_started(card_mpy, tmp_path) -> None:
    """A `carecard sim` ended by SIGTERM (a CI timeout, a service manager) left the `carecard
    receive` it had started running, its UDP port and data folder held."""
    import os
    import signal
    import time

    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "carecard.host.cli", "sim", "week-skipped-charging",
                             "--data", str(data), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    receivers: list[int] = []
    try:
        card: list[int] = []
        for _ in range(600):   # until the receiver and then the card run (at most a minute)
            children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            commands = {pid: _argv(pid) for pid in children}
            receivers = [pid for pid, argv in commands.items() if b"receive" in argv]
            card = [pid for pid, argv in commands.items() if any(b"micropython" in a for a in argv[:1])]
            if receivers and card:
                break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        assert receivers and card, commands
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        for _ in range(300):
            if not any(_alive(pid) for pid in receivers):
                break
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in receivers), "the receiver outlived the sim"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in receivers:   # not left behind by this test, whatever happened
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
