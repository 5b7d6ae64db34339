"""Shared fixtures: the MicroPython runner and the captured data in ../shared/data/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from carecard.tools import micropython, port32

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


# Outside the tests that request `mpy`, running MicroPython is refused (a clear error): so no
# test runs firmware code on one interpreter only. Subprocesses (the CLI) inherit the selection.
os.environ[micropython.SELECT_VARIABLE] = micropython.UNSELECTED

INTERPRETERS = ("mpy64", "mpy32")


@pytest.fixture(scope="session")
def card_port() -> micropython.Interpreter:
    """The 32-bit port like the card's, built from ../shared/vendor once (cached in the venv)."""
    try:
        return micropython.card_port()
    except port32.Port32Error as exc:
        pytest.fail(f"the 32-bit MicroPython port cannot be built: {exc}", pytrace=False)


@pytest.fixture(scope="module", params=INTERPRETERS)
def mpy(request):
    """The MicroPython unix port with the card image on its path (`mpy.run`, `mpy.Batch`), once
    as the PyPI port (64-bit: test id mpy64) and once as the 32-bit build like the card's
    (31-bit small ints, half-size objects: mpy32). `mpy.current()` says which."""
    if request.param == "mpy64":
        interpreter = micropython.pypi_port()  # fails clearly if not installed
    else:
        interpreter = request.getfixturevalue("card_port")
    with micropython.using(interpreter):
        yield micropython


@pytest.fixture(autouse=True)
def _interpreter_only_for_mpy_tests(request, monkeypatch):
    """A test that does not request `mpy` runs with no interpreter selected (a module-scoped
    `mpy` stays set up between its tests)."""
    if "mpy" not in request.fixturenames:
        monkeypatch.setenv(micropython.SELECT_VARIABLE, micropython.UNSELECTED)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server on 127.0.0.1 for the session (tools/pgcluster.py); each
    test takes a database of its own with `pg_cluster.new_database()`."""
    from carecard.tools.pgcluster import PgCluster

    cluster = PgCluster().start()
    yield cluster
    cluster.stop()
