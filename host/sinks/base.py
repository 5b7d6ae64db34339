"""The sink interface, its configuration helpers and the runner that feeds one sink from the log.

A sink is anything with an async `deliver(events)`: returning means every event of the batch is
durably in the sink (or, for the webhook, dead-lettered); raising means "not delivered, retry
later". A `SinkError` with `delivered=n` says the first n events did get through, so the runner
does not send them again.

The runner (one per sink) reads the event log from the sink's cursor into a bounded in-memory
queue (`queue_size` events; the log on disk is the spill), delivers in order in batches of what is
queued, at most `batch_size` (defaults per sink type: `default_batch_size`), advances the cursor only after a delivery returned (at-least-once, ordered), and
retries a failed batch with exponential backoff and full jitter between `retry_min` and
`retry_max` seconds for as long as the sink is down. It never touches the ingest: all it does with
the ingest database is short reads and its own tiny cursor commits, in a worker thread.

Cursors are persisted after a delivered batch, at most every `cursor_interval` seconds (and when
the runner goes idle or stops); the periodic saves run in the background on their own thread and
connection (a cursor commit waits for the ingest's write lock, deliveries do not wait for it), so after a crash (SIGKILL, power loss) a sink can receive again
the events of the last fraction of a second: duplicates are possible there, loss is not. Events
carry a stable `id` for downstream de-duplication; the SQLite sink is idempotent on it.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import concurrent.futures
import itertools
import json
import logging
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any, ClassVar, Mapping

from carecard.host.storage import EventLogReader, LogEntry

log = logging.getLogger("carecard.host.sinks")

DEFAULT_BATCH_SIZE = 100
DEFAULT_QUEUE_SIZE = 1000
DEFAULT_RETRY_MIN = 0.5
DEFAULT_RETRY_MAX = 30.0
DEFAULT_CURSOR_INTERVAL = 0.25
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_LINGER_MS = 0.0  # deliver what is queued at once
LINGER_QUIET_S = 0.1  # a lingering batch goes once the log has had no new event this long

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """A sink table in the configuration is invalid. `table` names it (e.g. `sinks[2]`), `key`
    the offending key (None for the table as a whole)."""

    def __init__(self, table: str, key: str | None, message: str):
        where = f"{table}, key {key!r}" if key else table
        super().__init__(f"{where}: {message}")
        self.table = table
        self.key = key


class SinkError(Exception):
    """A delivery failed. `delivered` events at the start of the batch did get through."""

    def __init__(self, message: str, *, delivered: int = 0):
        super().__init__(message)
        self.delivered = delivered


class SinkUnavailable(SinkError):
    """The sink's endpoint cannot be reached at all (broker or server down, not connected)."""


