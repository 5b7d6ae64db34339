"""MQTT sink against a real mosquitto and a real paho subscriber: QoS 1, documented topics, the
broker down at start and stopped mid-stream, nothing lost, order kept."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.events import alert_event
from carecard.host.paths import ingest_db_path
from carecard.host.sinks import SinkSet
from carecard.host.sinks.mqtt import event_topic

from brokers import Mosquitto, Subscriber
from eventgen import DEVICE, T0, position_event, status_event


@pytest.fixture
def broker(tmp_path: Path):  # noqa: ANN201
    mosq = Mosquitto(tmp_path)
    yield mosq
    mosq.close()


def _event(n: int) -> dict[str, Any]:
    if n % 25 == 0:
        return alert_event(DEVICE, "inactivity", {"n": n}, T0 + n)
    return position_event(n) if n % 2 else status_event(n)


def test_qos1_in_order_through_broker_outages(tmp_path: Path, broker: Mosquitto) -> None:
    writer = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))
    log = SQLiteEventLog(ingest_db_path(tmp_path))
    config = [{"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "batch_size": 20,
               "reconnect_min": 0.1, "reconnect_max": 0.5, "publish_timeout": 3,
               "retry_min": 0.05, "retry_max": 0.3}]
    sinks = SinkSet.from_config(config, tmp_path, log)
    total = 400
    expected = [_event(n)["id"] for n in range(1, total + 1)]
    subscriber: Subscriber | None = None
    outage: dict[str, Any] = {}

    async def main() -> dict[str, Any]:
        nonlocal subscriber
        await sinks.start()  # the broker is not running yet: the sink waits and retries
        sinks.notify(SQLiteEventLog.append(writer, [_event(n) for n in range(1, 51)]))
        await asyncio.sleep(0.8)
        down_at_start = sinks.stats()["mqtt"]
        broker.start()
        subscriber = Subscriber(broker.port, "carecard/v1/#")
        # the first 50 were published before the subscriber existed only if the sink got there
        # first; publish the rest as a stream and cut the broker in the middle of it
        for n in range(51, total + 1):
            if 201 <= n < 260:
                continue  # appended during the outage, below
            sinks.notify(SQLiteEventLog.append(writer, [_event(n)]))
            if n == 200:
                broker.stop()
                outage["stopped_with"] = len(subscriber.messages)
                for m in range(201, 260):
                    sinks.notify(SQLiteEventLog.append(writer, [_event(m)]))
                await asyncio.sleep(0.4)
                outage["during"] = sinks.stats()["mqtt"]
                broker.start()
            await asyncio.sleep(0.002)
        ids = lambda msgs: {m[1]["id"] for m in msgs}  # noqa: E731
        await asyncio.get_running_loop().run_in_executor(
            None, subscriber.wait_for, lambda msgs: set(expected) - {i for i in ids(msgs)} <= set(expected[:50]), 20)
        await sinks.stop(drain_timeout=5)
        return down_at_start

    try:
        down_at_start = asyncio.run(main())
        assert subscriber is not None
        messages = list(subscriber.messages)
    finally:
        if subscriber is not None:
            subscriber.close()

    assert down_at_start["failures"] >= 1 and down_at_start["delivered"] == 0
    assert down_at_start["connected"] is False
    assert outage["during"]["connected"] is False and outage["during"]["lag_events"] > 0
    got = [m[1]["id"] for m in messages]
    first_seen = list(dict.fromkeys(got))
    # Events 1-50 went out once the broker was up; the subscriber may have missed those published
    # before it subscribed: from the first one it saw, everything arrives, in log order.
    start = expected.index(first_seen[0])
    assert start <= 50 and first_seen == expected[start:]
    for topic, event in messages:
        assert topic == event_topic("carecard/v1", event)
        if event["kind"] == "alert":
            assert topic == f"carecard/v1/{DEVICE}/alert/inactivity"
    assert log.cursors()["mqtt"] == total
    print(f"\nMQTT: {len(first_seen)} events seen by the subscriber, {len(got) - len(first_seen)} "
          f"duplicates after the broker restart; {outage['during']['lag_events']} events waited in the "
          f"log during the outage")


def test_every_event_reaches_a_subscriber_that_was_there_first(tmp_path: Path, broker: Mosquitto) -> None:
    """With the subscriber connected before anything is published, not one event is missing,
    and deliver() returned only after the broker's PUBACK (the cursor moved only then)."""
    broker.start()
    subscriber = Subscriber(broker.port, "carecard/v1/+/status", client_id="status-only")
    writer = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))
    log = SQLiteEventLog(ingest_db_path(tmp_path))
    config = [{"type": "mqtt", "name": "bus", "port": broker.port, "host": "127.0.0.1",
               "retry_min": 0.05, "retry_max": 0.2}]
    sinks = SinkSet.from_config(config, tmp_path, log)
    SQLiteEventLog.append(writer, [status_event(n) for n in range(1, 301)])

    async def main() -> None:
        await sinks.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sinks.stats()["bus"]["lag_events"]:
            await asyncio.sleep(0.01)
        await sinks.stop(2)

    try:
        asyncio.run(main())
        assert subscriber.wait_for(lambda msgs: len(msgs) >= 300, 10)
        assert [m[1]["id"] for m in subscriber.messages] == [status_event(n)["id"] for n in range(1, 301)]
        assert sinks.stats()["bus"]["published"] == 300
    finally:
        subscriber.close()
