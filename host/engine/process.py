"""The alert engine in a process of its own: `carecard engine`, or the child that `carecard receive`
starts and supervises (the default, `[engine] run = "child"`).

Why a process: the engine reads every event again and judges it, Python work that would hold the
ingest's interpreter lock. In a process of its own it uses another core, and a slow or crashing
engine never slows ingest. Like a sink, it is a reader of the event log with a durable cursor
(carecard.host.engine.runner): nothing is handed over but the store, so it can run beside the
receiver (its child) or anywhere that reaches the store (`carecard engine`).

One engine per name and store steps at a time (`EngineLock`): a file lock in the data folder
(SQLite) or a PostgreSQL advisory lock held by a connection of its own. A second engine of the
same name stands by, tries the lock every `poll_s`, and takes over from the last commit when the
first one dies (its lock goes with it), so no alert is raised twice.

Parent <-> child protocol (carecard.host.receiver.childproc; one line per message):

    parent -> child   ENGINE_CONFIG_JSON (engine_config())
                      n                events were committed: step now
                      o SECONDS        the engine's clock is the real time plus SECONDS (tests)
                      sync ID          answer `synced ID` once a step that started after it is done
                      stop SECONDS     finish the step under way (its commit included), exit 0
    child -> parent   ready INFO_JSON | error MESSAGE
                      c LAST_SEQ N     a step committed: its alert events end at LAST_SEQ in the
                                       log, N check-in prompts were queued as downlink commands
                      s STATS_JSON     EngineThread.stats() plus "state" and "pid", on change
                                       (checked every STATS_POLL_S) and at least every second
                      synced ID
                      stopped
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from carecard.host import pidlock
from carecard.host.engine.runner import ENGINE_NAME, EngineRunner, EngineThread
from carecard.host.receiver.childproc import ChildProcess, ChildProcessError, ParentPipe, child_main, parent_lines

log = logging.getLogger("carecard.engine")

LOCK_FILE_NAME = "engine.lock"
STATS_POLL_S = 0.05
STATS_HEARTBEAT_S = 1.0
# The child `carecard receive` starts runs at this lower CPU priority (added to the receiver's
# niceness). Under a burst on a busy machine the cores are shared by ingest, the sinks and the
# engine, and acking a card's frame comes first: a card retransmits an unacknowledged frame (an
# SOS until it is acked), while an engine some seconds behind the log loses nothing (it reads
# on from its cursor, and its timers fire at their own times). Idle cores run it at full speed;
# `carecard bench receive` prints its lag at the end of a burst and the time it took to catch up.
ENGINE_CHILD_NICE = 10


class EngineStartError(RuntimeError):
    """The engine cannot start: one line saying why and what to do."""


def engine_config(config: Any) -> dict[str, Any]:
    """The engine process's configuration from a receiver's (ReceiverConfig): where the store is,
    the [engine] table, logging."""
    engine = config.engine
    return {"data_dir": str(config.data_dir), "store": config.store, "durability": config.ingest.durability,
            "settings": str(engine.settings) if engine.settings else None, "poll_s": engine.poll_s,
            "partitions": engine.partitions, "source": config.source,
            "metrics": [engine.metrics.host, engine.metrics.port] if engine.metrics else None, "log_format": config.log_format,
            "log_level": config.log_level, "log_file": str(config.log_file) if config.log_file else None}


# --- one engine per name and store ---------------------------------------------------------------

class EngineLock:
    """The right to step the engine `name` on a store. `try_acquire()` never waits; `held()` says
    whether it is still ours (a PostgreSQL session that died has lost it)."""

    def __init__(self, store: str, data_dir: Path, name: str = ENGINE_NAME, *,
                 budget: "LeaseBudget | None" = None):
        self.store = store
        self.data_dir = Path(data_dir)
        self.name = name
        self.budget = budget
        self.acquired_at: float | None = None  # Unix time this lock was taken (the lease's age)
        self._fd: int | None = None
        self._conn: Any = None

    @property
    def where(self) -> str:
        if self.store.startswith(("postgresql://", "postgres://")):
            from carecard.host.storage.postgresql.store import display_name

            return f"an advisory lock on {display_name(self.store)}"
        return str(self.data_dir / self._file_name())

    def _file_name(self) -> str:
        return LOCK_FILE_NAME if self.name == ENGINE_NAME else f"{self.name}.lock"

    def _key(self) -> int:
        digest = hashlib.sha256(f"carecard engine {self.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it. Raises EngineStartError when it cannot even be tried
        (no such folder, the database unreachable)."""
        if self.held():
            return True
        if self.budget is None:
            return self._try()
        with self.budget.lock:
            if not self.budget.may_take():
                return False
            taken = self._try()
            if taken:
                self.budget.took()
            return taken

    def _try(self) -> bool:
        self.acquired_at = None
        taken = self._try_postgresql() if self.store.startswith(("postgresql://", "postgres://")) else self._try_file()
        if taken:
            self.acquired_at = time.time()
            log.info("engine %s: lease taken (%s)", self.name, self.where)
        return taken

    def _try_file(self) -> bool:
        path = self.data_dir / self._file_name()
        try:
            self._fd = pidlock.try_lock(path)
        except OSError as exc:
            raise EngineStartError(f"engine lock {path}: {exc.strerror}") from None
        return self._fd is not None

    def _try_postgresql(self) -> bool:
        import psycopg

        from carecard.host.storage.postgresql.store import display_name

        if self._conn is None:
            try:
                self._conn = psycopg.connect(self.store, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                raise EngineStartError(f"engine lock on {display_name(self.store)}: {exc}".splitlines()[0]) from None
        try:
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key(),)).fetchone()
        except psycopg.Error:
            self._drop_connection()
            return False
        if row and row[0]:
            return True
        return False

    def held(self) -> bool:
        if self._fd is not None:
            return True
        if self._conn is None:
            return False
        import psycopg

        try:
            got = self._conn.execute("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                                     "pid = pg_backend_pid() AND granted").fetchone()
        except psycopg.Error:
            self._drop_connection()
            return False
        return bool(got and got[0])

    def holder(self) -> str:
        """Who holds the lock, for the log (the pid written in the lock file)."""
        if self.store.startswith(("postgresql://", "postgres://")):
            return "another engine"
        pid = pidlock.holder(self.data_dir / self._file_name())
        return f"pid {pid}" if pid else "another engine"

    def _drop_connection(self) -> None:
        try:
            self._conn.close()
        except Exception:  # closing only
            pass
        self._conn = None

    def release(self) -> None:
        self.acquired_at = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            pidlock.release(fd)
        if self._conn is not None:
            self._drop_connection()


class LeaseBudget:
    """A worker takes at most one free partition per `interval` seconds: workers that start
    together split the partitions between them instead of the first one taking them all, and a
    worker that dies leaves its partitions to the others within a few intervals."""

    def __init__(self, interval: float):
        self.interval = interval
        self.lock = threading.Lock()
        self._last: float | None = None

    def may_take(self) -> bool:
        return self._last is None or time.monotonic() - self._last >= self.interval

    def took(self) -> None:
        self._last = time.monotonic()


def partition_names(count: int) -> list[str]:
    """The engine names of `count` partitions (one: the plain engine name, as without partitions).
    Changing the count starts new engines: choose it once (docs/receiver.md)."""
    if count <= 1:
        return [ENGINE_NAME]
    return [f"{ENGINE_NAME}-{i}-of-{count}" for i in range(count)]


# --- an engine worker: lock, store, runner, thread per partition ---------------------------------

class OffsetClock:
    """The engine's clock: the real time plus `offset` seconds (0 but in tests)."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


class Partition:
    """One partition of the engine in a worker: its lock (the lease), runner and thread."""

    def __init__(self, name: str, lock: EngineLock, runner: EngineRunner, thread: EngineThread):
        self.name = name
        self.lock = lock
        self.runner = runner
        self.thread = thread


class EngineWorker:
    """An engine worker over a store: one thread per partition (`[engine] partitions`, default
    1), each stepping its runner while it holds the partition's lock and standing by, trying the
    lock every `poll_s`, while another worker holds it. A worker takes at most one free
    partition per `poll_s` (LeaseBudget)."""

    def __init__(self, config: Mapping[str, Any], clock: Callable[[], float] = time.time):
        self.config = dict(config)
        self.clock = clock
        self.store_setting = str(config.get("store", "sqlite"))
        self.data_dir = Path(config["data_dir"])
        self.count = max(1, int(config.get("partitions") or 1))
        self.poll_s = float(config.get("poll_s", 1.0))
        self.budget = LeaseBudget(self.poll_s) if self.count > 1 else None
        self.partitions: list[Partition] = []
        self.resources: list[Any] = []
        self.on_commit: Callable[[Any], None] | None = None

    @property
    def name(self) -> str:
        return ENGINE_NAME

    def open(self) -> None:
        """Open the store, read the settings, and take (if free) the first partition it can,
        restoring its last commit. Raises EngineStartError."""
        from carecard.host.engine.settings import Settings, SettingsError

        settings_file = self.config.get("settings")
        where = self.config.get("source", "defaults")
        try:
            file_tables = Settings.load_tables(Path(settings_file)) if settings_file else {}
        except SettingsError as exc:
            raise EngineStartError(f"{where} [engine] settings: {exc}") from None
        try:
            for index, name in enumerate(partition_names(self.count)):
                self.partitions.append(self._partition(index, name, file_tables, settings_file))
            for partition in self.partitions:
                if partition.lock.try_acquire():
                    partition.runner.load()
                    break
        except EngineStartError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise EngineStartError(f"cannot restore its state from the store: {exc}") from None

    def _partition(self, index: int, name: str, file_tables: Mapping[str, Any], settings_file: Any) -> Partition:
        from carecard.host.engine.settings import Settings, SettingsError
        from carecard.host.storage import EngineSettingsStore, StoreError, event_log_for, ingest_store_for

        try:  # connections of its own: each partition steps in its own thread
            store = ingest_store_for(self.store_setting, self.data_dir, self.config.get("durability", "full"))
            self.resources.append(store)
            eventlog = event_log_for(self.store_setting, self.data_dir)
            self.resources.append(eventlog)
        except (StoreError, RuntimeError) as exc:
            raise EngineStartError(str(exc)) from None

        def settings_now() -> Settings:
            """The settings file's, overridden key by key by the registry's (a store without
            them: the file's alone)."""
            defaults, devices = store.load_engine_settings() if isinstance(store, EngineSettingsStore) else ({}, {})
            return Settings.combine(file_tables, {"defaults": defaults, "devices": {str(d): t for d, t in devices.items()}},
                                    where=f"settings file {settings_file} + registry")

        try:
            settings = settings_now()
        except SettingsError as exc:
            raise EngineStartError(f"settings: {exc}") from None
        lock = EngineLock(self.store_setting, self.data_dir, name, budget=self.budget)
        runner = EngineRunner(store, eventlog, settings, name=name, clock=self.clock, settings_loader=settings_now,
                              partition=(index, self.count) if self.count > 1 else None)
        thread = EngineThread(runner, poll_s=self.poll_s, on_commit=self._committed, lock=lock)
        return Partition(name, lock, runner, thread)

    def _committed(self, result: Any) -> None:
        if self.on_commit is not None:
            self.on_commit(result)

    def start(self) -> None:
        standing = [p.name for p in self.partitions if not p.lock.held()]
        if standing:
            first = self.partitions[0].lock
            log.info("engine: %d of %d partitions held by others (%s, e.g. %s): standing by for them",
                     len(standing), self.count, first.where if self.count == 1 else "advisory locks",
                     first.holder() if not first.held() else standing[0])
        for partition in self.partitions:
            partition.thread.start()

    @property
    def state(self) -> str:
        """"active" while it holds a partition, else "standby"."""
        return "active" if any(p.lock.held() for p in self.partitions) else "standby"

    def notify(self) -> None:
        for partition in self.partitions:
            partition.thread.notify()

    def sync(self, timeout: float = 30.0) -> bool:
        """A step that started after this call has finished in every partition."""
        return all([partition.thread.sync(timeout) for partition in self.partitions])

    def stats(self) -> dict[str, Any]:
        """Sums over the partitions it holds (cursor: the lowest), "state", "pid", and per partition
        "partitions": {name: {"held": bool, "lease_age_s": seconds held or None, "cursor"}}."""
        total: dict[str, Any] = {"cursor": None, "devices": 0, "alerts_open": 0, "alert_events": 0,
                                 "rejected": 0, "unreadable": 0, "requests_done": 0, "requests_refused": 0,
                                 "commit_failures": 0, "error": None}
        now = time.time()
        partitions = {}
        for partition in self.partitions:
            stats = partition.thread.stats()
            held = partition.lock.held()
            at = partition.lock.acquired_at
            partitions[partition.name] = {"held": held, "lease_age_s": round(now - at, 3) if held and at else None,
                                          "cursor": stats["cursor"]}
            if not held:
                continue
            for key in total:
                if key == "cursor":
                    total[key] = stats[key] if total[key] is None else min(total[key], stats[key])
                elif key == "error":
                    total[key] = total[key] or stats[key]
                else:
                    total[key] += stats[key]
        return {**total, "cursor": total["cursor"] or 0, "partitions": partitions,
                "partitions_held": sum(1 for p in partitions.values() if p["held"]),
                "state": self.state, "pid": os.getpid()}

    def stop(self) -> None:
        """Finish the steps under way (their commits included), then release everything."""
        for partition in self.partitions:
            partition.thread.stop()
        self.close()

    def close(self) -> None:
        for resource in self.resources:
            try:
                resource.close()
            except Exception:  # closing only
                pass
        self.resources.clear()
        for partition in self.partitions:
            partition.lock.release()


async def serve_engine(config: Mapping[str, Any], stop: asyncio.Event,
                       started: Callable[[EngineWorker], None] | None = None) -> EngineWorker:
    """`carecard engine`: run an engine worker in this process until `stop` is set. Raises
    EngineStartError."""
    worker = EngineWorker(config)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, worker.open)
    worker.start()
    server = reader = None
    try:
        if config.get("metrics"):
            server, reader = await _serve_metrics(worker, config)
        log.info("engine started: %d partition(s), %s", worker.count, worker.state,
                 extra={"fields": {"metrics_port": server.port if server else None}})
        if started is not None:
            started(worker)
        await stop.wait()
    finally:
        if server is not None:
            await server.stop()
            reader.close()
        await loop.run_in_executor(None, worker.stop)
        log.info("engine stopped at event log seq %s", worker.stats()["cursor"])
    return worker


async def _serve_metrics(worker: EngineWorker, config: Mapping[str, Any]) -> tuple[Any, Any]:
    """Prometheus /metrics of the worker (its partitions, leases, lag behind the log's head) and
    /healthz: the started server and the event log reader it reads the head with. Raises
    EngineStartError when the address cannot be bound."""
    from carecard.host.receiver.metrics import Metrics, MetricsServer, add_engine_gauges
    from carecard.host.storage import StoreError, event_log_for

    host, port = config["metrics"]
    try:
        reader = event_log_for(worker.store_setting, worker.data_dir)
    except (StoreError, RuntimeError) as exc:
        raise EngineStartError(f"metrics: {exc}") from None
    metrics = Metrics(ingest=False, process="engine")
    add_engine_gauges(metrics, worker.stats)
    metrics.log_head = reader.last_seq
    server = MetricsServer(metrics, host, int(port))
    try:
        await server.start()
    except OSError as exc:
        reader.close()
        raise EngineStartError(f"metrics {host}:{port}: {exc.strerror or exc}") from None
    return server, reader


# --- the parent's handle -------------------------------------------------------------------------

class EngineProcess(ChildProcess):
    """The receiver's handle on its engine child (a supervised childproc.ChildProcess).
    `clock`: the engine's clock, carried to the child as an offset from the real time (tests move
    it; default the real time)."""

    what = "alert engine process"
    module = "carecard.host.engine.process"

    def __init__(self, config: dict[str, Any], *, clock: Callable[[], float] | None = None):
        self.clock = clock
        self._offset = self._clock_offset()
        super().__init__({**config, "clock_offset": self._offset})
        self._stats: dict[str, Any] = {}
        self._wake_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synced = 0
        self._sync_id = 0
        self._sync_done = threading.Condition()
        self.on_commit: Callable[[int, int], None] | None = None

    def _clock_offset(self) -> float:
        return 0.0 if self.clock is None else self.clock() - time.time()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await super().start()

    def _on_spawned(self) -> None:
        self._offset = self.config["clock_offset"] = self._clock_offset()
        self.send(f"o {self._offset!r}\n")

    def on_line(self, line: bytes) -> None:
        if line.startswith(b"s "):
            try:
                self._stats = json.loads(line[2:])
            except ValueError:
                return
        elif line.startswith(b"c "):
            try:
                last_seq, commands = (int(x) for x in line[2:].split())
            except ValueError:
                return
            if self.on_commit is not None:
                self.on_commit(last_seq, commands)
        elif line.startswith(b"synced "):
            try:
                done = int(line[7:])
            except ValueError:
                return
            with self._sync_done:
                self._synced = max(self._synced, done)
                self._sync_done.notify_all()

    def _send_offset(self) -> None:
        offset = self._clock_offset()
        if abs(offset - self._offset) > 1e-3:
            self._offset = offset
            self.send(f"o {offset!r}\n")

    def notify(self) -> None:
        """Events were committed: the engine steps now. Never blocks (coalesced)."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_wake)

    def _flush_wake(self) -> None:
        self._wake_scheduled = False
        self._send_offset()
        self.send("n\n")

    def sync(self, timeout: float = 30.0) -> bool:
        """Wait until a step that started after this call has finished (tests, tools). From any
        thread but the event loop's."""
        loop = self._loop
        assert loop is not None
        with self._sync_done:
            self._sync_id += 1
            target = self._sync_id

        def ask() -> None:
            self._send_offset()
            self.send(f"sync {target}\n")

        loop.call_soon_threadsafe(ask)
        with self._sync_done:
            return self._sync_done.wait_for(lambda: self._synced >= target, timeout)

    def stats(self) -> dict[str, Any]:
        """The child's last report (EngineThread.stats, "state", "pid"); "state" is "process down"
        while no child runs."""
        if not self.up:
            return {**self._stats, "state": "process down"}
        return self._stats


# --- the child -----------------------------------------------------------------------------------

async def _child(config: dict[str, Any]) -> int:
    from carecard.host.receiver.runtime import tune_gc

    try:  # first, so that every thread started below has it (Linux keeps a niceness per thread)
        os.nice(ENGINE_CHILD_NICE)
    except OSError as exc:
        log.warning("alert engine process: cannot lower its CPU priority (%s): it competes with "
                    "ingest and the sinks as an equal", exc)
    out = ParentPipe(sys.stdout)
    clock = OffsetClock(float(config.get("clock_offset", 0.0)))
    worker = EngineWorker(config, clock)
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, worker.open)
    except EngineStartError as exc:
        out.send(f"error {exc}\n")
        return 2
    worker.on_commit = lambda result: out.send(f"c {result.last_seq} {len(result.commands)}\n")
    worker.start()
    tune_gc()
    out.send("ready " + json.dumps({"pid": os.getpid(), "state": worker.state}) + "\n")

    reader = await parent_lines()
    done = asyncio.Event()
    orphaned = False
    syncs: set[asyncio.Task[None]] = set()

    async def answer_sync(ident: bytes) -> None:
        await loop.run_in_executor(None, worker.sync)
        out.send(f"synced {ident.decode()}\n")

    async def commands() -> None:
        nonlocal orphaned
        while True:
            line = await reader.readline()
            if not line:  # the parent is gone: stop
                orphaned = True
                break
            if line.startswith(b"n"):
                worker.notify()
            elif line.startswith(b"o "):
                try:
                    clock.offset = float(line[2:])
                except ValueError:
                    pass
            elif line.startswith(b"sync "):
                task = asyncio.create_task(answer_sync(line[5:].strip()))
                syncs.add(task)
                task.add_done_callback(syncs.discard)
            elif line.startswith(b"stop"):
                break
        done.set()

    async def report() -> None:
        last: Any = None
        last_sent = 0.0
        while True:
            await asyncio.sleep(STATS_POLL_S)
            stats = worker.stats()
            now = time.time()
            if stats != last or now - last_sent >= STATS_HEARTBEAT_S:
                last, last_sent = stats, now
                out.send("s " + json.dumps(stats, default=str) + "\n")

    tasks = [asyncio.create_task(commands()), asyncio.create_task(report())]
    await done.wait()
    await loop.run_in_executor(None, worker.stop)
    for task in [tasks[1], *syncs]:
        task.cancel()
    await asyncio.gather(*tasks, *syncs, return_exceptions=True)
    out.send("s " + json.dumps(worker.stats(), default=str) + "\n" + "stopped\n")
    if orphaned:
        log.warning("the receiver is gone (its pipe closed): alert engine stopped at event log seq %s",
                    worker.stats()["cursor"])
    return 0


def main() -> int:
    return child_main(_child)


if __name__ == "__main__":
    sys.exit(main())
