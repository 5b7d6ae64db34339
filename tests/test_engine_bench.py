"""`carecard bench engine` runs and prints its figures (at a small size: no timed assertions)."""

from __future__ import annotations

import re

import pytest

from carecard.host.cli import main


def test_the_engine_benchmark_prints_memory_per_device_and_events_per_second(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "engine", "--devices", "300", "--speed-devices", "40", "--events", "2000",
                 "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"memory: 300 devices followed, .* bytes per device", out)
    assert re.search(r"engine: +[\d,]+ events/s", out) and re.search(r"speed: 2,000 events over 40 devices", out)
    assert main(["bench", "engine", "--rounds", "0"]) == 2
