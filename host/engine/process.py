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
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from carecard.host import pidlock
from carecard.host.engine.runner import ENGINE_NAME, EngineRunner, EngineThread
from carecard.host.receiver.childproc import ChildProcess, ChildProcessError, ParentPipe, child_main, parent_lines
from carecard.host.storage import is_postgresql_url

log = logging.getLogger("carecard.engine")

LOCK_FILE_NAME = "engine.lock"
LEASE_S = 10.0  # default [engine] lease_s: a hung worker's partitions move after this long
STATS_POLL_S = 0.05
STATS_HEARTBEAT_S = 1.0
SIMULATION_POLL_S = 0.001  # how often a simulated engine looks at its clock file (host/simclock.py)
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
            "partitions": engine.partitions, "lease_s": engine.lease_s, "source": config.source,
            "metrics": [engine.metrics.host, engine.metrics.port] if engine.metrics else None, "log_format": config.log_format,
            "log_level": config.log_level, "log_file": str(config.log_file) if config.log_file else None,
            "simulation_clock": str(config.simulation_clock) if config.simulation_clock else None}


# --- one engine per name and store ---------------------------------------------------------------

# The lease of an engine name on PostgreSQL (table engine_lease): taken when free, when its time
# ran out (a hung holder stops renewing it, though its session lives) or when its holder's
# session is gone (a dead worker: taken at once). Compare-and-set on the row as it was read.
_LEASE_READ = (
    "SELECT l.holder, l.backend, l.expires_at, EXTRACT(EPOCH FROM clock_timestamp()), "
    "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.backend) "
    "FROM engine_lease l WHERE l.name = %s")
_LEASE_INSERT = (
    "INSERT INTO engine_lease (name, holder, backend, expires_at) VALUES "
    "(%s, %s, pg_backend_pid(), EXTRACT(EPOCH FROM clock_timestamp()) + %s) "
    "ON CONFLICT (name) DO NOTHING RETURNING name")
_LEASE_TAKE = (
    "UPDATE engine_lease SET holder = %s, backend = pg_backend_pid(), "
    "expires_at = EXTRACT(EPOCH FROM clock_timestamp()) + %s "
    "WHERE name = %s AND holder = %s AND expires_at = %s RETURNING name")
_LEASE_RENEW = (
    "UPDATE engine_lease SET expires_at = EXTRACT(EPOCH FROM clock_timestamp()) + %s "
    "WHERE name = %s AND holder = %s AND backend = pg_backend_pid() RETURNING name")
_LEASE_GIVE_UP = "DELETE FROM engine_lease WHERE name = %s AND holder = %s"


