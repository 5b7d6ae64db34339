"""Sink runners: a sink that is down while events keep coming loses nothing and catches up in
order; ingest appends are never held up; cursors survive SIGKILL; configuration errors are typed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.paths import events_db_path, ingest_db_path
from carecard.host.sinks import ConfigError, Sink, SinkError, SinkSet, SinkUnavailable
from carecard.host.sinks.base import SinkTable, backoff_delay

from eventgen import position_event, status_event

FAST = {"retry_min": 0.01, "retry_max": 0.05}


class GateSink(Sink):
    """A test sink with a switch: while `down`, every delivery fails; `slow` adds a delay."""

    type_name = "gate"

    def __init__(self, name: str = "gate"):
        super().__init__(name)
        self.down = False
        self.slow = 0.0
        self.partial: int | None = None
        self.received: list[str] = []
        self.attempts = 0

    @classmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "GateSink":
        return cls(name)

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        self.attempts += 1
        if self.slow:
            await asyncio.sleep(self.slow)
        if self.partial is not None:
            n, self.partial = self.partial, None
            self.received += [e["id"] for e in events[:n]]
            raise SinkError("half way", delivered=n)
        if self.down:
            raise SinkUnavailable("gate closed")
        self.received += [e["id"] for e in events]


def _sinkset(tmp_path: Path, config: list[dict[str, Any]], gate: GateSink | None = None,
             **runner_opts: Any) -> tuple[SinkSet, SQLiteEventLog, sqlite3.Connection]:
    writer = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))
    log = SQLiteEventLog(ingest_db_path(tmp_path))
    sinks = SinkSet.from_config(config, tmp_path, log)
    if gate is not None:
        from carecard.host.sinks.base import SinkRunner
        opts = {"batch_size": 20, "queue_size": 50, **FAST, **runner_opts}
        sinks.runners.append(SinkRunner(gate, log, sinks._io, cursor_executor=sinks._cursor_io, **opts))
    return sinks, log, writer


def _ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


def test_down_sink_loses_nothing_and_never_blocks_ingest(tmp_path: Path) -> None:
    gate = GateSink()
    jsonl = tmp_path / "out.jsonl"
    config = [{"type": "sqlite", **FAST}, {"type": "jsonl", "path": str(jsonl), "queue_size": 64, **FAST}]
    sinks, log, writer = _sinkset(tmp_path, config, gate)
    total, per_batch = 3000, 10
    latencies: list[float] = []

    async def ingest() -> None:
        for start in range(1, total + 1, per_batch):
            began = time.perf_counter()
            writer.execute("BEGIN IMMEDIATE")
            head = SQLiteEventLog.append(writer, [position_event(n) for n in range(start, start + per_batch)])
            writer.execute("COMMIT")
            latencies.append(time.perf_counter() - began)
            sinks.notify(head)
            if start > total // 3 and gate.down:
                gate.down = False  # the sink comes back while events keep coming
            await asyncio.sleep(0.001)

    async def main() -> dict[str, Any]:
        gate.down = True
        await sinks.start()
        await ingest()
        backlog = sinks.stats()["gate"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(s["lag_events"] for s in sinks.stats().values()):
            await asyncio.sleep(0.02)
        await sinks.stop(drain_timeout=5)
        return backlog

    backlog = asyncio.run(main())
    expected = [position_event(n)["id"] for n in range(1, total + 1)]
    assert gate.received == expected  # in order, none lost, none twice
    assert gate.attempts > len(expected) // 20  # it really was refused for a while
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert _ids(lines) == expected
    store = sqlite3.connect(events_db_path(tmp_path))
    assert store.execute("SELECT COUNT(*) FROM events").fetchone()[0] == total
    assert store.execute("SELECT COUNT(*) FROM positions").fetchone()[0] == total
    assert log.cursors() == {"sqlite": total, "jsonl": total, "gate": total}
    assert backlog["queue_depth"] <= backlog["queue_max"] == 50  # bounded: the rest stayed on disk
    latencies.sort()
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[int(len(latencies) * 0.99)] * 1e3
    print(f"\nappend+commit of {per_batch} events with 3 sinks running, one down: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {latencies[-1] * 1e3:.2f} ms "
          f"({len(latencies)} commits)")


def test_jsonl_lines_are_the_logs_json_and_batch_defaults_by_type(tmp_path: Path) -> None:
    """The JSON lines sink writes the log's own text of each event (not encoded again): the same
    bytes as encoding the event, non-ASCII text included. The SQLite sink's default batches are
    larger than the others'."""
    from carecard.host.events import event_from_message, event_json

    from eventgen import DEVICE, T0

    call = {"type": "call", "direction": "uplink", "device": DEVICE, "counter": 3, "time": T0,
            "clock_synced": True, "key": 2, "number": "+8613800138000 王奶奶的儿子 \u2028\"q\"",
            "outcome": "confirmed", "ring_s": 4, "talk_s": 61}
    events = [position_event(1), status_event(2), event_from_message(call, T0 + 0.5)]
    out = tmp_path / "out.jsonl"
    sinks, log, writer = _sinkset(tmp_path, [{"type": "jsonl", "path": str(out)}, {"type": "sqlite"}])
    SQLiteEventLog.append(writer, events)

    async def run() -> None:
        await sinks.start()
        await sinks.stop(drain_timeout=5)

    asyncio.run(run())
    assert out.read_text(encoding="utf-8").split("\n") == [event_json(e) for e in events] + [""]
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n")[:-1]] == events
    assert (sinks.runner("sqlite").batch_size, sinks.runner("jsonl").batch_size) == (10000, 100)
    assert (sinks.runner("sqlite").linger, sinks.runner("jsonl").linger) == (1.0, 0.0)
    assert sinks.runner("sqlite").queue_size >= sinks.runner("sqlite").batch_size


