"""Shared fixtures: the MicroPython runner and the captured data in ../shared/data/."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from carecard.tools import micropython

# The machine is shared (2 cores, parallel workers, MicroPython subprocesses): per-example
# deadlines would measure the neighbours, not our code. Speed is measured by `carecard bench`.
settings.register_profile("carecard", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("carecard")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data/ (real captures written by others). Missing means a broken checkout: fail."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.fail(
            f"captured test data not found at {SHARED_DATA}: the suite reads real captures from "
            "../shared/data/ beside the project checkout; put the shared/ folder there"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def mpy():
    """The MicroPython unix port with the card image on its path (`mpy.run`, `mpy.Batch`)."""
    micropython.micropython_executable()  # fails clearly if not installed
    return micropython
