"""The receiver service: wires transports, ingest, store, sinks and metrics on one event loop.

Group commit: when the writer thread is idle, a batch is committed after at most
`batch_max_delay_ms` (or at once when it holds `batch_max_frames`); while the writer commits one
batch, the next one collects frames. Acks are sent only from the commit's completion, so nothing
uncommitted is ever acked. When a batch grows far past `batch_max_frames` while the writer is
busy, the UDP sockets stop being read (the kernel buffer holds the datagrams) until it catches up.

Start-up problems (port in use, unreadable config or key file, a second receiver on the same
data folder) raise StartupError with one line. `shutdown()`: stop reading, commit what was
collected, send its acks, drain the sinks (bounded), close.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from carecard.host import pidlock
from carecard.host.keyfile import KeyFileError, check_private
from carecard.host.paths import ingest_db_path
from carecard.host.receiver.config import ReceiverConfig
from carecard.host.receiver.ingest import Ingest, PendingBatch
from carecard.host.receiver.metrics import Metrics, MetricsServer, add_engine_gauges
from carecard.host.receiver.registry import keys_path, load_key_file
from carecard.host.receiver.childproc import ChildProcessError
from carecard.host.receiver.sinkproc import SinkProcess
from carecard.host.storage import (STORE_SQLITE, EventLogReader, IngestStore, StoreError, event_log_for,
                                   ingest_store_for)
from carecard.host.storage.sqlite.store import check_database, recovery_steps
from carecard.host.receiver.transports import SerialListener, TcpListener, TransportError, UdpListener
from carecard.protocol import KeyRing

log = logging.getLogger("carecard.receiver")

LOCK_FILE_NAME = "receiver.lock"
MAINTENANCE_INTERVAL_S = 1.0
EXPIRE_INTERVAL_S = 60.0
SUMMARY_INTERVAL_S = 60.0
BACKLOG_FACTOR = 8  # pause reading when the collecting batch is this many times batch_max_frames
# Event log pruning (of the events that are not frames': a frame's row is its archive): at most
# one prune per commit and per PRUNE_INTERVAL_S, of at most PRUNE_MAX_ROWS events (a few ms of
# SQLite work on the writer thread), up to what every sink has delivered and persisted
# (SinkSet.prunable_seq). That removes up to 10x PRUNE_MAX_ROWS events a second, more than ingest
# can append, so those events stay at about what the slowest sink still has to deliver.
PRUNE_INTERVAL_S = 0.1
PRUNE_MAX_ROWS = 8192
# --accept-lost-history moves every device's downlink counter this far past what the database
# holds: more acks than a card gets in decades (one a minute for 31 years) since the backup, or
# 4096 restarts' reservations (ingest.DOWNLINK_BLOCK).
DOWNLINK_JUMP = 1 << 24


class StartupError(RuntimeError):
    """The receiver cannot start; the message is one line saying why and what to do."""


def _drop_frame(*_args: Any) -> str:
    return "shutting_down"


class Receiver:
    def __init__(self, config: ReceiverConfig, *, engine_clock: Callable[[], float] | None = None):
        """`engine_clock`: the alert engine's clock (default the real time; tests inject one)."""
        config.ensure_listener()
        self.engine_clock = engine_clock
        self.clock: Callable[[], float] = time.time  # stamps received_at; the world's time of day
        if config.simulation_clock is not None:
            from carecard.host.simclock import SimulationClock, SimulationClockError

            try:
                self.clock = SimulationClock(config.simulation_clock).receiver
            except SimulationClockError as exc:
                raise StartupError(str(exc)) from None
        self.engine: Any = None  # the alert engine's child process (carecard.host.engine.process.EngineProcess)
        self.alert_http: Any = None  # inbound acknowledgements (carecard.host.engine.inbound)
        self.alert_mqtt: Any = None
        self._engine_resources: list[Any] = []
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.metrics = Metrics()
        self.keyring = KeyRing()
        self._raw_keys: dict[int, bytes] = {}
        self._keys_signature: tuple[int, int, int] | None = None
        self._generation = -1
        self.store: IngestStore | None = None
        self.ingest: Ingest | None = None
        self.sinks: Any = None
        self.eventlog: EventLogReader | None = None
        self.udp: list[UdpListener] = []
        self.tcp: list[TcpListener] = []
        self.serial: list[SerialListener] = []
        self.metrics_server: MetricsServer | None = None
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="carecard-ingest-writer")
        self._inflight: asyncio.Future[Any] | None = None
        self._inflight_done: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._pruned_upto = 0  # every prunable event (not a frame's) up to this seq is gone
        self._log_head = 0  # the newest event log seq this receiver committed or heard of
        self._prune_due = 0.0  # monotonic time of the next allowed prune
        self._tasks: list[asyncio.Task[Any]] = []
        self._started = False
        self._stopping = False
        self._closed = False
        self.ready = threading.Event()

    # --- start-up -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open everything; raise StartupError (after undoing what was opened) on a problem."""
        self._loop = asyncio.get_running_loop()
        self._inflight_done = asyncio.Event()
        self._inflight_done.set()
        try:
            await self._start()
        except BaseException:
            for child in (self.sinks, self.engine):
                if child is not None:
                    try:
                        await child.stop(drain_timeout=0)
                    except Exception:  # never started: nothing to stop
                        pass
            await self._close_resources()
            raise
        self._started = True
        self.ready.set()

    async def _start(self) -> None:
        config = self.config
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StartupError(f"data folder {self.data_dir}: cannot create it: {exc.strerror}") from None
        self._take_lock()
        self._load_keys(startup=True)
        if config.store == STORE_SQLITE:
            self._check_database()
        try:
            self.store = ingest_store_for(config.store, self.data_dir, config.ingest.durability)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        self._check_history()
        ingest = self.ingest = Ingest(self.store, self.keyring, self.metrics, settings=config.ingest,
                                      budget=config.budget, downlinks=config.downlinks)
        self._generation = self.store.generation()
        ingest.load_registry(self.store.load_devices(), self.store.open_commands())
        self._warn_unregistered()

        if config.sinks_in == "process":
            self.sinks = SinkProcess(config.sinks, self.data_dir, log_format=config.log_format,
                                     log_level=config.log_level, log_file=config.log_file,
                                     store=config.store)
        else:
            from carecard.host.sinks import ConfigError as SinkConfigError, SinkSet

            try:
                self.eventlog = event_log_for(config.store, self.data_dir)
                self.sinks = SinkSet.from_config(config.sinks, self.data_dir, self.eventlog, config.store)
            except SinkConfigError as exc:
                raise StartupError(f"{config.source}: {exc}") from None
            except Exception as exc:
                raise StartupError(f"sinks: {exc}") from None

        self._open_engine()

        handle = ingest.handle
        for endpoint in config.udp:
            listener = UdpListener(endpoint, handle, self._on_input, self.metrics,
                                   receive_buffer=config.ingest.udp_receive_buffer, clock=self.clock)
            self.udp.append(listener)
            self._open(listener.open)
        for endpoint in config.tcp:
            tcp = TcpListener(endpoint, handle, self._on_input, self.metrics, ingest.budget.charge,
                              max_connections=config.tcp_settings.max_connections,
                              max_per_address=config.tcp_settings.max_connections_per_address,
                              idle_timeout=config.tcp_settings.idle_timeout_s, clock=self.clock)
            self.tcp.append(tcp)
            try:
                await tcp.open()
            except TransportError as exc:
                raise StartupError(str(exc)) from None
        for port in config.serial:
            serial = SerialListener(port, handle, self._on_input, self.metrics, ingest.budget.charge,
                                    clock=self.clock)
            self.serial.append(serial)
            self._open(serial.open)
        if config.metrics is not None:
            self.metrics_server = MetricsServer(self.metrics, config.metrics.host, config.metrics.port,
                                                not_ready=self.not_ready)
            try:
                await self.metrics_server.start()
            except OSError as exc:
                from carecard.host.receiver.transports import _describe_os_error

                self.metrics_server = None
                raise StartupError(f"metrics {config.metrics}: {_describe_os_error(exc)}") from None
        self._register_gauges()

        # the sinks' and the engine's processes start side by side (each takes an interpreter's start-up)
        started = await asyncio.gather(self.sinks.start(),
                                       *([self.engine.start()] if self.engine is not None else []),
                                       return_exceptions=True)
        for outcome in started:
            if isinstance(outcome, BaseException) and not isinstance(outcome, ChildProcessError):
                raise outcome
        if isinstance(started[0], ChildProcessError):
            self.sinks = None
            raise StartupError(f"{config.source}: {started[0]}") from None
        if len(started) > 1 and isinstance(started[1], ChildProcessError):
            raise StartupError(f"alert engine: {started[1]}") from None
        loop = self._loop
        assert loop is not None
        for listener in self.udp:
            listener.start(loop)
        for tcp in self.tcp:
            await tcp.start()
        for serial in self.serial:
            serial.start(loop)
        await self._open_inbound()
        self._tasks.append(asyncio.create_task(self._poll_registry(), name="registry-poll"))
        self._tasks.append(asyncio.create_task(self._maintenance(), name="maintenance"))
        log.info("receiver started: data %s, %d devices with keys, sinks: %s%s",
                 self.data_dir, len(self.keyring), ", ".join(self.sinks.names) or "none",
                 f", metrics on http://{config.metrics.host}:{self.metrics_server.port}/metrics"
                 if self.metrics_server else "",
                 extra={"fields": {"config": config.source, "metrics_port": self.metrics_server.port
                                   if self.metrics_server else None}})

    def _open_engine(self) -> None:
        """The alert engine: a process of its own reading the event log (carecard.host.engine.process),
        started as this receiver's child unless it runs separately (`[engine] run`)."""
        engine = self.config.engine
        if not engine.enabled or engine.run != "child":
            return
        from carecard.host.engine.process import EngineProcess, engine_config

        self.engine = EngineProcess(engine_config(self.config), clock=self.engine_clock)
        self.engine.on_commit = self._engine_committed

    async def _open_inbound(self) -> None:
        """The inbound acknowledgement paths ([engine] http, mqtt_sink), on a store of their own."""
        engine = self.config.engine
        if not engine.enabled or (engine.http is None and engine.mqtt_sink is None):
            return
        from carecard.host.engine.inbound import AlertActionServer, MqttAlertActions
        from carecard.host.receiver.config import ConfigError, mqtt_sink_table
        from carecard.host.sinks.base import ConfigError as SinkConfigError

        try:
            store = ingest_store_for(self.config.store, self.data_dir, self.config.ingest.durability)
        except StoreError as exc:
            raise StartupError(f"alert actions: {exc}") from None
        self._engine_resources.append(store)
        if engine.http is not None:
            assert engine.http_secret is not None
            self.alert_http = AlertActionServer(store, engine.http_secret, engine.http.host, engine.http.port)
            try:
                await self.alert_http.start()
            except OSError as exc:
                from carecard.host.receiver.transports import _describe_os_error

                self.alert_http = None
                raise StartupError(f"[engine] http {engine.http}: {_describe_os_error(exc)}") from None
        if engine.mqtt_sink is not None:
            try:
                table = mqtt_sink_table(self.config)
                self.alert_mqtt = MqttAlertActions(store, table, f"{self.config.source} sink {engine.mqtt_sink!r}")
            except (ConfigError, SinkConfigError) as exc:
                raise StartupError(str(exc)) from None
            self.alert_mqtt.start()

    def _engine_committed(self, last_seq: int, commands: int) -> None:
        """The engine committed a step: its alert events are in the log up to `last_seq` (the
        sinks carry them), `commands` check-in prompts in the command queue (the next ack carries
        them)."""
        if commands and not self._closed and self.store is not None:
            self.check_registry()
        self._log_head = max(self._log_head, last_seq)
        if self.sinks is not None and last_seq and not self._closed:
            self.sinks.notify(last_seq)

    def _check_history(self) -> None:
        """Keys without their replay and counter history (the database deleted, emptied or
        replaced): recorded frames would be stored as new and downlink counters used again, so
        refuse, unless the operator accepts it (then every downlink counter jumps ahead)."""
        store = self.store
        assert store is not None
        try:
            lost = store.devices_without_history(self._raw_keys)
            if self.config.accept_lost_history:
                exhausted = store.jump_downlink_counters(self._raw_keys, DOWNLINK_JUMP)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        path = store.path
        if self.config.accept_lost_history:
            log.warning("--accept-lost-history: downlink counters of every device moved %d ahead; "
                        "%d devices with keys had no replay history in %s (frames recorded before "
                        "the loss can be stored again as new until the cards' counters pass them)",
                        DOWNLINK_JUMP, len(lost), path)
            for device in exhausted:
                log.error("device %s: its downlink counters are used up: provision it again with a "
                          "new key and reset the card's counters", device)
            return
        if lost:
            raise StartupError(
                f"{len(lost)} device{'s' if len(lost) > 1 else ''} with keys in "
                f"{keys_path(self.data_dir)} {'have' if len(lost) > 1 else 'has'} no replay and counter "
                f"history in {path} (e.g. {lost[0]}; was the database deleted, emptied or replaced?): "
                "recorded frames would be stored as new and downlink counters used again. Put the "
                "database back or restore its latest backup; if it is gone for good, start once with "
                "--accept-lost-history, which moves every downlink counter ahead "
                "(docs/receiver.md, \"Lost history\")")

    def _check_database(self) -> None:
        """A damaged page must stop the receiver before it acks anything on top of it: SQLite's
        quick check of every page (O(size) reads, once at start-up)."""
        path = ingest_db_path(self.data_dir)
        if not path.exists():
            return
        problems = check_database(path)
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise StartupError(f"database {path} is damaged (quick_check: {problems[0]}{more}); "
                               f"`carecard check --data {self.data_dir}` lists every problem; "
                               f"{recovery_steps(path)}")

    @staticmethod
    def _open(opener: Callable[[], None]) -> None:
        try:
            opener()
        except TransportError as exc:
            raise StartupError(str(exc)) from None

    def _take_lock(self) -> None:
        path = self.data_dir / LOCK_FILE_NAME
        try:
            self._lock_fd = pidlock.try_lock(path)
        except OSError as exc:
            raise StartupError(f"data folder {self.data_dir}: cannot create {path.name}: {exc.strerror}") from None
        if self._lock_fd is None:
            other = pidlock.holder(path) or "?"
            raise StartupError(f"data folder {self.data_dir} is in use by another receiver (pid {other}): "
                               "stop it or use another --data folder")

    def not_ready(self) -> str | None:
        """None when the receiver is ready (every listener bound and accepting, the store open,
        the sinks up), else why not (GET /healthz)."""
        if self._stopping or self._closed:
            return "stopping"
        if not self._started:
            return "starting"
        if self.store is None:
            return "store closed"
        if not getattr(self.sinks, "up", True):
            return "sink process down (restarting)"
        for tcp in self.tcp:
            if not tcp.serving:
                return f"TCP {tcp.endpoint} not accepting"
        return None

    # --- keys and registry ------------------------------------------------------------------------

    def _keys_stat(self) -> tuple[int, int, int] | None:
        try:
            st = keys_path(self.data_dir).stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load_keys(self, startup: bool = False) -> None:
        signature = self._keys_stat()
        try:
            keys = load_key_file(self.data_dir)
        except KeyFileError as exc:
            if startup:
                raise StartupError(f"bad key file: {exc}") from None
            log.error("key file changed but cannot be read, keeping the keys loaded before: %s", exc)
            self._keys_signature = signature
            return
        path = keys_path(self.data_dir)
        if signature is not None:
            warning = check_private(path)
            if warning:
                log.warning(warning)
        elif startup:
            log.warning("no key file %s yet: every frame is rejected until devices are added "
                        "(carecard devices add / import)", path)
        for device, key in keys.items():
            if self._raw_keys.get(device) != key:
                self.keyring.add(device, key)
        for device in set(self._raw_keys) - set(keys):
            self.keyring.remove(device)
        changed = len(set(keys.items()) ^ set(self._raw_keys.items()))
        self._raw_keys = keys
        self._keys_signature = signature
        if changed and not startup:
            log.info("key file reloaded: %d devices with keys", len(keys))

    def _warn_unregistered(self) -> None:
        assert self.ingest is not None
        missing = [d for d in self._raw_keys if d not in self.ingest.devices]
        if missing:
            log.warning("%d devices have a key but no registry entry (e.g. %s): add them with "
                        "`carecard devices add` to give them a name", len(missing), missing[0])

    def check_registry(self) -> bool:
        """Reload keys, devices and commands if an admin changed them. True if reloaded."""
        assert self.store is not None and self.ingest is not None
        try:
            generation = self.store.generation()
        except Exception as exc:
            log.error("cannot read the registry generation: %s", exc)
            return False
        signature = self._keys_stat()
        if generation == self._generation and signature == self._keys_signature:
            return False
        if signature != self._keys_signature:
            self._load_keys()
        try:
            self.ingest.load_registry(self.store.load_devices(), self.store.open_commands())
        except Exception as exc:
            log.error("cannot reload the registry: %s", exc)
            return False
        self._generation = generation
        log.info("registry reloaded: %d devices, %d open commands", len(self.ingest.devices),
                 self.ingest.open_command_count)
        return True

    async def _poll_registry(self) -> None:
        interval = self.config.ingest.registry_poll_s
        while True:
            await asyncio.sleep(interval)
            self.check_registry()

    async def _maintenance(self) -> None:
        assert self.ingest is not None
        ingest = self.ingest
        last_expire = last_summary = time.monotonic()
        last_snapshot = self.metrics.snapshot()
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            budget = ingest.budget
            budget.refresh()
            for what, source in budget.drain_events():
                if what == "over":
                    log.warning("source %s is over its reject budget: its unauthenticated frames are "
                                "dropped unread", source, extra={"fields": {"source": str(source)}})
                else:
                    log.info("source %s is back within its reject budget", source)
            now = time.monotonic()
            if now - last_expire >= EXPIRE_INTERVAL_S:
                ingest.expire_commands(self.clock())
                last_expire = now
            if now - last_summary >= SUMMARY_INTERVAL_S:
                snapshot = self.metrics.snapshot()
                self._log_summary(last_snapshot, snapshot, now - last_summary)
                last_snapshot, last_summary = snapshot, now
            self._on_input()  # device statistics and expiries ride along with the next commit

    def _log_summary(self, before: dict[str, Any], after: dict[str, Any], seconds: float) -> None:
        def delta(key: str) -> int:
            a, b = after[key], before[key]
            if isinstance(a, dict):
                return sum(a.values()) - sum(b.values())
            return a - b

        received = delta("received")
        if not received:
            return
        log.info("last %.0f s: %d frames in, %d stored, %d duplicates, %d rejected, %d acks",
                 seconds, received, delta("stored"), delta("duplicates"), delta("rejected"),
                 delta("acks_sent"),
                 extra={"fields": {"rejected_by_reason": {k: v - before["rejected"].get(k, 0)
                                                         for k, v in after["rejected"].items()
                                                         if v - before["rejected"].get(k, 0)}}})

    def _register_gauges(self) -> None:
        ingest = self.ingest
        assert ingest is not None
        m = self.metrics
        m.gauge("devices_registered", "Devices in the registry.", lambda: len(ingest.devices))
        m.gauge("devices_with_keys", "Devices with a key in the key file.", lambda: len(self.keyring))
        m.gauge("devices_seen_last_hour", "Devices that sent an authentic frame in the last hour.",
                lambda: ingest.devices_seen_since(self.clock() - 3600))
        m.gauge("sources_over_budget", "Sources currently over their reject budget.",
                lambda: len(ingest.budget.over))
        m.gauge("tcp_connections", "Open TCP connections.", lambda: sum(len(t.connections) for t in self.tcp))
        m.gauge("commands_open", "Downlink commands queued or sent, not yet confirmed.",
                lambda: ingest.open_command_count)
        m.gauge("batch_collecting_frames", "Frames waiting for the next commit.", lambda: len(ingest.batch))
        if self.sinks is not None:
            m.sink_stats = self.sinks.stats
        if self.engine is not None:
            engine = self.engine

            add_engine_gauges(m, engine.stats)
            m.gauge("engine_process_restarts", "Times the alert engine's process was restarted.",
                    lambda: engine.restarts)
            m.log_head = self._known_log_head
        if self.config.engine.enabled:
            for path in ("http", "mqtt"):
                for reason in ("accepted", "missing_signature", "bad_signature", "bad_timestamp",
                               "stale_timestamp", "replayed", "bad_request", "unknown_alert", "alert_state"):
                    if path == "mqtt" and "signature" in reason or path == "mqtt" and reason in (
                            "bad_timestamp", "stale_timestamp", "replayed"):
                        continue
                    m.gauge(f"alert_actions_{path}_{reason}", f"Inbound {path.upper()} alert requests: {reason}.",
                            lambda path=path, reason=reason: self._inbound_count(path, reason))
        m.gauge("event_log_pruned_upto", "Every event up to this seq other than a frame's (frames' "
                "rows are the archive) has been pruned from the log (all sinks delivered it).",
                lambda: self._pruned_upto)

    def _known_log_head(self) -> int:
        """The newest event log seq this receiver knows: its own commits, its engine's, and the
        head its sinks last read (other receivers' commits on a shared store show there)."""
        head = self._log_head
        if self.sinks is not None:
            for stats in self.sinks.stats().values():
                seen = stats.get("head")
                if isinstance(seen, int) and seen > head:
                    head = seen
        return head

    def _inbound_count(self, path: str, reason: str) -> int:
        server = self.alert_http if path == "http" else self.alert_mqtt
        return 0 if server is None else server.counts[reason]

    # --- group commit -----------------------------------------------------------------------------

    def _on_input(self) -> None:
        ingest = self.ingest
        if ingest is None:
            return
        size = len(ingest.batch)
        settings = self.config.ingest
        if self._inflight is not None:
            if size >= settings.batch_max_frames * BACKLOG_FACTOR and not self._paused:
                self._paused = True
                for listener in self.udp:
                    listener.pause()
            return
        if size >= settings.batch_max_frames or settings.batch_max_delay_ms <= 0 or size == 0:
            self._submit()
        elif self._timer is None:
            assert self._loop is not None
            self._timer = self._loop.call_later(settings.batch_max_delay_ms / 1000.0, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._inflight is None:
            self._submit()

    def _submit(self, force_stats: bool = False) -> None:
        assert self.ingest is not None and self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._plan_prune()
        batch = self.ingest.take_batch(self.clock(), force_stats=force_stats)
        if batch is None:
            return
        assert self.store is not None and self._inflight_done is not None
        # The writes are CPU work: done here, on the event loop (no second Python thread
        # competing for the interpreter lock); only the COMMIT, which waits for the disk, goes
        # to the writer thread. Acks are sent from its completion.
        started = time.perf_counter()
        try:
            last_seq = self.store.prepare(batch.commit)
        except StoreError as exc:
            future: asyncio.Future[Any] = self._loop.create_future()
            future.set_exception(exc)
            self._inflight_done.clear()
            self._committed(future, batch)
            return
        self.ingest.prepared(batch)
        future = self._loop.run_in_executor(self._writer, self._finish, last_seq, started)
        self._inflight = future
        self._inflight_done.clear()
        future.add_done_callback(lambda f: self._committed(f, batch))

    def _finish(self, last_seq: int, started: float) -> tuple[int, float, int]:
        assert self.store is not None
        pruned = self.store.finish()
        return last_seq, time.perf_counter() - started, pruned

    def _plan_prune(self) -> None:
        """Ask the collecting batch to prune the event log up to what every sink has delivered
        (outside the hot path: at most every PRUNE_INTERVAL_S, bounded, on the writer thread)."""
        sinks = self.sinks
        if sinks is None or self.ingest is None:
            return
        now = time.monotonic()
        if now < self._prune_due:
            return
        try:
            target = int(sinks.prunable_seq())
        except Exception as exc:  # never let pruning get in the way of ingest
            log.debug("no prunable seq from the sinks: %s", exc)
            return
        if target > self._pruned_upto:
            self._prune_due = now + PRUNE_INTERVAL_S
            commit = self.ingest.batch.commit
            commit.prune_upto = target
            commit.prune_max_rows = PRUNE_MAX_ROWS

    def _committed(self, future: asyncio.Future[Any], batch: PendingBatch) -> None:
        ingest = self.ingest
        assert ingest is not None and self._inflight_done is not None
        self._inflight = None
        try:
            last_seq, seconds, pruned = future.result()
        except BaseException as exc:
            ingest.failed(batch, exc)
        else:
            if batch.commit.prune_upto:
                self.metrics.events_pruned += pruned
                if pruned < batch.commit.prune_max_rows:  # else more to delete, at the next prune
                    self._pruned_upto = max(self._pruned_upto, batch.commit.prune_upto)
            acks = ingest.committed(batch, last_seq, seconds)
            for send, address, ack in acks:
                send(ack, address)
            self.metrics.acks_sent += len(acks)
            self._log_head = max(self._log_head, last_seq)
            if last_seq and self.sinks is not None:
                # idle: nothing collected meanwhile, so a sink lingering for more gains nothing
                self.sinks.notify(last_seq, idle=not len(ingest.batch))
            if last_seq and self.engine is not None:
                self.engine.notify()
        self._inflight_done.set()
        if self._paused:
            self._paused = False
            for listener in self.udp:
                listener.resume()
        if len(ingest.batch) and not self._closed:
            self._submit()

    async def flush(self) -> None:
        """Commit everything collected so far and send its acks."""
        assert self._inflight_done is not None
        while True:
            await self._inflight_done.wait()
            if self._inflight is not None:
                continue
            ingest = self.ingest
            if ingest is None or not (len(ingest.batch) or ingest.batch.commit or ingest.stats_pending):
                return
            self._submit(force_stats=True)
            if self._inflight is None:
                return

    # --- shutdown -------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop reading, commit and ack what was collected, drain the sinks, close everything."""
        if self._closed:
            return
        self._stopping = True
        log.info("receiver stopping: committing and acking what was received, draining sinks")
        for listener in self.udp:
            listener.handle = _drop_frame
            listener.pause()
        for tcp in self.tcp:
            tcp.handle = _drop_frame
            tcp.pause()
        for serial in self.serial:
            serial.handle = _drop_frame
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, serial.pause) for serial in self.serial))
        if self._started:
            await self.flush()
        if self.engine is not None:
            # its last step's alerts reach the log before the sinks drain
            try:
                await self.engine.stop(drain_timeout=self.config.drain_timeout_s)
            except Exception as exc:
                log.error("stopping the alert engine failed: %s", exc)
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.sinks is not None and self._started:
            try:
                await self.sinks.stop(drain_timeout=self.config.drain_timeout_s)
            except Exception as exc:
                log.error("stopping the sinks failed: %s", exc)
        await self._close_resources()
        snapshot = self.metrics.snapshot()
        log.info("receiver stopped: %d frames stored, %d duplicates, %d rejected, %d acks sent",
                 sum(snapshot["stored"].values()), snapshot["duplicates"],
                 sum(snapshot["rejected"].values()), snapshot["acks_sent"],
                 extra={"fields": {"commit_failures": snapshot["commit_failures"],
                                   "downlink_blocks_moved": snapshot["downlink_blocks_moved"]}})

    async def _close_resources(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for listener in self.udp:
            listener.close()
        for tcp in self.tcp:
            await tcp.close()
        for serial in self.serial:
            await asyncio.get_running_loop().run_in_executor(None, serial.close)
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        self._writer.shutdown(wait=True)
        if self.alert_http is not None:
            await self.alert_http.stop()
            self.alert_http = None
        if self.alert_mqtt is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.alert_mqtt.stop)
            self.alert_mqtt = None
        for resource in self._engine_resources:
            try:
                resource.close()
            except Exception:  # closing only
                pass
        self._engine_resources.clear()
        if self.eventlog is not None:
            self.eventlog.close()
            self.eventlog = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            pidlock.release(fd)

    # --- conveniences -----------------------------------------------------------------------------

    @property
    def udp_ports(self) -> list[int]:
        return [listener.port for listener in self.udp]

    @property
    def tcp_ports(self) -> list[int]:
        return [tcp.port for tcp in self.tcp]

    def sink_delivered(self) -> dict[str, int]:
        """Events delivered so far, per sink."""
        if self.sinks is None:
            return {}
        return {name: int(s.get("delivered") or 0) for name, s in self.sinks.stats().items()}