class EngineLock:
    """The right to step the engine `name` on a store. `try_acquire()` never waits; `held()` says
    whether it is still ours, without asking the store; `renew()`, called by the stepping thread
    between steps, extends it (and may hand it over for a fair share, LeaseBudget).

    SQLite: a file lock in the data folder. PostgreSQL: a row of `engine_lease` valid `lease_s`
    seconds from its last renewal, so a worker that hangs with its session alive loses it; taken
    at once when its holder's session is gone."""

    def __init__(self, store: str, data_dir: Path, name: str = ENGINE_NAME, *,
                 budget: "LeaseBudget | None" = None, lease_s: float = LEASE_S, holder_id: str | None = None):
        self.store = store
        self.data_dir = Path(data_dir)
        self.name = name
        self.budget = budget
        self.lease_s = lease_s
        self.holder_id = holder_id or worker_id()
        self.acquired_at: float | None = None  # Unix time this lock was taken (the lease's age)
        self._fd: int | None = None
        self._conn: Any = None
        self._valid_until = 0.0  # monotonic: the lease is surely ours until then
        self._renewed = 0.0  # monotonic time of the last renewal

    @property
    def where(self) -> str:
        if is_postgresql_url(self.store):
            from carecard.host.storage.postgresql.store import display_name

            return f"a lease in engine_lease on {display_name(self.store)}"
        return str(self.data_dir / self._file_name())

    def _file_name(self) -> str:
        return LOCK_FILE_NAME if self.name == ENGINE_NAME else f"{self.name}.lock"

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
        taken = self._try_postgresql() if is_postgresql_url(self.store) else self._try_file()
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

    def _connect(self) -> Any:
        import psycopg

        from carecard.host.storage.postgresql.store import display_name

        if self._conn is None:
            try:
                self._conn = psycopg.connect(self.store, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                raise EngineStartError(f"engine lease on {display_name(self.store)}: {exc}".splitlines()[0]) from None
        return self._conn

    def _try_postgresql(self) -> bool:
        import psycopg

        conn = self._connect()
        started = time.monotonic()
        try:
            row = conn.execute(_LEASE_READ, (self.name,)).fetchone()
            if row is None:
                taken = conn.execute(_LEASE_INSERT, (self.name, self.holder_id, self.lease_s)).fetchone()
            else:
                holder, _backend, expires_at, now, alive = row
                if holder != self.holder_id and expires_at >= now and alive:
                    return False
                taken = conn.execute(_LEASE_TAKE, (self.holder_id, self.lease_s, self.name, holder,
                                                   expires_at)).fetchone()
        except psycopg.Error as exc:
            log.warning("engine %s: cannot take the lease: %s", self.name, str(exc).strip())
            self._drop_connection()
            return False
        if taken is None:
            return False
        self._valid_until = started + self.lease_s
        self._renewed = started
        return True

    def held(self) -> bool:
        if self._fd is not None:
            return True
        return self._conn is not None and time.monotonic() < self._valid_until

    def renew(self) -> bool:
        """Still ours? Called by the thread that steps, between steps: extends the lease when a
        third of it has passed; gives it up when this worker holds more than its fair share."""
        if self._fd is not None or not is_postgresql_url(self.store):
            return self.held()
        if not self.held():
            return False
        started = time.monotonic()
        if self.budget is not None and self.budget.should_shed():
            log.info("engine %s: lease handed over: this worker holds more than its fair share of "
                     "%d partitions among %d workers", self.name, self.budget.count, self.budget.live)
            self.give_up()
            return False
        if started - self._renewed < self.lease_s / 3:
            return True
        import psycopg

        try:
            renewed = self._conn.execute(_LEASE_RENEW, (self.lease_s, self.name, self.holder_id)).fetchone()
        except psycopg.Error as exc:
            log.warning("engine %s: cannot renew the lease: %s", self.name, str(exc).strip())
            self._drop_connection()
            renewed = None
        if renewed is None:
            self._valid_until = 0.0
            self.acquired_at = None
            return False
        self._valid_until = started + self.lease_s
        self._renewed = started
        return True

    def holder(self) -> str:
        """Who holds the lock, for the log (the pid written in the lock file, the lease's holder)."""
        if is_postgresql_url(self.store):
            try:
                row = self._connect().execute(_LEASE_READ, (self.name,)).fetchone()
            except Exception:  # for a log line only
                row = None
            return str(row[0]) if row else "another engine"
        pid = pidlock.holder(self.data_dir / self._file_name())
        return f"pid {pid}" if pid else "another engine"

    def _drop_connection(self) -> None:
        self._valid_until = 0.0
        try:
            self._conn.close()
        except Exception:  # closing only
            pass
        self._conn = None

    def give_up(self) -> None:
        """Hand the lease over now (others need not wait for it to run out)."""
        self.acquired_at = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            pidlock.release(fd)
        if self._conn is not None and self._valid_until:
            self._valid_until = 0.0
            try:
                self._conn.execute(_LEASE_GIVE_UP, (self.name, self.holder_id))
            except Exception as exc:  # it runs out by itself
                log.warning("engine %s: cannot give the lease up (it runs out in %g s): %s",
                            self.name, self.lease_s, exc)

    def release(self) -> None:
        self.give_up()
        if self._conn is not None:
            self._drop_connection()


def worker_id() -> str:
    """A name for this worker in the leases: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseBudget:
    """How many partitions a worker of `count` takes. At most one free partition per `interval`
    seconds, so workers that start together split them instead of the first one taking all; on
    PostgreSQL at most a fair share, ceil(count / live workers) (each worker heartbeats in
    `engine_worker`), and a worker holding more hands one over per `interval`, so a worker that
    joins later gets its share. A worker that dies or hangs stops heartbeating: after `ttl` the
    others' shares grow and they take its partitions."""

    def __init__(self, interval: float, count: int = 1, *, store: str | None = None,
                 holder_id: str | None = None, ttl: float = LEASE_S):
        self.interval = interval
        self.count = count
        self.store = store if store and is_postgresql_url(store) else None
        self.holder_id = holder_id or worker_id()
        self.ttl = ttl
        self.lock = threading.RLock()
        self.held: Callable[[], int] = lambda: 0  # partitions this worker holds (EngineWorker)
        self.live = 1  # live workers, as last counted
        self._last: float | None = None
        self._beat: float | None = None
        self._conn: Any = None

    def may_take(self) -> bool:
        with self.lock:
            if self._last is not None and time.monotonic() - self._last < self.interval:
                return False
            return self.held() < self.fair_share()

    def took(self) -> None:
        self._last = time.monotonic()

    def should_shed(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if self._last is not None and now - self._last < self.interval:
                return False
            if self.held() <= self.fair_share():
                return False
            self._last = now
            return True

    def fair_share(self) -> int:
        self._heartbeat()
        return -(-self.count // max(1, self.live))

    def _heartbeat(self) -> None:
        """Say this worker lives and count the live ones, every third of `ttl` at most."""
        if self.store is None:
            return
        now = time.monotonic()
        if self._beat is not None and now - self._beat < min(self.interval, self.ttl / 3):
            return
        import psycopg

        try:
            if self._conn is None:
                self._conn = psycopg.connect(self.store, autocommit=True, connect_timeout=10)
            conn = self._conn
            conn.execute("INSERT INTO engine_worker (worker, expires_at) VALUES "
                         "(%s, EXTRACT(EPOCH FROM clock_timestamp()) + %s) ON CONFLICT (worker) DO UPDATE "
                         "SET expires_at = excluded.expires_at", (self.holder_id, self.ttl))
            conn.execute("DELETE FROM engine_worker WHERE expires_at < EXTRACT(EPOCH FROM clock_timestamp()) - 3600")
            row = conn.execute("SELECT COUNT(*) FROM engine_worker "
                               "WHERE expires_at >= EXTRACT(EPOCH FROM clock_timestamp())").fetchone()
        except psycopg.Error as exc:
            log.warning("engine: cannot count the live workers: %s", str(exc).strip())
            self.close()
            return
        self._beat = now
        self.live = max(1, int(row[0]) if row else 1)

    def close(self) -> None:
        """Leave: the others count this worker out at once."""
        if self._conn is not None:
            try:
                self._conn.execute("DELETE FROM engine_worker WHERE worker = %s", (self.holder_id,))
            except Exception:  # it runs out by itself
                pass
            try:
                self._conn.close()
            except Exception:  # closing only
                pass
            self._conn = None


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
        self.lease_s = float(config.get("lease_s") or LEASE_S)
        self.worker_id = worker_id()
        self.budget = LeaseBudget(self.poll_s, self.count, store=self.store_setting, holder_id=self.worker_id,
                                  ttl=self.lease_s) if self.count > 1 else None
        if self.budget is not None:
            self.budget.held = lambda: sum(1 for p in self.partitions if p.lock.held())
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
            self._start_partitions()
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

    def _start_partitions(self) -> None:
        """Partitions that never ran start at the log's end now, all at once: a partition is
        taken (and loaded) later, by whichever worker, and must not skip what came in meanwhile.
        A partition another worker started first is left as it is (the commit is fenced)."""
        from carecard.host.storage import EngineCommit, StoreError

        if self.count <= 1:
            return  # the one engine starts when it is loaded, as before partitions
        runner = self.partitions[0].runner
        head = runner.eventlog.last_seq()
        for partition in self.partitions:
            if runner.store.load_engine(partition.name) is None:
                try:
                    runner.store.commit_engine(partition.name, EngineCommit(cursor=head, now=self.clock(),
                                                                            fence=-1.0))
                except StoreError:  # another worker started it first
                    pass

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
        lock = EngineLock(self.store_setting, self.data_dir, name, budget=self.budget, lease_s=self.lease_s,
                          holder_id=self.worker_id)
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

    def catch_up(self, timeout: float = 30.0) -> bool:
        """Steps until every partition has read the log to its end and run its clock to now."""
        deadline = time.monotonic() + timeout
        while self.sync(max(0.0, deadline - time.monotonic())):
            if not any(partition.thread.behind for partition in self.partitions):
                return True
        return False

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
        if self.budget is not None:
            self.budget.close()


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
    simulation = None
    if config.get("simulation_clock"):
        from carecard.host.simclock import SimulationClock, SimulationClockError

        try:
            simulation = SimulationClock(Path(config["simulation_clock"]), writable=True)
        except SimulationClockError as exc:
            out.send(f"error {exc}\n")
            return 2
    worker = EngineWorker(config, simulation.engine if simulation is not None else clock)
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

    async def pace(simulation: Any) -> None:
        # a simulator moved the engine's clock: catch up to it, then tell it (host/simclock.py)
        stepped = simulation.engine_stepped()
        while True:
            now = simulation.engine()
            if now > stepped:
                await loop.run_in_executor(None, worker.catch_up)
                simulation.set_engine_stepped(now)
                stepped = now
            else:
                await asyncio.sleep(SIMULATION_POLL_S)

    tasks = [asyncio.create_task(commands()), asyncio.create_task(report())]
    if simulation is not None:
        tasks.append(asyncio.create_task(pace(simulation)))
    await done.wait()
    await loop.run_in_executor(None, worker.stop)
    for task in [*tasks[1:], *syncs]:
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