def test_slow_sink_keeps_a_bounded_queue_and_others_go_on(tmp_path: Path) -> None:
    gate = GateSink()
    gate.slow = 0.05
    jsonl = tmp_path / "fast.jsonl"
    sinks, log, writer = _sinkset(tmp_path, [{"type": "jsonl", "path": str(jsonl), **FAST}], gate,
                                  queue_size=30, batch_size=10)

    async def main() -> dict[str, Any]:
        await sinks.start()
        for start in range(1, 501, 50):
            sinks.notify(SQLiteEventLog.append(writer, [status_event(n) for n in range(start, start + 50)]))
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sinks.stats()["jsonl"]["lag_events"]:
            await asyncio.sleep(0.01)
        stats = sinks.stats()
        gate.slow = 0
        await sinks.stop(drain_timeout=10)
        return stats

    stats = asyncio.run(main())
    assert stats["jsonl"]["lag_events"] == 0 and stats["jsonl"]["delivered"] == 500
    assert stats["gate"]["lag_events"] > 0 and stats["gate"]["queue_depth"] <= 30
    assert stats["gate"]["lag_seconds"] > 0
    assert gate.received == [status_event(n)["id"] for n in range(1, 501)]


def test_partial_delivery_advances_the_cursor(tmp_path: Path) -> None:
    gate = GateSink()
    gate.partial = 7
    sinks, log, writer = _sinkset(tmp_path, [], gate)
    SQLiteEventLog.append(writer, [status_event(n) for n in range(1, 31)])

    async def main() -> None:
        await sinks.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sinks.stats()["gate"]["lag_events"]:
            await asyncio.sleep(0.01)
        await sinks.stop(1)

    asyncio.run(main())
    assert gate.received == [status_event(n)["id"] for n in range(1, 31)]
    assert sinks.stats()["gate"]["failures"] == 1