async def serve(config: ReceiverConfig, stop: asyncio.Event,
                started: Callable[[Receiver], None] | None = None, *,
                engine_clock: Callable[[], float] | None = None) -> Receiver:
    """Run a receiver until `stop` is set, then shut it down gracefully."""
    receiver = Receiver(config, engine_clock=engine_clock)
    await receiver.start()
    if started is not None:
        started(receiver)
    try:
        await stop.wait()
    finally:
        await receiver.shutdown()
    return receiver


class ReceiverThread:
    """A receiver on its own event loop in a background thread (the demo, tests, benchmarks).

        with ReceiverThread(config) as rt:
            port = rt.receiver.udp_ports[0]
    """

    def __init__(self, config: ReceiverConfig, *, engine_clock: Callable[[], float] | None = None):
        self.config = config
        self.engine_clock = engine_clock
        self.receiver: Receiver | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 30.0) -> Receiver:
        self._thread = threading.Thread(target=self._run, name="carecard-receiver", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise StartupError(f"receiver did not start within {timeout:g} s")
        if self._error is not None:
            raise self._error
        assert self.receiver is not None
        return self.receiver

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def started(receiver: Receiver) -> None:
                self.receiver = receiver
                self._started.set()

            await serve(self.config, self._stop, started, engine_clock=self.engine_clock)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc
        finally:
            self._started.set()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run `fn()` on the receiver's event loop and return its result."""
        assert self.loop is not None
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread is not None \
                and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None and not isinstance(self._error, StartupError):
            raise self._error

    def __enter__(self) -> "ReceiverThread":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
