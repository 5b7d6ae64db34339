"""Webhook sink against a real local HTTP server that fails on purpose: down at start, 500s for a
while, a timeout, a dropped connection, a 429, a poisoned event (400) and one that never gets
through (503): signatures check out with the documented algorithm, the two bad events are
dead-lettered, everything else arrives in order, nothing is lost."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.paths import ingest_db_path
from carecard.host.sinks import SinkSet
from carecard.host.sinks.webhook import sign, verify_signature

from brokers import FlakyHTTPServer, documented_signature, free_port
from eventgen import position_event, status_event

SECRET = "integrator-shared-secret-0001"
POISON, HOPELESS, SLOW, DROPPED, LIMITED = 13, 33, 20, 27, 40


def _event(n: int) -> dict[str, Any]:
    return position_event(n) if n % 3 else status_event(n)


def test_webhook_retries_dead_letters_and_keeps_order(tmp_path: Path) -> None:
    seen: dict[int, int] = {}
    lock = threading.Lock()

    def behaviour(number: int, event: dict[str, Any]) -> Any:
        counter = event["counter"]
        with lock:
            seen[counter] = seen.get(counter, 0) + 1
            tries = seen[counter]
        if number < 3:
            return 500  # the integrator's server is failing for a while
        if counter == POISON:
            return 400
        if counter == HOPELESS:
            return 503
        if counter == SLOW and tries == 1:
            return ("sleep", 0.6)  # the client times out at 0.3 s
        if counter == DROPPED and tries == 1:
            return "drop"
        if counter == LIMITED and tries == 1:
            return 429
        return 200

    port = free_port()
    dead = tmp_path / "dead.jsonl"
    writer = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))
    log = SQLiteEventLog(ingest_db_path(tmp_path))
    config = [{"type": "webhook", "url": f"http://127.0.0.1:{port}/hook?source=carecard", "secret": SECRET,
               "timeout": 0.3, "max_retries": 3, "dead_letter": str(dead), "retry_min": 0.01,
               "retry_max": 0.05, "batch_size": 8, "headers": {"X-Tenant": "village-7"}}]
    sinks = SinkSet.from_config(config, tmp_path, log)
    total = 60
    server: FlakyHTTPServer | None = None

    async def main() -> dict[str, Any]:
        nonlocal server
        await sinks.start()
        sinks.notify(SQLiteEventLog.append(writer, [_event(n) for n in range(1, 31)]))
        await asyncio.sleep(0.3)
        while_down = sinks.stats()["webhook"]
        server = FlakyHTTPServer(behaviour, port=port)  # the endpoint comes up
        for n in range(31, total + 1):
            sinks.notify(SQLiteEventLog.append(writer, [_event(n)]))
            await asyncio.sleep(0.005)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sinks.stats()["webhook"]["lag_events"]:
            await asyncio.sleep(0.02)
        await sinks.stop(2)
        return while_down

    try:
        while_down = asyncio.run(main())
    finally:
        if server is not None:
            server.close()
    assert server is not None

    # down at start: retried, nothing dead-lettered for an unreachable endpoint
    assert while_down["failures"] >= 1 and while_down["delivered"] == 0 and while_down["dead_lettered"] == 0

    accepted = [r["event"]["counter"] for r in server.accepted]
    expected = [n for n in range(1, total + 1) if n not in (POISON, HOPELESS)]
    assert list(dict.fromkeys(accepted)) == expected  # in order, none lost

    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [(d["event"]["counter"], d["status"], d["attempts"]) for d in letters] == [
        (POISON, 400, 1), (HOPELESS, 503, 4)]
    assert letters[0]["event"] == _event(POISON) and "HTTP 400" in letters[0]["reason"]
    assert all(n in accepted for n in (SLOW, DROPPED, LIMITED))
    stats = sinks.stats()["webhook"]
    assert stats["dead_lettered"] == 2 and stats["retries"] >= 8 and log.cursors()["webhook"] == total

    now = time.time()
    for request in server.requests:
        headers, body = request["headers"], request["body"]
        assert request["path"] == "/hook?source=carecard"
        assert headers["Content-Type"] == "application/json" and headers["X-Tenant"] == "village-7"
        assert headers["X-CareCard-Event-Id"] == request["event"]["id"]
        assert headers["X-CareCard-Schema"] == "1"
        stamp = headers["X-CareCard-Timestamp"]
        assert abs(now - int(stamp)) < 60
        assert headers["X-CareCard-Signature"] == documented_signature(SECRET, stamp, body)
    print(f"\nwebhook: {len(server.requests)} requests for {total} events, "
          f"{stats['retries']} retries, 2 dead-lettered")


def test_reference_verifier_rejects_forgeries_and_replays() -> None:
    body = json.dumps(status_event(1)).encode()
    stamp = str(int(time.time()))
    good = sign(SECRET, stamp, body)
    assert good == documented_signature(SECRET, stamp, body)
    assert verify_signature(SECRET, stamp, good, body)
    assert not verify_signature(SECRET, stamp, good, body + b" ")
    assert not verify_signature("another-secret-of-16+", stamp, good, body)
    old = str(int(time.time()) - 3600)
    assert not verify_signature(SECRET, old, sign(SECRET, old, body), body)  # a replay
    assert not verify_signature(SECRET, "not-a-number", good, body)
