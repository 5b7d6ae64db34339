"""The simulation clock (host/simclock.py) and the lockstep of virtual cards on it
(tools/vcard/lockstep.py): what `carecard demo` runs a real receiver and its engine on.

A real `carecard receive --simulation-clock FILE` stamps frames with the file's receiver time
and its engine child steps when the simulator moves the engine time, raising a timed alert at
its exact virtual due time; a bad clock file is refused before anything starts. The lockstep
never lets a card pass the quantum's end before every other card has reached it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from carecard.host.paths import ingest_db_path
from carecard.host.simclock import SimulationClock, SimulationClockError
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.storage.sqlite.store import SQLiteStore
from carecard.host.timefmt import parse_iso_utc
from carecard.tools.vcard.lockstep import Lockstep, LockstepError

from receiver_helpers import BASE_TIME, Card, ReceiverProcess, exchange, provision, run_cli, udp_client


def test_a_clock_file_that_is_not_one_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SimulationClockError, match="No such file"):
        SimulationClock(tmp_path / "missing")
    (tmp_path / "short").write_bytes(b"\0" * 16)
    with pytest.raises(SimulationClockError, match="not 32 bytes"):
        SimulationClock(tmp_path / "short")
    (tmp_path / "other").write_bytes(b"\0" * 32)
    with pytest.raises(SimulationClockError, match="no clock marker"):
        SimulationClock(tmp_path / "other")
    refused = run_cli("receive", "--data", str(tmp_path / "data"), "--udp", "127.0.0.1:0",
                      "--simulation-clock", str(tmp_path / "other"))
    assert refused.returncode == 2
    assert "--simulation-clock" in refused.stderr and "no clock marker" in refused.stderr
    assert not (tmp_path / "data" / "carecard.sqlite").exists()  # refused before anything started


def test_the_receiver_and_its_engine_run_on_the_simulation_clock(tmp_path: Path) -> None:
    (device, key), = provision(tmp_path, 1).items()
    start = float(BASE_TIME + 100)
    path = tmp_path / "clock"
    clock = SimulationClock.create(path, start)
    clock.set_receiver(start + 30)   # a quantum under way: frames are stamped with its end
    receiver = ReceiverProcess(tmp_path, "--simulation-clock", str(path))
    store = SQLiteStore(ingest_db_path(tmp_path))
    try:
        card = Card(device, key)
        sock = udp_client()
        assert exchange(sock, receiver.udp_port, card.frame("status")) is not None
        sock.close()
        # the quantum ends: the engine steps at its end, with the frame
        clock.set_engine(start + 30)
        assert clock.wait_engine_stepped(start + 30, 30.0)
        log = SQLiteEventLog(ingest_db_path(tmp_path))
        try:
            (entry,) = [e for e in log.entries_after(0, 100) if e.message is not None]
        finally:
            log.close()
        assert parse_iso_utc(entry.event["received_at"]) == start + 30
        assert store.list_alerts() == []
        # a virtual day without a frame: "offline" at its due time (4 report intervals after
        # the last frame, engine defaults), not at the real time or at the day's end
        later = start + 30 + 86400
        clock.set_receiver(later)
        clock.set_engine(later)
        assert clock.wait_engine_stepped(later, 30.0)
        (alert,) = store.list_alerts()
        assert (alert.device, alert.kind, alert.state) == (device, "offline", "open")
        assert alert.opened_at == start + 30 + 4 * 900
    finally:
        store.close()
        code, err = receiver.terminate()
        clock.close()
    assert code == 0, err[-2000:]


def test_the_lockstep_holds_every_card_at_the_quantum_until_all_reached_it() -> None:
    """Three members with different steps, one starting later, one leaving early: no member is
    ever more than a quantum ahead of one still running, and everyone gets to the end."""
    lock = Lockstep(1000.0, 10.0, on_quantum=None)
    members = {"a": (3.0, 1000.0, 1200.0), "b": (7.0, 1000.0, 1090.0), "c": (4.0, 1050.0, 1200.0)}
    position = {name: spec[1] for name, spec in members.items()}
    done: set[str] = set()
    problems: list[str] = []
    guard = threading.Lock()

    def play(name: str) -> None:
        step, begin, end = members[name]
        try:
            lock.wait_until(name, begin)
            now, limit = begin, lock.limit
            while now < end:
                if now >= limit:
                    limit = lock.allowed(name, now)
                now = min(now + step, limit, end)
                with guard:
                    position[name] = now
                    running = [position[m] for m in members if m not in done and m != name
                               and members[m][1] <= now]
                    if running and now > min(running) + 10.0 + 1e-9:
                        problems.append(f"{name} at {now} while another is at {min(running)}")
        finally:
            with guard:
                done.add(name)
            lock.leave(name)

    for name in members:
        lock.join(name)
    threads = [threading.Thread(target=play, args=(name,)) for name in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert problems == []
    assert position == {"a": 1200.0, "b": 1090.0, "c": 1200.0}
    assert lock.quanta >= 19


def test_an_engine_that_does_not_follow_stops_every_card_with_the_reason(tmp_path: Path) -> None:
    clock = SimulationClock.create(tmp_path / "clock", 1000.0)   # nobody steps the engine
    lock = Lockstep(1000.0, 10.0, clock, engine_wait_s=0.2)
    errors: list[str] = []

    def play(name: str) -> None:
        try:
            lock.allowed(name, 1000.0)
        except LockstepError as exc:
            errors.append(str(exc))
        finally:
            lock.leave(name)

    for name in ("a", "b"):
        lock.join(name)
    threads = [threading.Thread(target=play, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(errors) == 2 and all("did not step to the virtual time" in e for e in errors)
    clock.close()