def test_linger_gathers_a_trickle_full_batches_go_at_once_and_stop_never_waits(tmp_path: Path) -> None:
    """With a linger, events arriving one by one are delivered together, once the log has been
    quiet a moment or the oldest has waited the linger; a full batch goes at once; stopping
    delivers what is queued without waiting."""
    gate = GateSink()
    sinks, log, writer = _sinkset(tmp_path, [], gate, linger=0.3)
    slow = GateSink("slow")
    from carecard.host.sinks.base import SinkRunner
    sinks.runners.append(SinkRunner(slow, log, sinks._io, cursor_executor=sinks._cursor_io,
                                    batch_size=20, queue_size=50, linger=60.0, **FAST))

    async def until(check: Any) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not check():
            await asyncio.sleep(0.01)

    async def main() -> tuple[int, int, float]:
        await sinks.start()
        for n in range(1, 6):  # a trickle, well within the first event's linger
            sinks.notify(SQLiteEventLog.append(writer, [status_event(n)]))
            await asyncio.sleep(0.01)
        trickle_attempts = gate.attempts  # nothing delivered yet: the batch lingers
        await until(lambda: len(gate.received) == 5)
        sinks.notify(SQLiteEventLog.append(writer, [status_event(n) for n in range(6, 26)]))  # 20: full
        await until(lambda: len(slow.received) >= 20)
        full_batch = len(slow.received)  # the 60 s linger did not hold a full batch
        # the 5 left in "slow" go once the log has been quiet a moment, not after 60 s
        quiet_started = time.monotonic()
        await until(lambda: len(slow.received) == 25)
        quiet_seconds = time.monotonic() - quiet_started
        sinks.notify(SQLiteEventLog.append(writer, [status_event(26)]))
        started = time.monotonic()
        await sinks.stop(drain_timeout=5)  # one event just appended, lingering: delivered now
        return trickle_attempts, full_batch, quiet_seconds, time.monotonic() - started

    trickle_attempts, full_batch, quiet_seconds, stop_seconds = asyncio.run(main())
    assert trickle_attempts == 0
    assert gate.received[:5] == [status_event(n)["id"] for n in range(1, 6)]
    assert gate.attempts <= 4  # the trickle of 5 went out together (then the burst, then 26)
    assert full_batch >= 20 and quiet_seconds < 5
    assert slow.received == [status_event(n)["id"] for n in range(1, 27)]
    assert stop_seconds < 5
    assert log.cursors() == {"gate": 26, "slow": 26}


def test_a_lingering_batch_goes_at_once_when_the_writer_says_it_is_idle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """notify(idle=True): the writer has nothing more coming, so a batch lingering for more events
    goes now; events logged after that point linger again."""
    import carecard.host.sinks.base as base

    monkeypatch.setattr(base, "LINGER_QUIET_S", 60.0)  # only the idle hint can end these waits
    gate = GateSink()
    sinks, log, writer = _sinkset(tmp_path, [], gate, linger=60.0)

    async def main() -> tuple[int, int, list[int]]:
        await sinks.start()
        sinks.notify(SQLiteEventLog.append(writer, [status_event(n) for n in range(1, 4)]))
        await asyncio.sleep(0.3)
        lingering = len(gate.received)
        sinks.notify(SQLiteEventLog.append(writer, [status_event(n) for n in range(4, 6)]), idle=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(gate.received) < 5:
            await asyncio.sleep(0.01)
        attempts = gate.attempts
        sinks.notify(SQLiteEventLog.append(writer, [status_event(6)]))  # after the idle point: lingers
        await asyncio.sleep(0.3)
        later = [len(gate.received)]
        await sinks.stop(drain_timeout=5)
        return lingering, attempts, later

    lingering, attempts, later = asyncio.run(main())
    assert lingering == 0
    assert attempts == 1  # the five went together
    assert later == [5]
    assert gate.received == [status_event(n)["id"] for n in range(1, 7)]


def test_stop_with_a_dead_sink_is_bounded_and_leaves_other_tasks_alone(tmp_path: Path) -> None:
    gate = GateSink()
    gate.down = True
    sinks, log, writer = _sinkset(tmp_path, [{"type": "sqlite", **FAST}], gate)
    SQLiteEventLog.append(writer, [status_event(n) for n in range(1, 101)])

    async def main() -> tuple[float, bool]:
        bystander = asyncio.create_task(asyncio.sleep(30))
        await sinks.start()
        await asyncio.sleep(0.2)
        began = time.monotonic()
        await sinks.stop(drain_timeout=0.3)
        took = time.monotonic() - began
        alive = not bystander.done()
        bystander.cancel()
        return took, alive

    took, alive = asyncio.run(main())
    assert alive and took < 3
    assert log.cursors() == {"sqlite": 100, "gate": 0}
    assert sinks.stats()["gate"]["state"] == "stopped"


def test_restart_resumes_from_the_cursor(tmp_path: Path) -> None:
    jsonl = tmp_path / "out.jsonl"
    config = [{"type": "jsonl", "path": str(jsonl), **FAST}]
    writer = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))
    SQLiteEventLog.append(writer, [status_event(n) for n in range(1, 51)])

    async def run_once() -> None:
        sinks = SinkSet.from_config(config, tmp_path, SQLiteEventLog(ingest_db_path(tmp_path)))
        await sinks.start()
        await sinks.stop(drain_timeout=5)

    asyncio.run(run_once())
    SQLiteEventLog.append(writer, [status_event(n) for n in range(51, 81)])
    asyncio.run(run_once())
    assert _ids([json.loads(x) for x in jsonl.read_text().splitlines()]) == [
        status_event(n)["id"] for n in range(1, 81)]


