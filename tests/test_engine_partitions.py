"""Engine partitions under leases on a real PostgreSQL (issue 19): two `carecard engine` workers
share the partitions of one store; one is killed with SIGKILL while alerts are due; the other
takes its partitions and every alert is raised once, none missed, within the SOS target. A
worker run alone serves Prometheus /metrics: the partitions it holds, their lease ages, cursors
and lag behind the log's head."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

from carecard.host.receiver.config import Endpoint, load_config
from carecard.host.receiver.registry import DeviceSpec, add_devices, make_imei
from carecard.host.receiver.service import ReceiverThread
from carecard.host.storage.postgresql import PostgreSQLEventLog, PostgreSQLStore
from carecard.host.timefmt import parse_iso_utc

from receiver_helpers import Card, exchange, key_for, udp_client
from test_receiver_metrics import scrape, scrape_until
from test_engine_process import EngineCli, _sos
from test_engine_receiver import SETTINGS, _until

PARTITIONS = 4


def _partitioned_engine(pg_cluster, tmp_path: Path, first_imei: int, count: int, engine: str):
    """A fresh PostgreSQL database with `count` registered cards (IMEIs from `first_imei`) and a
    receiver config whose engine runs separately with the `[engine]` lines given."""
    url = pg_cluster.new_database()
    devices = [make_imei(first_imei + i) for i in range(count)]
    store = PostgreSQLStore(url)
    try:
        add_devices(store, tmp_path, [DeviceSpec(d, f"card {i}", key_for(d)) for i, d in enumerate(devices)])
    finally:
        store.close()
    (tmp_path / "engine.toml").write_text(SETTINGS)
    config_file = tmp_path / "carecard.toml"
    config_file.write_text(f'sinks = []\n\n[receive]\nstore = "{url}"\n\n[engine]\nrun = "separately"\n'
                           f'settings = "engine.toml"\n{engine}')
    config = load_config(config_file)
    config.udp = [Endpoint("127.0.0.1", 0)]
    config.data_dir = tmp_path
    return url, devices, config_file, config


def _raised(url: str) -> list[tuple[str, float, str]]:
    """(device, raised at, the SOS event's id) of every SOS alert raised in the log."""
    with PostgreSQLEventLog(url) as log:
        events = [entry.event for entry in log.entries_after(0, 100_000)]
    return sorted((e["device"], parse_iso_utc(e["time"]), e["data"]["details"]["event"]) for e in events
                  if e.get("kind") == "alert" and e["data"]["alert"] == "sos" and e["data"]["details"]["step"] == "raised")


def _received(url: str) -> dict[str, float]:
    """The SOS frames' events by id: when the receiver got them."""
    with PostgreSQLEventLog(url) as log:
        events = [entry.event for entry in log.entries_after(0, 100_000)]
    return {e["id"]: parse_iso_utc(e["received_at"]) for e in events if e.get("kind") == "sos"}


def test_two_workers_share_the_partitions_and_one_takes_over_when_the_other_is_killed(pg_cluster, tmp_path: Path) -> None:
    url, devices, config_file, config = _partitioned_engine(pg_cluster, tmp_path, 86123456100000, 8,
                                                            f"poll_s = 0.3\npartitions = {PARTITIONS}\n")
    assert {d % PARTITIONS for d in devices} == set(range(PARTITIONS))
    cards = [Card(d, key_for(d)) for d in devices]
    workers = [EngineCli(config_file, tmp_path), EngineCli(config_file, tmp_path)]
    client = udp_client()
    try:
        with ReceiverThread(config) as rt:
            port = rt.receiver.udp_ports[0]
            _until(lambda: sum(w.count("lease taken") for w in workers) == PARTITIONS, "every partition leased",
                   timeout=30)
            held = [w.count("lease taken") for w in workers]
            for card in cards:
                assert exchange(client, port, _sos(card)) is not None
            _until(lambda: len(_raised(url)) == len(cards), "the first SOS of every card", timeout=30)
            # the worker with the most partitions dies while the second SOS of every card is due
            victim = workers[held.index(max(held))]
            survivor = workers[1 - workers.index(victim)]
            for card in cards[:4]:
                assert exchange(client, port, _sos(card)) is not None
            assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
            for card in cards[4:]:
                assert exchange(client, port, _sos(card)) is not None
            _until(lambda: len(_raised(url)) >= 2 * len(cards), "the second SOS of every card", timeout=60)
            time.sleep(1.0)  # a few more steps: a duplicate would show now
            assert survivor.count("lease taken") == PARTITIONS
            assert survivor.stop() == 0
    finally:
        for worker in workers:
            worker.stop(signal.SIGKILL)
    raised = _raised(url)
    received = _received(url)
    # every SOS frame raised exactly one alert (none twice, none missed) ...
    assert sorted(sos for _device, _at, sos in raised) == sorted(received)
    assert len(raised) == 2 * len(cards)
    # ... within the SOS target (60 s after the frame), the takeover included
    assert max(at - received[sos] for _device, at, sos in raised) <= 60


def _metrics_port(worker: EngineCli) -> int:
    _until(lambda: worker.logged("engine started"), "the engine started", timeout=30)
    started = next(json.loads(line) for line in list(worker.lines) if "engine started" in line)
    return int(started["metrics_port"])


def test_an_engine_worker_run_alone_serves_its_partitions_leases_and_lag_at_metrics(pg_cluster, tmp_path: Path) -> None:
    url, devices, config_file, config = _partitioned_engine(pg_cluster, tmp_path, 86123456300000, 4,
                                                            "poll_s = 0.2\npartitions = 2\n")
    names = ["engine-0-of-2", "engine-1-of-2"]
    worker = EngineCli(config_file, tmp_path, "--metrics", "127.0.0.1:0")
    client = udp_client()
    try:
        port = _metrics_port(worker)
        held = scrape_until(port, lambda s: s.get("carecard_engine_partitions_held") == 2, "both partitions held")
        assert held["carecard_engine_active"] == 1
        for name in names:
            assert held[f'carecard_engine_partition_held{{partition="{name}"}}'] == 1
            assert held[f'carecard_engine_lease_age_seconds{{partition="{name}"}}'] >= 0
        assert "carecard_frames_received_total" not in " ".join(held)  # an engine, not a receiver
        with ReceiverThread(config) as rt:
            for device in devices:
                assert exchange(client, rt.receiver.udp_ports[0], _sos(Card(device, key_for(device)))) is not None
            with PostgreSQLEventLog(url) as log:
                frames_head = log.last_seq()

            def caught_up(samples: dict[str, float]) -> bool:
                return all(samples.get(f'carecard_engine_partition_cursor{{partition="{name}"}}', 0) >= frames_head
                           and samples.get(f'carecard_engine_lag_events{{partition="{name}"}}') == 0
                           for name in names)

            samples = scrape_until(port, caught_up, "both partitions caught up with the log")
        assert samples["carecard_engine_alert_events"] >= len(devices)  # an SOS alert raised per card
        assert samples["carecard_engine_cursor"] >= frames_head
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
        assert health == b"ok\n"
    finally:
        client.close()
        code = worker.stop()
    assert code == 0


def _held(port: int) -> float:
    return scrape(port).get("carecard_engine_partitions_held", -1)


def test_a_worker_joining_later_gets_its_fair_share_and_a_hung_workers_partitions_move_after_its_lease(
        pg_cluster, tmp_path: Path) -> None:
    """Worker A holds all 4 partitions alone; B starts and they split them 2 and 2. B then hangs
    (SIGSTOP: its database sessions live on, it renews nothing): after its lease A takes its
    partitions and raises the SOS alerts due there, each once. B resumes: it has lost its leases,
    stands by, and gets its share back; no alert is raised twice."""
    url, devices, config_file, config = _partitioned_engine(pg_cluster, tmp_path, 86123456400000, 8,
                                                            f"poll_s = 0.2\nlease_s = 2\npartitions = {PARTITIONS}\n")
    assert {d % PARTITIONS for d in devices} == set(range(PARTITIONS))
    cards = [Card(d, key_for(d)) for d in devices]
    a = EngineCli(config_file, tmp_path, "--metrics", "127.0.0.1:0")
    workers = [a]
    client = udp_client()
    try:
        a_port = _metrics_port(a)
        _until(lambda: _held(a_port) == PARTITIONS, "A holds every partition", timeout=30)
        b = EngineCli(config_file, tmp_path, "--metrics", "127.0.0.1:0")
        workers.append(b)
        b_port = _metrics_port(b)
        _until(lambda: _held(a_port) == 2 and _held(b_port) == 2, "A and B hold 2 partitions each", timeout=30)
        assert a.logged("lease handed over")

        b.proc.send_signal(signal.SIGSTOP)  # hung: its connections stay open
        with ReceiverThread(config) as rt:
            for card in cards:
                assert exchange(client, rt.receiver.udp_ports[0], _sos(card)) is not None
            _until(lambda: len(_raised(url)) == len(cards), "an SOS alert for every card, B hung", timeout=60)
            assert _held(a_port) == PARTITIONS
            b.proc.send_signal(signal.SIGCONT)
            _until(lambda: _held(a_port) == 2 and _held(b_port) == 2, "B's share back after it resumed",
                   timeout=30)
            for card in cards:
                assert exchange(client, rt.receiver.udp_ports[0], _sos(card)) is not None
            _until(lambda: len(_raised(url)) >= 2 * len(cards), "the second SOS of every card", timeout=60)
            time.sleep(1.0)  # a few more steps of both: a duplicate would show now
        raised = _raised(url)
        assert len(raised) == 2 * len(cards)
        assert len({event for _d, _t, event in raised}) == len(raised)  # each SOS raised once
        for worker in workers:
            assert worker.stop() == 0
    finally:
        client.close()
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGCONT)
                worker.stop(signal.SIGKILL)
