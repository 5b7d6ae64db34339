"""Event sinks: SQLite query store (default), JSON lines, MQTT, HTTP webhook.

    sinks = SinkSet.from_config(config.get("sinks"), data_dir, SQLiteEventLog(ingest_db_path(data_dir)))
    await sinks.start()
    ...                       # after every ingest commit that appended events:
    sinks.notify(last_seq)    # wakes the runners; never blocks, never waits for a sink
    ...
    await sinks.stop(drain_timeout=5.0)

Configuration: a list of `[[sinks]]` tables (see docs/events.md). Keys common to every type:
`type` (required: sqlite, jsonl, mqtt, webhook, traccar, owntracks, homeassistant, nats), `name` (default: the type; unique; it keys the
sink's cursor, so renaming a sink starts it afresh), `start` ("earliest": a new sink replays the
whole log, the default; "latest": only new events), `batch_size` (100; SQLite 10000), `queue_size`
(1000; SQLite 20000),
`retry_min` (0.5 s), `retry_max` (30 s), `linger_ms` (0; SQLite 1000: how long a batch that is not
full may wait for more events). No configuration at all (None): the SQLite sink only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from pathlib import Path
from typing import Any, Mapping

from carecard.host.sinks.base import (
    DEFAULT_RETRY_MAX,
    DEFAULT_RETRY_MIN,
    ConfigError,
    Sink,
    SinkError,
    SinkRunner,
    SinkTable,
    SinkUnavailable,
    _NAME_RE,
)
from carecard.host.sinks.homeassistant import HomeAssistantSink
from carecard.host.sinks.jsonl import JsonLinesSink
from carecard.host.sinks.mqtt import MqttSink
from carecard.host.sinks.nats_jetstream import NatsSink
from carecard.host.sinks.owntracks import OwnTracksSink
from carecard.host.sinks.sqlite_store import SQLiteSink
from carecard.host.sinks.traccar import TraccarSink
from carecard.host.sinks.webhook import WebhookSink
from carecard.host.storage import STORE_SQLITE, EventLogReader

__all__ = [
    "ConfigError", "JsonLinesSink", "MqttSink", "SINK_TYPES", "Sink", "SinkError", "SinkRunner",
    "SinkSet", "SinkTable", "SinkUnavailable", "SQLiteSink", "WebhookSink",
    "TraccarSink", "OwnTracksSink", "HomeAssistantSink", "NatsSink",
]

log = logging.getLogger("carecard.host.sinks")

SINK_TYPES: dict[str, type[Sink]] = {
    cls.type_name: cls for cls in (SQLiteSink, JsonLinesSink, MqttSink, WebhookSink,
                                   TraccarSink, OwnTracksSink, HomeAssistantSink, NatsSink)
}

DEFAULT_SINKS: list[dict[str, Any]] = [{"type": "sqlite"}]


def _runner_from_table(raw: Any, index: int, data_dir: Path, eventlog: EventLogReader,
                       io_executor: concurrent.futures.Executor, names: set[str],
                       cursor_executor: concurrent.futures.Executor | None = None,
                       store: str = STORE_SQLITE) -> SinkRunner:
    where = f"sinks[{index}]"
    table = SinkTable(raw, where)
    table.store = store
    kind = table.str("type", required=True, choices=tuple(SINK_TYPES))
    assert kind is not None
    table.where = f'{where} (type "{kind}")'
    name = table.str("name", kind)
    assert name is not None
    if not _NAME_RE.match(name):
        raise ConfigError(table.where, "name", f"{name!r}: use 1-64 letters, digits, _ . -")
    if name in names:
        raise ConfigError(table.where, "name", f"{name!r} is already used by another sink: give "
                          "each sink a unique name (it keys the sink's cursor)")
    names.add(name)
    sink_type = SINK_TYPES[kind]
    batch_size = table.int("batch_size", sink_type.default_batch_size, minimum=1, maximum=10_000)
    queue_size = table.int("queue_size", sink_type.default_queue_size, minimum=1, maximum=1_000_000)
    retry_min = table.float("retry_min", DEFAULT_RETRY_MIN, minimum=0.001, maximum=3600)
    retry_max = table.float("retry_max", DEFAULT_RETRY_MAX, minimum=0.001, maximum=86400)
    start = table.str("start", "earliest", choices=("earliest", "latest"))
    linger_ms = table.float("linger_ms", sink_type.default_linger_ms, minimum=0, maximum=60_000)
    sink = sink_type.from_config(table, data_dir, name)
    table.check_unknown()
    return SinkRunner(sink, eventlog, io_executor, cursor_executor=cursor_executor,
                      batch_size=batch_size, queue_size=queue_size,
                      retry_min=retry_min, retry_max=retry_max, start=start or "earliest",
                      linger=linger_ms / 1000)


class SinkSet:
    """All configured sinks, each with its own runner, queue and cursor."""

    def __init__(self, runners: list[SinkRunner], eventlog: EventLogReader,
                 io_executor: concurrent.futures.ThreadPoolExecutor,
                 cursor_executor: concurrent.futures.ThreadPoolExecutor | None = None):
        self.runners = runners
        self.eventlog = eventlog
        self._io = io_executor
        self._cursor_io = cursor_executor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    @classmethod
    def from_config(cls, sinks_config: list[Mapping[str, Any]] | None, data_dir: Path,
                    eventlog: EventLogReader, store: str = STORE_SQLITE) -> "SinkSet":
        """Build from the `sinks` list of the TOML config (None: the SQLite sink only); `store`
        is the receiver's store setting (the bridges read the device registry there).
        Raises ConfigError naming the table and key of the first problem."""
        if sinks_config is None:
            sinks_config = DEFAULT_SINKS
        if not isinstance(sinks_config, list):
            raise ConfigError("sinks", None, "expected a list of [[sinks]] tables")
        if not sinks_config:
            log.warning("no sinks configured: events are kept in the event log only")
        io_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="carecard-eventlog")
        cursor_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="carecard-cursors")
        names: set[str] = set()
        try:
            runners = [_runner_from_table(raw, i, Path(data_dir), eventlog, io_executor, names,
                                          cursor_executor, store)
                       for i, raw in enumerate(sinks_config)]
        except BaseException:
            io_executor.shutdown(wait=False)
            cursor_executor.shutdown(wait=False)
            raise
        return cls(runners, eventlog, io_executor, cursor_executor)

    @property
    def names(self) -> list[str]:
        return [runner.name for runner in self.runners]

    def runner(self, name: str) -> SinkRunner:
        for runner in self.runners:
            if runner.name == name:
                return runner
        raise KeyError(name)

    async def start(self) -> None:
        """Load the cursors and start one task per sink. Sinks connect in the background: a sink
        that is down at start-up is retried like one that goes down later."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        for runner in self.runners:
            await runner.start()
        log.info("sinks started: %s", ", ".join(f"{r.name} ({r.sink.type_name}, cursor {r.cursor})"
                                                for r in self.runners) or "none")

    def notify(self, last_seq: int | None = None, *, idle: bool = False) -> None:
        """New events were committed to the log (up to `last_seq` if given). Never blocks; safe to
        call from the event loop or from another thread. `idle`: the writer has nothing more
        collecting after `last_seq`, so lingering batches may go now (SinkRunner.notify)."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            for runner in self.runners:
                runner.notify(last_seq, idle=idle)
        else:
            for runner in self.runners:
                loop.call_soon_threadsafe(functools.partial(runner.notify, last_seq, idle=idle))

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Drain what the log holds into every sink for up to `drain_timeout` seconds (all sinks
        in parallel), then stop the runners (only the tasks this set started), persist the
        cursors and close the sinks."""
        await asyncio.gather(*(runner.stop(drain_timeout) for runner in self.runners))
        self._io.shutdown(wait=True)
        if self._cursor_io is not None:
            self._cursor_io.shutdown(wait=True)
        self._loop = None

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per sink: type, state, queue_depth, queue_max, lag_events, lag_seconds, delivered,
        failures, cursor, head, last_error, plus sink-specific counters (dead_lettered...)."""
        return {runner.name: runner.stats() for runner in self.runners}

    def prunable_seq(self) -> int:
        """The highest seq every sink has delivered and persisted: the store may prune the log up
        to it (CommitBatch.prune_upto). 0 when there is nothing to prune."""
        if not self.runners:
            return 0
        return min(runner.persisted_cursor for runner in self.runners)
