"""The alert engine in a process of its own: the child `carecard receive` starts, supervises and
restarts, and `carecard engine` run alone (one steps per store, a second stands by and takes
over when the first dies). Real receivers on 127.0.0.1 UDP, real cards' frames, real processes
killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from carecard.host.engine.process import ENGINE_CHILD_NICE
from carecard.host.receiver.config import load_config
from carecard.host.receiver.service import ReceiverThread

from receiver_helpers import Card, exchange, provision, udp_client
from test_engine_receiver import SETTINGS, _config, _store, _sync, _until


def _sos(card: Card) -> bytes:
    return card.frame("sos", trigger="long_press", lat_e7=249012345, lon_e7=1184567890, fix="3d",
                      fix_age_s=20, battery_pct=64, time=int(time.time()))


def _sos_alerts(data_dir: Path) -> list[tuple[int, str]]:
    store = _store(data_dir)
    try:
        return sorted((a.device, a.state) for a in store.list_alerts(kinds=("sos",)))
    finally:
        store.close()


def _raised_events(data_dir: Path) -> list[str]:
    """The devices of every `raised` alert event in the event log (raised twice = listed twice)."""
    from carecard.host.paths import ingest_db_path
    from carecard.host.storage.sqlite import SQLiteEventLog

    with SQLiteEventLog(ingest_db_path(data_dir)) as log:
        events = [entry.event for entry in log.entries_after(0, 100_000)]
    return sorted(e["device"] for e in events if e.get("kind") == "alert" and e["data"]["details"]["step"] == "raised")


def _niceness(pid: int) -> set[int]:
    """The niceness of each thread of a process (Linux keeps one per thread)."""
    values = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        values.add(int(stat.read_text().rsplit(")", 1)[1].split()[16]))
    return values


def test_the_receivers_engine_runs_in_a_child_that_is_restarted_when_it_dies(tmp_path: Path) -> None:
    cards = [Card(d, k) for d, k in provision(tmp_path, 2).items()]
    config = _config(tmp_path)
    config.sinks = []  # the log keeps the alert events (nothing prunes them)
    client = udp_client()
    with ReceiverThread(config) as rt:
        engine = rt.receiver.engine
        assert engine.pid is not None and engine.pid != os.getpid()
        port = rt.receiver.udp_ports[0]
        assert exchange(client, port, _sos(cards[0])) is not None
        _sync(rt)
        assert _sos_alerts(tmp_path) == [(cards[0].device, "open")]
        # at a lower CPU priority than the receiver, every thread of it (acks come first)
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + ENGINE_CHILD_NICE)
        assert _niceness(engine.pid) == {expected}
        first = engine.pid
        os.kill(first, signal.SIGKILL)
        _until(lambda: engine.restarts == 1 and engine.up, "the engine's process restarted", timeout=30)
        assert engine.pid != first
        assert _niceness(engine.pid) == {expected}
        assert exchange(client, port, _sos(cards[1])) is not None
        _sync(rt)
        assert _sos_alerts(tmp_path) == sorted([(cards[0].device, "open"), (cards[1].device, "open")])
        # the child reports its state on a change (within STATS_POLL_S), not with its sync answer
        def engine_metrics() -> list[str]:
            return [line for line in rt.call(rt.receiver.metrics.render).splitlines() if "engine" in line]

        _until(lambda: "carecard_engine_active 1" in engine_metrics(), "the restarted engine active", timeout=30)
        assert "carecard_engine_process_restarts 1" in engine_metrics(), engine_metrics()
    # the restarted engine resumed from the last commit: the first SOS was not raised again
    assert _raised_events(tmp_path) == sorted(str(card.device) for card in cards)


class EngineCli:
    """`carecard engine` as a real subprocess; its JSON log lines collected as they come."""

    def __init__(self, config_file: Path, data_dir: Path, *args: str):
        import threading

        self.proc = subprocess.Popen([sys.executable, "-m", "carecard.host.cli", "engine", "--config",
                                      str(config_file), "--data", str(data_dir), "--log-format", "json",
                                      *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def logged(self, text: str) -> bool:
        return self.count(text) > 0

    def count(self, text: str) -> int:
        """Log lines holding `text`."""
        return sum(text in line for line in list(self.lines))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(20)
        self._reader.join(10)
        return code


def _lock_holder(data_dir: Path) -> int | None:
    try:
        text = (data_dir / "engine.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text else None


def test_carecard_engine_runs_alone_and_a_second_one_takes_over_when_the_first_dies(tmp_path: Path) -> None:
    cards = [Card(d, k) for d, k in provision(tmp_path, 2).items()]
    (tmp_path / "engine.toml").write_text(SETTINGS)
    config_file = tmp_path / "carecard.toml"
    config_file.write_text('sinks = []\n\n[engine]\nrun = "separately"\nsettings = "engine.toml"\n'
                           "poll_s = 0.05\n")
    config = load_config(config_file)
    config.udp = _config(tmp_path).udp
    config.data_dir = tmp_path
    client = udp_client()
    engines = [EngineCli(config_file, tmp_path)]
    try:
        with ReceiverThread(config) as rt:
            assert rt.receiver.engine is None  # not the receiver's child
            port = rt.receiver.udp_ports[0]
            active = _until(lambda: _lock_holder(tmp_path), "the first engine holds the lock", timeout=30)
            assert active == engines[0].pid
            engines.append(EngineCli(config_file, tmp_path))
            _until(lambda: engines[1].logged("standing by"), "the second engine standing by", timeout=30)
            assert exchange(client, port, _sos(cards[0])) is not None
            _until(lambda: _sos_alerts(tmp_path) == [(cards[0].device, "open")], "the first SOS alert", timeout=30)
            assert engines[0].stop(signal.SIGKILL) == -signal.SIGKILL
            assert exchange(client, port, _sos(cards[1])) is not None
            _until(lambda: len(_sos_alerts(tmp_path)) == 2, "the second SOS alert, from the second engine",
                   timeout=30)
            assert _lock_holder(tmp_path) == engines[1].pid
            assert engines[1].stop() == 0
            assert engines[1].logged("took the lock") and not engines[1].logged("Traceback")
    finally:
        for engine in engines:
            engine.stop(signal.SIGKILL)
    assert _raised_events(tmp_path) == sorted(str(card.device) for card in cards)


def test_carecard_engine_refuses_a_bad_settings_file_in_one_line(tmp_path: Path) -> None:
    provision(tmp_path, 1)
    bad = tmp_path / "engine.toml"
    bad.write_text('[defaults]\nstillness = "3h"\n')
    done = subprocess.run([sys.executable, "-m", "carecard.host.cli", "engine", "--data", str(tmp_path),
                           "--settings", str(bad)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "unknown key 'stillness'" in done.stderr, done.stderr