class SinkTable:
    """One `[[sinks]]` table being read: typed getters that raise ConfigError naming the key,
    and a check that no unknown key is left (a typo must not silently disable an option)."""

    def __init__(self, table: Mapping[str, Any], where: str):
        if not isinstance(table, Mapping):
            raise ConfigError(where, None, f"expected a table, got {type(table).__name__}")
        self.table = dict(table)
        self.where = where
        self.used: set[str] = set()
        # the receiver's store setting (not a key of the table): where the bridges read the registry
        self.store = "sqlite"

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self.used.add(key)
        if key not in self.table:
            if required:
                raise ConfigError(self.where, key, "required")
            return default
        return self.table[key]

    def str(self, key: str, default: str | None = None, *, required: bool = False,
            choices: tuple[str, ...] | None = None) -> str | None:
        value = self._get(key, default, required)
        if value is None:
            return None
        if not isinstance(value, str) or (required and not value):
            raise ConfigError(self.where, key, f"expected text, got {value!r}")
        if choices and value not in choices:
            raise ConfigError(self.where, key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def int(self, key: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        value = self._get(key, default, False)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ConfigError(self.where, key, f"expected an integer in {minimum}..{maximum}, got {value!r}")
        return value

    def float(self, key: str, default: float, *, minimum: float = 0.0, maximum: float = 1e9) -> float:
        value = self._get(key, default, False)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not minimum <= value <= maximum:
            raise ConfigError(self.where, key, f"expected a number in {minimum}..{maximum}, got {value!r}")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self._get(key, default, False)
        if not isinstance(value, bool):
            raise ConfigError(self.where, key, f"expected true or false, got {value!r}")
        return value

    def raw(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, False)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(self.where, unknown[0], f"unknown key (known: {', '.join(sorted(self.used))})")


class Sink(abc.ABC):
    """A destination for events. Subclasses set `type_name` and implement `from_config` and
    `deliver`; `start`/`close` open and release resources (both may be called again after a
    failure; `start` failing is retried like a failed delivery)."""

    type_name: ClassVar[str] = ""
    # Defaults of the `batch_size`, `queue_size` and `linger_ms` keys for this type.
    default_batch_size: ClassVar[int] = DEFAULT_BATCH_SIZE
    default_queue_size: ClassVar[int] = DEFAULT_QUEUE_SIZE
    default_linger_ms: ClassVar[float] = DEFAULT_LINGER_MS
    # Start (connect) as soon as the runner runs, not at the first delivery: for sinks that
    # publish something of their own (the bridges announce the registered cards).
    start_at_once: ClassVar[bool] = False

    def __init__(self, name: str):
        self.name = name
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def run_io(self, fn: Any, *args: Any) -> Any:
        """Run blocking I/O in this sink's own worker thread (one per sink, so a hung endpoint
        never holds up another sink or the ingest)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"sink-{self.name}")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def release_io(self) -> None:
        """Let the worker thread go (it finishes what it is doing); a later run_io starts another."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @classmethod
    @abc.abstractmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "Sink":
        """Build from a `[[sinks]]` table (read its keys through `table`)."""

    async def start(self) -> None:
        """Open connections or files. Raising means "retry later"."""

    @abc.abstractmethod
    async def deliver(self, events: list[dict[str, Any]]) -> None:
        """Deliver the batch in order, durably. Raise (SinkError with `delivered` if part got
        through) for "not delivered, retry later"."""

    async def deliver_entries(self, entries: list[LogEntry]) -> None:
        """What the runner calls: deliver these log entries (`entry.event`; `entry.body` is the
        event's JSON as the log stores it, for sinks that forward JSON without encoding it
        again). The default delivers the events with `deliver`."""
        await self.deliver([entry.event for entry in entries])

    async def close(self) -> None:
        """Release resources. Must not raise."""

    def stats(self) -> dict[str, Any]:
        """Sink-specific counters added to the runner's stats (e.g. dead_lettered)."""
        return {}


def append_dead_letter(path: Path, record: Mapping[str, Any]) -> None:
    """Append one dead-letter record (a JSON line) to `path` and fsync it: an event a sink gives
    up on is kept on disk before the sink's cursor moves past it. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    with open(path, "ab") as out:
        out.write(line)
        out.flush()
        os.fsync(out.fileno())


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: attempt 1 waits about `low`, doubling up to `high`; the
    wait is drawn uniformly from the upper half of that ceiling, so many sinks (or receivers)
    retrying together spread out but never retry faster than half the schedule."""
    ceiling = min(high, low * (2.0 ** min(max(0, attempt - 1), 60)))
    return (rng or random).uniform(ceiling / 2, ceiling)


class SinkRunner:
    """Feeds one sink from the event log; see the module docstring for the guarantees."""

    def __init__(self, sink: Sink, eventlog: EventLogReader, io_executor: concurrent.futures.Executor, *,
                 cursor_executor: concurrent.futures.Executor | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, queue_size: int = DEFAULT_QUEUE_SIZE,
                 retry_min: float = DEFAULT_RETRY_MIN, retry_max: float = DEFAULT_RETRY_MAX,
                 start: str = "earliest", cursor_interval: float = DEFAULT_CURSOR_INTERVAL,
                 poll_interval: float = DEFAULT_POLL_INTERVAL, linger: float = DEFAULT_LINGER_MS / 1000):
        self.sink = sink
        self.name = sink.name
        self._log = eventlog
        self._io = io_executor
        self._cursor_io = cursor_executor or io_executor
        self._saving: asyncio.Future[Any] | None = None  # a background cursor save in flight
        self.batch_size = batch_size
        self.queue_size = max(queue_size, batch_size)
        self.retry_min = retry_min
        self.retry_max = max(retry_max, retry_min)
        self.start_at = start
        self.cursor_interval = cursor_interval
        self.poll_interval = poll_interval
        self.linger = max(0.0, linger)
        self._queue: collections.deque[LogEntry] = collections.deque()
        self._wake = asyncio.Event()
        self._stop_now = asyncio.Event()
        self._draining = False
        self._task: asyncio.Task[None] | None = None
        self._sink_started = False
        self.cursor = 0  # last delivered seq
        self._read_seq = 0  # last seq read into the queue
        self._persisted = 0
        self._persisted_at = 0.0
        self._head = 0
        self._idle_head = 0  # the writer was idle after this seq (notify(idle=True))
        self._more = True
        self.state = "stopped"
        self.delivered = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_delivery_at: float | None = None

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        saved = await loop.run_in_executor(self._io, self._log.load_cursor, self.name)
        head = await loop.run_in_executor(self._io, self._log.last_seq)
        if saved is None:
            saved = head if self.start_at == "latest" else 0
            await loop.run_in_executor(self._io, self._log.save_cursor, self.name, saved)
            log.info("sink %s: no cursor yet, starting from seq %d (%s)", self.name, saved, self.start_at)
        elif saved > head:
            log.warning("sink %s: cursor %d is ahead of the event log head %d (log replaced?); "
                        "starting from the head", self.name, saved, head)
            saved = head
            await loop.run_in_executor(self._io, self._log.save_cursor, self.name, saved)
        self.cursor = self._read_seq = self._persisted = saved
        self._head = head
        self.state = "starting"
        self._task = asyncio.create_task(self._run(), name=f"carecard-sink-{self.name}")

    def notify(self, head: int | None = None, *, idle: bool = False) -> None:
        """New events are in the log (up to `head` if given). Never blocks. `idle`: the writer
        has nothing more coming after `head` for now, so a lingering batch that reaches it goes
        at once (waiting would only add latency)."""
        if head is not None:
            if head > self._head:
                self._head = head
            if idle and head > self._idle_head:
                self._idle_head = head
        self._wake.set()

    async def stop(self, drain_timeout: float) -> None:
        """Deliver what the log holds (up to `drain_timeout` s), then stop and persist the cursor."""
        task = self._task
        if task is not None and not task.done():
            self._draining = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), max(0.0, drain_timeout))
            except asyncio.TimeoutError:
                log.warning("sink %s: drain timed out after %.1f s with %d events undelivered",
                            self.name, drain_timeout, max(0, self._head - self.cursor))
            self._stop_now.set()
            if not task.done():
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # the loop never raises, but do not let a bug block shutdown
                log.exception("sink %s: runner failed", self.name)
        self._task = None
        await self._persist(force=True)
        try:
            await self.sink.close()
        except Exception:
            log.exception("sink %s: close failed", self.name)
        self._sink_started = False
        self.state = "stopped"

    # --- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._stop_now.is_set():  # (cancel() alone can be swallowed by wait_for in 3.11)
            if self.sink.start_at_once and not self._sink_started and not self._draining:
                try:
                    await self.sink.start()
                    self._sink_started = True
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    attempt += 1
                    await self._failed(f"starting: {type(exc).__name__}: {exc}", attempt)
                    continue
            woken = self._wake.is_set()
            self._wake.clear()
            if (woken or self._more) and len(self._queue) < self.queue_size:
                try:
                    await self._fill(loop)
                except Exception as exc:  # the log is unreadable for now: retry like a sink failure
                    attempt += 1
                    await self._failed(f"reading the event log: {exc}", attempt)
                    continue
            if not self._queue:
                if self._draining:
                    self.state = "drained"
                    return
                self.state = "idle"
                await self._persist(force=False, idle=True)
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except asyncio.TimeoutError:
                    self._more = True
                continue
            if await self._lingered():
                continue  # woken by new events, or the linger ran out: look again
            batch = list(itertools.islice(self._queue, self.batch_size))
            try:
                if not self._sink_started:
                    await self.sink.start()
                    self._sink_started = True
                self.state = "delivering"
                await self.sink.deliver_entries(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                done = getattr(exc, "delivered", 0)
                if isinstance(done, int) and 0 < done <= len(batch):
                    self._advance(batch[:done])
                attempt += 1
                await self._failed(f"{type(exc).__name__}: {exc}", attempt)
                continue
            if attempt:
                log.info("sink %s: delivering again after %d failed attempts", self.name, attempt)
            attempt = 0
            self.last_error = None
            self._advance(batch)
            await self._persist(force=False)

    async def _lingered(self) -> bool:
        """With a linger, a batch that is not full waits for more events, so that under load
        deliveries are few and large (a SQLite commit costs about as much for 500 events as for
        5000): until its oldest event has been in the log `linger` seconds, or until the log has
        been quiet for LINGER_QUIET_S (no event appended since: the burst is over, nothing is
        gained by waiting), or at once when the writer said it is idle after the newest queued
        event (notify(idle=True)). New events end a wait early, to look again. Stopping never
        waits. Returns whether it waited."""
        queue = self._queue
        if (not self.linger or self._draining or len(queue) >= self.batch_size
                or queue[-1].seq <= self._idle_head):
            return False
        until = min(queue[0].appended_at + self.linger, queue[-1].appended_at + LINGER_QUIET_S)
        wait = until - time.time()
        if wait <= 0:
            return False
        self.state = "lingering"
        try:  # min: a clock stepped back never makes it wait longer than the linger
            await asyncio.wait_for(self._wake.wait(), min(wait, self.linger))
        except asyncio.TimeoutError:
            pass
        return True

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        want = self.queue_size - len(self._queue)

        def read() -> tuple[list[LogEntry], int]:
            entries = self._log.entries_after(self._read_seq, want)
            # the head for the lag figures: notify() brings it; ask the log only when idle
            return entries, (entries[-1].seq if entries else self._log.last_seq())

        entries, head = await loop.run_in_executor(self._io, read)
        if entries:
            self._queue.extend(entries)
            self._read_seq = entries[-1].seq
        self._head = max(self._head, head, self._read_seq)
        self._more = len(entries) == want

    def _advance(self, entries: list[LogEntry]) -> None:
        for _ in entries:
            self._queue.popleft()
        self.cursor = entries[-1].seq
        self.delivered += len(entries)
        self.last_delivery_at = time.time()

    async def _failed(self, message: str, attempt: int) -> None:
        self.failures += 1
        self.last_error = message
        self.state = "retrying"
        delay = backoff_delay(attempt, self.retry_min, self.retry_max)
        level = logging.WARNING if attempt == 1 or attempt % 10 == 0 else logging.DEBUG
        log.log(level, "sink %s: delivery failed (attempt %d, %d events waiting), retrying in "
                "%.2f s: %s", self.name, attempt, max(0, self._head - self.cursor), delay, message)
        await self._persist(force=False)
        if self._stop_now.is_set():
            return
        try:
            await asyncio.wait_for(self._stop_now.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def _persist(self, *, force: bool, idle: bool = False) -> None:
        """Save the cursor: in the background after a batch (one save in flight at a time), and
        waited for when the runner goes idle or stops (`force`: after any save in flight)."""
        saving = self._saving
        if saving is not None:
            if not saving.done():
                if not (force or idle):
                    return
                await asyncio.wait([saving])
            self._saving = None
        if self.cursor == self._persisted:
            return
        now = time.monotonic()
        if not force and not idle and now - self._persisted_at < self.cursor_interval:
            return
        seq = self.cursor
        self._persisted_at = now
        future = asyncio.get_running_loop().run_in_executor(self._cursor_io, self._log.save_cursor,
                                                            self.name, seq)
        if force or idle:
            try:
                await future
            except Exception as exc:  # retried at the next batch; only duplicates are at stake
                log.warning("sink %s: cannot persist cursor %d: %s", self.name, seq, exc)
                return
            self._persisted = max(self._persisted, seq)
        else:
            self._saving = future
            future.add_done_callback(lambda done: self._saved(seq, done))

    def _saved(self, seq: int, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:  # retried at the next batch; only duplicates are at stake
            log.warning("sink %s: cannot persist cursor %d: %s", self.name, seq, exc)
        else:
            self._persisted = max(self._persisted, seq)

    # --- observation ------------------------------------------------------------------------

    @property
    def persisted_cursor(self) -> int:
        return self._persisted

    def stats(self) -> dict[str, Any]:
        lag_events = max(0, self._head - self.cursor)
        lag_seconds = 0.0
        if lag_events and self._queue:
            lag_seconds = max(0.0, time.time() - self._queue[0].appended_at)
        stats = {
            "type": self.sink.type_name,
            "state": self.state,
            "queue_depth": len(self._queue),
            "queue_max": self.queue_size,
            "lag_events": lag_events,
            "lag_seconds": lag_seconds,
            "delivered": self.delivered,
            "failures": self.failures,
            "cursor": self.cursor,
            "head": self._head,
            "last_error": self.last_error,
        }
        stats.update(self.sink.stats())
        return stats
