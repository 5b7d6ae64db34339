"""`carecard nmea FILE`: the card's parser on MicroPython over a capture, JSON lines out."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

KEYS = ["time", "valid", "lat", "lon", "alt", "hdop", "sats", "fix", "speed", "course"]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")


def carecard(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carecard.host.cli", *args],
                          capture_output=True, text=True, timeout=120)


def records(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.usefixtures("mpy")  # the parser runs on both interpreters
def test_fix_epochs_as_json_lines(shared_data):
    proc = carecard("nmea", str(shared_data / "nmea" / "mt3339.log"), "--not-before", "2000-01-01")
    assert proc.returncode == 0, proc.stderr
    recs = records(proc)
    assert len(recs) == 30
    for rec in recs:
        assert list(rec) == KEYS
        assert ISO.match(rec["time"])
        assert rec["valid"] is True and rec["fix"] == "3d"
        assert isinstance(rec["lat"], float) and isinstance(rec["lon"], float)
    assert recs[0] == {"time": "2015-04-13T20:26:40Z", "valid": True, "lat": 44.0688433,
                       "lon": -121.3141917, "alt": 1128, "hdop": 1.0, "sats": 10, "fix": "3d",
                       "speed": 0.02, "course": 226.0}
    summary = proc.stderr.strip().splitlines()
    assert len(summary) == 1
    assert "138 sentences" in summary[0] and "0 bad checksums" in summary[0]
    assert "197 skipped bytes" in summary[0]  # the capture's comment header


@pytest.mark.usefixtures("mpy")  # the parser runs on both interpreters
def test_fractional_seconds_and_speed_in_metres_per_second(shared_data):
    proc = carecard("nmea", str(shared_data / "nmea" / "quectel-l76k-nmea.log"))
    assert proc.returncode == 0, proc.stderr
    recs = records(proc)
    assert len(recs) == 151
    assert recs[1]["time"] == "2026-08-05T05:52:34.200Z"
    assert recs[1]["hdop"] == 0.9 and recs[1]["sats"] == 14 and recs[1]["alt"] == 77
    moving = [r for r in recs if r["speed"]]
    assert all(isinstance(r["speed"], float) for r in moving)


@pytest.mark.usefixtures("mpy")  # the parser runs on both interpreters
def test_no_fix_capture_has_null_positions(shared_data):
    path = next((shared_data / "nmea").glob("simcom_a7670*.nmea"))
    proc = carecard("nmea", str(path), "--not-before", "2020-01-01")
    assert proc.returncode == 0, proc.stderr
    recs = records(proc)
    assert [r["time"] for r in recs] == ["2023-02-07T17:29:22Z", "2023-02-07T17:29:22.500Z",
                                         "2023-02-07T17:29:23Z"]
    assert all(r["valid"] is False and r["lat"] is None and r["lon"] is None
               and r["fix"] == "none" for r in recs)
    assert "truncated" in proc.stderr


@pytest.mark.usefixtures("mpy")  # the parser runs on both interpreters
def test_untimed_epochs_print_null_time(shared_data):
    proc = carecard("nmea", str(shared_data / "nmea" / "bt451.log"), "--not-before", "2000-01-01")
    assert proc.returncode == 0
    assert sum(r["time"] is None for r in records(proc)) == 4


@pytest.mark.usefixtures("mpy")  # the parser runs on both interpreters
@pytest.mark.parametrize("content", [bytes(range(256)) * 20, b""], ids=["garbage", "empty"])
def test_no_sentence_found_is_one_line_and_a_failure(tmp_path, content):
    path = tmp_path / "capture.bin"
    path.write_bytes(content)
    proc = carecard("nmea", str(path))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no NMEA sentence found" in proc.stderr
    assert f"{len(content)} bytes skipped" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.usefixtures("mpy")  # the parser runs on both interpreters
def test_week_rollover_by_the_default_floor_is_said_on_stderr(shared_data):
    capture = str(shared_data / "nmea" / "mt3339.log")
    moved = carecard("nmea", capture)
    assert moved.returncode == 0 and "30 week-rollover dates corrected" in moved.stderr
    assert "30 fix dates before the card's floor (2024-01-01)" in moved.stderr
    assert "moved forward by 1024 weeks" in moved.stderr
    kept = carecard("nmea", capture, "--not-before", "1990-01-01")
    assert kept.returncode == 0 and "0 week-rollover dates corrected" in kept.stderr
    assert "moved forward" not in kept.stderr


def test_a_chunk_larger_than_a_uart_read_is_a_usage_error(shared_data):
    proc = carecard("nmea", "--chunk", "100000000", str(shared_data / "nmea" / "mt3339.log"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "1-65536" in proc.stderr


@pytest.mark.parametrize("make", ["missing", "directory", "dangling"])
def test_unreadable_capture_is_one_clear_line(tmp_path, make):
    target = tmp_path / "capture.log"
    if make == "directory":
        target.mkdir()
    elif make == "dangling":
        target.symlink_to(tmp_path / "gone.log")
    proc = carecard("nmea", str(target))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("carecard nmea: ") and str(target) in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_option_values_are_rejected(shared_data):
    proc = carecard("nmea", str(shared_data / "nmea" / "mt3339.log"), "--not-before", "soon")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = carecard("nmea", str(shared_data / "nmea" / "mt3339.log"), "--chunk", "0")
    assert proc.returncode == 2 and "--chunk" in proc.stderr


@pytest.mark.usefixtures("mpy")  # the parser runs on both interpreters
def test_chunk_size_does_not_change_the_output(shared_data):
    path = str(shared_data / "nmea" / "neo-m8n.log")
    one = carecard("nmea", path, "--chunk", "1")
    big = carecard("nmea", path, "--chunk", "4096")
    assert one.returncode == big.returncode == 0
    assert one.stdout == big.stdout and one.stdout.count("\n") == 23


def test_command_is_registered():
    from carecard.host import cli

    assert "carecard.host.commands.nmea_cmd" in cli.COMMAND_MODULES
    from carecard.host.commands import bench_cmds

    assert bench_cmds.BENCHMARKS["nmea"] == "carecard.tools.bench.nmea"
    assert Path(cli.__file__).name == "cli.py"