def test_start_latest_and_a_cursor_ahead_of_the_log(tmp_path: Path) -> None:
    writer = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))
    SQLiteEventLog.append(writer, [status_event(n) for n in range(1, 11)])
    log = SQLiteEventLog(ingest_db_path(tmp_path))
    log.save_cursor("ahead", 999)
    jsonl = tmp_path / "late.jsonl"
    config = [{"type": "jsonl", "name": "late", "path": str(jsonl), "start": "latest", **FAST},
              {"type": "jsonl", "name": "ahead", "path": str(tmp_path / "ahead.jsonl"), **FAST}]

    async def main() -> None:
        sinks = SinkSet.from_config(config, tmp_path, log)
        await sinks.start()
        # notify from another thread, as a threaded ingest would
        head = SQLiteEventLog.append(writer, [status_event(11)])
        threading.Thread(target=sinks.notify, args=(head,)).start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sinks.stats()["late"]["delivered"] < 1:
            await asyncio.sleep(0.01)
        await sinks.stop(2)

    asyncio.run(main())
    assert _ids([json.loads(x) for x in jsonl.read_text().splitlines()]) == [status_event(11)["id"]]
    assert log.cursors()["ahead"] == 11


KILL_SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
    from pathlib import Path
    from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
    from carecard.host.paths import ingest_db_path
    from carecard.host.sinks import SinkSet
    sys.path.insert(0, sys.argv[2])
    from eventgen import status_event
    data = Path(sys.argv[1])
    writer = SQLiteEventLog.connect_writer(ingest_db_path(data))
    config = [{"type": "sqlite", "batch_size": 7}, {"type": "jsonl", "path": str(data / "out.jsonl"),
              "batch_size": 5}]
    async def main():
        sinks = SinkSet.from_config(config, data, SQLiteEventLog(ingest_db_path(data)))
        await sinks.start()
        n = 0
        while True:
            n += 1
            writer.execute("BEGIN IMMEDIATE")
            head = SQLiteEventLog.append(writer, [status_event(n)])
            writer.execute("COMMIT")
            sinks.notify(head)
            if n % 50 == 0:
                print(n, flush=True)
            await asyncio.sleep(0.0005)
    asyncio.run(main())
