"""NATS JetStream sink against real nats-server processes (Debian's package) on loopback: a
three-node cluster with the stream replicated on all three and its leader SIGKILLed mid-stream,
read back by a durable consumer; the stream's de-duplication on the event id; poison events to
the dead-letter file; a missing or mismatched stream; configuration errors."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.api
import pytest

from carecard.host.events import alert_event
from carecard.host.paths import ingest_db_path
from carecard.host.sinks import ConfigError, SinkSet
from carecard.host.sinks.nats_jetstream import event_subject, subject_covers
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog

from eventgen import DEVICE, T0, position_event, status_event
from nats_cluster import NatsCluster

STREAM = "CARECARD"
FAST = {"retry_min": 0.05, "retry_max": 0.5, "reconnect_wait": 0.1, "connect_timeout": 1}


def _event(n: int) -> dict[str, Any]:
    if n % 25 == 0:
        return alert_event(DEVICE, "inactivity", {"n": n}, T0 + n)
    return position_event(n) if n % 2 else status_event(n)


@pytest.fixture
def single(tmp_path: Path):  # noqa: ANN201
    cluster = NatsCluster(tmp_path / "nats", 1, max_payload=4096).start()
    yield cluster
    cluster.stop()


def _logs(tmp_path: Path) -> tuple[Any, SQLiteEventLog]:
    return SQLiteEventLog.connect_writer(ingest_db_path(tmp_path)), SQLiteEventLog(ingest_db_path(tmp_path))


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def _drain_consumer(servers: list[str], durable: str, want: int, timeout: float,
                          subject: str = "carecard.v1.>") -> list[tuple[int, int, str, dict[str, Any]]]:
    """(stream seq, times delivered, subject, event) of every message a durable pull consumer
    gets until `want` distinct stream messages were seen or `timeout` ran out; each acked."""
    nc = await nats.connect(servers=servers, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        js = nc.jetstream(timeout=2)
        deadline = time.monotonic() + timeout
        while True:  # the cluster may be electing a leader: a backend retries too
            try:
                psub = await js.pull_subscribe(subject, durable=durable, stream=STREAM)
                break
            except (nats.errors.Error, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        seen: list[tuple[int, int, str, dict[str, Any]]] = []
        while len({s[0] for s in seen}) < want and time.monotonic() < deadline:
            try:
                messages = await psub.fetch(200, timeout=0.5)
            except (nats.errors.Error, asyncio.TimeoutError):
                continue
            for msg in messages:
                meta = msg.metadata
                event = json.loads(msg.data)
                assert msg.headers and msg.headers.get("Nats-Msg-Id") == event["id"]
                seen.append((meta.sequence.stream, meta.num_delivered, msg.subject, event))
                await msg.ack()
        return seen
    finally:
        await nc.close()


async def _stream_info(servers: list[str]) -> Any:
    nc = await nats.connect(servers=servers)
    try:
        return await nc.jetstream().stream_info(STREAM)
    finally:
        await nc.close()


def test_no_event_lost_or_doubled_when_the_stream_leader_of_a_three_node_cluster_is_killed(
        tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "nats", 3).start()
    writer, log = _logs(tmp_path)
    config = [{"type": "nats", "servers": cluster.urls, "replicas": 3, "batch_size": 50,
               "publish_timeout": 2, **FAST}]
    sinks = SinkSet.from_config(config, tmp_path, log)
    total, kill_at = 600, 200
    expected = [_event(n)["id"] for n in range(1, total + 1)]
    report: dict[str, Any] = {}

    async def main() -> list[tuple[int, int, str, dict[str, Any]]]:
        await sinks.start()
        sinks.notify(SQLiteEventLog.append(writer, [_event(n) for n in range(1, 101)]))
        await _until(lambda: sinks.stats()["nats"]["cursor"] == 100, 30, "the first 100 events")
        info = await _stream_info(cluster.urls)
        assert info.config.num_replicas == 3 and info.cluster.leader
        report["leader"] = leader = info.cluster.leader
        # the backend's durable consumer reads while the sink publishes and the leader dies
        consumer = asyncio.create_task(_drain_consumer(cluster.urls, "backend", total, 60))
        for n in range(101, total + 1):
            sinks.notify(SQLiteEventLog.append(writer, [_event(n)]))
            if n == kill_at:
                await asyncio.get_running_loop().run_in_executor(None, cluster.node(leader).kill)
            await asyncio.sleep(0.003)
        await _until(lambda: sinks.stats()["nats"]["cursor"] == total, 60, "every event in the stream")
        report["sink"] = sinks.stats()["nats"]
        seen = await consumer
        await sinks.stop(drain_timeout=5)
        report["stream"] = (await _stream_info(cluster.urls)).state
        report["new_leader"] = (await _stream_info(cluster.urls)).cluster.leader
        return seen

    try:
        seen = asyncio.run(main())
    finally:
        cluster.stop()

    stats = report["sink"]
    # the kill happened mid-stream: publications failed and were retried
    assert stats["failures"] >= 1 and stats["published"] >= total
    assert report["new_leader"] != report["leader"]
    seqs_of: dict[str, set[int]] = {}
    for seq, _, subject, event in seen:
        seqs_of.setdefault(event["id"], set()).add(seq)
        assert subject == event_subject("carecard.v1", event)
    # no event lost, none stored twice (a redelivery of an unacked message has the same stream seq)
    assert set(seqs_of) == set(expected)
    assert all(len(seqs) == 1 for seqs in seqs_of.values())
    assert report["stream"].messages == total
    assert log.cursors()["nats"] == total
    redelivered = sum(1 for s in seen if s[1] > 1)
    print(f"\nNATS R3, leader {report['leader']} killed at event {kill_at} (new leader "
          f"{report['new_leader']}): {total} events, {stats['failures']} failed deliveries retried, "
          f"{stats['duplicates']} re-publications dropped by the stream, {redelivered} consumer "
          f"redeliveries, stream holds {report['stream'].messages}")


def test_events_published_again_are_stored_once_and_subjects_follow_kind_and_device(
        tmp_path: Path, single: NatsCluster) -> None:
    """A receiver that died before saving its cursor publishes the same events again: the
    stream keeps one copy of each (Nats-Msg-Id = event id)."""
    writer, log = _logs(tmp_path)
    config = [{"type": "nats", "name": "bus", "servers": single.urls[0].removeprefix("nats://"),
               "subject_prefix": "county.carecard", **FAST}]
    SQLiteEventLog.append(writer, [_event(n) for n in range(1, 101)])

    async def run_once() -> dict[str, Any]:
        sinks = SinkSet.from_config(config, tmp_path, log)
        await sinks.start()
        await _until(lambda: sinks.stats()["bus"]["cursor"] == 100, 20, "100 events delivered")
        stats = sinks.stats()["bus"]
        await sinks.stop(2)
        return stats

    async def main() -> tuple[dict[str, Any], dict[str, Any], Any, list[Any]]:
        first = await run_once()
        log.save_cursor("bus", 0)  # the cursor save was lost
        second = await run_once()
        info = await _stream_info(single.urls)
        alerts = await _drain_consumer(single.urls, "alerts", 4, 10, "county.carecard.*.alert.>")
        return first, second, info, alerts

    first, second, info, alerts = asyncio.run(main())
    assert first["published"] == 100 and first["duplicates"] == 0
    assert second["published"] == 100 and second["duplicates"] == 100
    assert info.state.messages == 100 and info.config.subjects == ["county.carecard.>"]
    assert [a[3]["id"] for a in alerts] == [_event(n)["id"] for n in (25, 50, 75, 100)]
    assert {a[2] for a in alerts} == {f"county.carecard.{DEVICE}.alert.inactivity"}


def test_an_event_too_large_for_the_server_is_dead_lettered_and_the_rest_delivered(
        tmp_path: Path, single: NatsCluster) -> None:
    writer, log = _logs(tmp_path)
    big = alert_event(DEVICE, "inactivity", {"note": "x" * 6000}, T0 + 7)
    events = [_event(1), _event(2), big, _event(3)]
    SQLiteEventLog.append(writer, events)
    sinks = SinkSet.from_config([{"type": "nats", "servers": single.urls, **FAST}], tmp_path, log)

    async def main() -> dict[str, Any]:
        await sinks.start()
        await _until(lambda: sinks.stats()["nats"]["cursor"] == 4, 20, "4 events handled")
        stats = sinks.stats()["nats"]
        await sinks.stop(2)
        return stats

    stats = asyncio.run(main())
    assert stats["published"] == 3 and stats["dead_lettered"] == 1
    records = [json.loads(line) for line in (tmp_path / "nats.deadletter.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["event"]["id"] == big["id"]
    assert records[0]["reason"] == "larger than the server's max_payload"
    assert records[0]["subject"] == f"carecard.v1.{DEVICE}.alert.inactivity"
    seen = asyncio.run(_drain_consumer(single.urls, "backend", 3, 10))
    assert [s[3]["id"] for s in seen] == [e["id"] for e in events if e is not big]


def test_a_missing_or_mismatched_stream_holds_events_back_with_a_clear_error(
        tmp_path: Path, single: NatsCluster) -> None:
    writer, log = _logs(tmp_path)
    SQLiteEventLog.append(writer, [_event(n) for n in range(1, 11)])
    config = [{"type": "nats", "servers": single.urls, "create_stream": False, **FAST}]
    sinks = SinkSet.from_config(config, tmp_path, log)
    errors: list[str] = []

    async def main() -> dict[str, Any]:
        await sinks.start()
        await _until(lambda: sinks.stats()["nats"]["failures"] >= 1, 10, "a failed start")
        errors.append(sinks.stats()["nats"]["last_error"])
        nc = await nats.connect(servers=single.urls)
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=["other.>"])
        await _until(lambda: "takes subjects" in (sinks.stats()["nats"]["last_error"] or ""), 10,
                     "the mismatch reported")
        errors.append(sinks.stats()["nats"]["last_error"])
        assert sinks.stats()["nats"]["cursor"] == 0
        await js.update_stream(name=STREAM, subjects=["other.>", "carecard.>"])
        await _until(lambda: sinks.stats()["nats"]["cursor"] == 10, 20, "delivery once the stream fits")
        await nc.close()
        stats = sinks.stats()["nats"]
        await sinks.stop(2)
        return stats

    stats = asyncio.run(main())
    assert "JetStream stream 'CARECARD' does not exist: create it with subjects 'carecard.v1.>'" in errors[0]
    assert "takes subjects ['other.>'], not 'carecard.v1.>'" in errors[1]
    assert stats["published"] == 10


def test_a_sink_with_no_server_up_retries_without_losing_anything(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "nats", 1)
    cluster.nodes[0].write_config()
    writer, log = _logs(tmp_path)
    SQLiteEventLog.append(writer, [_event(n) for n in range(1, 21)])
    sinks = SinkSet.from_config([{"type": "nats", "servers": cluster.urls, **FAST}], tmp_path, log)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        await sinks.start()
        await _until(lambda: sinks.stats()["nats"]["failures"] >= 2, 10, "failed connection attempts")
        down = sinks.stats()["nats"]
        cluster.nodes[0].start()
        await asyncio.get_running_loop().run_in_executor(None, cluster.wait_ready)
        await _until(lambda: sinks.stats()["nats"]["cursor"] == 20, 20, "delivery once NATS is up")
        up = sinks.stats()["nats"]
        await sinks.stop(2)
        return down, up

    try:
        down, up = asyncio.run(main())
    finally:
        cluster.stop()
    assert down["cursor"] == 0 and down["connected"] is False
    assert "cannot connect" in down["last_error"] and cluster.urls[0] in down["last_error"]
    assert up["published"] == 20 and up["connected"] is True


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"servers": "http://nats.example"}, "servers", "expected nats://HOST:PORT or tls://HOST:PORT"),
    ({"servers": []}, "servers", "expected a URL or a list of URLs"),
    ({"servers": ["nats://a:4222", 7]}, "servers", "expected a URL, got 7"),
    ({"servers": "nats://a:99999"}, "servers", "Port out of range"),
    ({"subject_prefix": "carecard.*"}, "subject_prefix", "no wildcards"),
    ({"subject_prefix": "carecard..v1"}, "subject_prefix", "no empty token"),
    ({"stream": "care.card"}, "stream", "a JetStream stream name is 1-64 letters"),
    ({"replicas": 7}, "replicas", "expected an integer in 1..5"),
    ({"storage": "disk"}, "storage", "'disk' is not one of file, memory"),
    ({"password": "secret"}, "password", "given without a username"),
    ({"username": "u", "token": "t"}, "token", "either a token or a username and password"),
    ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "ca_file", "no such file"),
    ({"subject": "x"}, "subject", "unknown key"),
])
def test_configuration_errors_name_the_key_and_the_fix(tmp_path: Path, table: dict[str, Any], key: str,
                                                      words: str) -> None:
    _, log = _logs(tmp_path)
    with pytest.raises(ConfigError) as caught:
        SinkSet.from_config([{"type": "nats", **table}], tmp_path, log)
    message = str(caught.value)
    assert message.startswith('sinks[0] (type "nats")') and f"key {key!r}" in message
    assert words in message


def test_subject_matching_of_stream_subjects() -> None:
    assert subject_covers(">", "carecard.v1.>")
    assert subject_covers("carecard.>", "carecard.v1.>")
    assert subject_covers("carecard.v1.>", "carecard.v1.>")
    assert subject_covers("*.v1.>", "carecard.v1.>")
    assert not subject_covers("carecard.v1.*", "carecard.v1.>")
    assert not subject_covers("carecard.v2.>", "carecard.v1.>")
    assert not subject_covers("carecard.v1.>", "carecard.>")
    assert not subject_covers("carecard", "carecard.v1.>")
    event = dict(_event(2), device="86 12.34*")
    assert event_subject("p", event) == "p.86_12_34_.status"