""")


def test_sigkill_then_restart_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL a process running ingest + sinks mid-stream; a new SinkSet resumes from the
    persisted cursors: every logged event reaches every sink, in order; the JSON lines sink may
    repeat the last few (documented), the SQLite store never does."""
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if int(line) >= 600:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    log = SQLiteEventLog(ingest_db_path(tmp_path))
    logged = log.last_seq()
    cursors_at_kill = log.cursors()
    assert logged >= 600 and 0 < cursors_at_kill["jsonl"] <= logged

    async def resume() -> None:
        sinks = SinkSet.from_config([{"type": "sqlite"}, {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
                                    tmp_path, log)
        await sinks.start()
        await sinks.stop(drain_timeout=10)

    asyncio.run(resume())
    expected = [status_event(n)["id"] for n in range(1, logged + 1)]
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    got = _ids([json.loads(x) for x in lines])  # a torn last line would fail here
    first_seen = list(dict.fromkeys(got))
    assert first_seen == expected
    repeats = len(got) - len(first_seen)
    # repeats only of events after the persisted cursor at the kill
    assert all(int(i.split("-")[1]) > cursors_at_kill["jsonl"] for i in got[: len(got)] if got.count(i) > 1)
    store = sqlite3.connect(events_db_path(tmp_path))
    assert [r[0] for r in store.execute("SELECT id FROM events ORDER BY t")] == expected
    assert log.cursors() == {"sqlite": logged, "jsonl": logged}
    print(f"\nkilled after {logged} events; jsonl cursor at kill {cursors_at_kill['jsonl']}, "
          f"{repeats} events delivered twice after restart")


@pytest.mark.parametrize("config, table, key", [
    ([{"type": "carrier-pigeon"}], "sinks[0]", "type"),
    ([{}], "sinks[0]", "type"),
    (["sqlite"], "sinks[0]", None),
    ([{"type": "sqlite"}, {"type": "sqlite"}], 'sinks[1] (type "sqlite")', "name"),
    ([{"type": "sqlite", "batch_size": 0}], 'sinks[0] (type "sqlite")', "batch_size"),
    ([{"type": "sqlite", "retry_max": "soon"}], 'sinks[0] (type "sqlite")', "retry_max"),
    ([{"type": "sqlite", "linger_ms": -1}], 'sinks[0] (type "sqlite")', "linger_ms"),
    ([{"type": "sqlite", "pathh": "x"}], 'sinks[0] (type "sqlite")', "pathh"),
    ([{"type": "jsonl", "fsync": "always"}], 'sinks[0] (type "jsonl")', "fsync"),
    ([{"type": "webhook", "secret": "s" * 16}], 'sinks[0] (type "webhook")', "url"),
    ([{"type": "webhook", "url": "ftp://x", "secret": "s" * 16}], 'sinks[0] (type "webhook")', "url"),
    ([{"type": "webhook", "url": "http://x"}], 'sinks[0] (type "webhook")', "secret"),
    ([{"type": "webhook", "url": "http://x", "secret": "short"}], 'sinks[0] (type "webhook")', "secret"),
    ([{"type": "mqtt", "qos": 0}], 'sinks[0] (type "mqtt")', "qos"),
    ([{"type": "mqtt", "topic_prefix": "a/#"}], 'sinks[0] (type "mqtt")', "topic_prefix"),
    ([{"type": "mqtt", "tls": {"ca_file": "/nonexistent"}}], 'sinks[0] (type "mqtt").tls', "ca_file"),
    ([{"type": "mqtt", "port": 70000}], 'sinks[0] (type "mqtt")', "port"),
    ([{"type": "sqlite", "name": "a/b"}], 'sinks[0] (type "sqlite")', "name"),
    ({"type": "sqlite"}, "sinks", None),
])
def test_config_errors_name_the_table_and_key(tmp_path: Path, config: Any, table: str, key: str | None) -> None:
    log = SQLiteEventLog(ingest_db_path(tmp_path), create=True)
    with pytest.raises(ConfigError) as err:
        SinkSet.from_config(config, tmp_path, log)
    assert (err.value.table, err.value.key) == (table, key)
    assert table in str(err.value)


def test_default_config_is_the_sqlite_sink(tmp_path: Path) -> None:
    log = SQLiteEventLog(ingest_db_path(tmp_path), create=True)
    sinks = SinkSet.from_config(None, tmp_path, log)
    assert [(r.name, r.sink.type_name) for r in sinks.runners] == [("sqlite", "sqlite")]
    assert sinks.runners[0].sink.path == events_db_path(tmp_path)  # type: ignore[attr-defined]
    assert SinkSet.from_config([], tmp_path, log).runners == []


def test_backoff_grows_with_jitter_and_stays_capped() -> None:
    import random
    rng = random.Random(1)
    delays = [backoff_delay(a, 0.5, 30, rng) for a in range(1, 12)]
    assert 0.25 <= delays[0] <= 0.5 and all(15 <= d <= 30 for d in delays[7:])
    assert len({round(backoff_delay(3, 0.5, 30, rng), 6) for _ in range(20)}) > 1
    assert 15 <= backoff_delay(100_000, 0.5, 30, rng) <= 30  # no overflow after days of retries


def test_cursor_saves_waiting_for_the_ingest_lock_do_not_hold_up_deliveries(tmp_path: Path) -> None:
    """The ingest holds the database's write lock nearly all the time under load; a cursor commit
    waits for it. Deliveries go on meanwhile, and the cursor is saved once the lock is free."""
    gate = GateSink()
    sinks, log, writer = _sinkset(tmp_path, [], gate, batch_size=20, queue_size=40, cursor_interval=0.0)
    SQLiteEventLog.append(writer, [status_event(n) for n in range(1, 301)])
    holder = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))

    async def run() -> tuple[float, int]:
        await sinks.start()
        holder.execute("BEGIN IMMEDIATE")  # what the ingest does between its commits
        began = time.monotonic()
        while len(gate.received) < 300 and time.monotonic() - began < 10:
            await asyncio.sleep(0.01)
        took = time.monotonic() - began
        persisted_while_locked = sinks.runner("gate").persisted_cursor
        holder.execute("COMMIT")
        await sinks.stop(drain_timeout=5)
        return took, persisted_while_locked

    took, persisted = asyncio.run(run())
    assert len(gate.received) == 300 and took < 2.0, f"deliveries waited for the lock ({took:.1f} s)"
    assert persisted < 300
    assert log.cursors() == {"gate": 300}
