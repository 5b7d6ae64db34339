"""The alert engine as a reader of the event log: the durable shell around the sans-I/O core.

One step (`EngineRunner.step`): read the events after the engine's cursor (in order; before each
one the timers due by its `received_at` fire, at their own time, as in `carecard replay`), handle
the acknowledge/resolve requests queued since (storage.AlertStore), let the clock run to now,
and commit everything the step produced in ONE transaction (storage.EngineStore.commit_engine):
the `alert` events appended to the event log (so every sink carries them), the alerts' rows,
the requests' outcomes, the check-in prompts queued as downlink commands (`checkin_prompt`, whose
`prompt_id` is the alert's: the card's answer names it), the changed devices' states and the
cursor. A crash before the commit loses the step's work and nothing else: the next start
resumes from the last commit and does it again, so no alert is raised twice. A commit that fails
makes the runner reload its last commit and retry.

`EngineThread` runs a runner in a thread of the engine's process (carecard.host.engine.process:
`carecard engine`, or the child `carecard receive` starts), woken when ingest committed and at
least every `poll_s` (timers, requests). Given a lock, it steps only while it holds it and stands
by (trying it every `poll_s`) otherwise.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from carecard.host.engine.core import Action, Engine, EngineError, Notify, SendCheckin, UnknownAlert, event_seconds
from carecard.host.engine.settings import Settings, SettingsError
from carecard.host.storage import (
    ACTION_DONE,
    ACTION_REFUSED,
    AlertRecord,
    EngineCommit,
    EngineCommitResult,
    EventLogError,
    EventLogReader,
    StoreError,
)

log = logging.getLogger("carecard.engine")

ENGINE_NAME = "engine"
# Events per step: a step's commit holds the database's write lock, which ingest waits for, so
# a step stays small (a few ms). Behind the log (a step read all it asked for), each next step
# asks for twice as many, up to MAX_STEP_EVENTS: a device's state is written once per step
# however many of its events the step read, so larger steps while catching up cut the commits'
# cost per event (the write lock is held for the rows, at most one per device, not the events).
STEP_EVENTS = 500
MAX_STEP_EVENTS = 4000
POLL_S = 1.0


@dataclass
class StepResult:
    events: int = 0  # events read from the log
    limit: int = 0  # events the step asked for: as many read means the engine is behind
    actions: list[Action] = field(default_factory=list)
    requests: int = 0  # acknowledge/resolve requests handled
    commit: EngineCommitResult | None = None


class EngineRunner:
    """The engine over a store's event log. Not thread-safe: one thread steps it. `store` is
    both a storage.AlertStore and a storage.EngineStore (SQLiteStore is)."""

    def __init__(self, store: Any, eventlog: EventLogReader, settings: Settings | None = None, *,
                 name: str = ENGINE_NAME, clock: Callable[[], float] = time.time,
                 step_events: int = STEP_EVENTS, max_step_events: int = MAX_STEP_EVENTS,
                 settings_loader: Callable[[], Settings] | None = None,
                 partition: tuple[int, int] | None = None):
        """`settings_loader`: the settings now (e.g. the settings file's, then the registry's);
        called at start-up and whenever the registry generation changes. `partition` (i, n): this
        runner follows only the devices whose IMEI modulo n is i (their events, alerts and
        requests; engine_partition); None: every device."""
        self.partition = partition
        self.store = store
        self.eventlog = eventlog
        self.settings_loader = settings_loader
        self._generation: int | None = None
        self.settings = settings or Settings()
        self.name = name
        self.clock = clock
        self.step_events = step_events
        self.max_step_events = max(step_events, max_step_events)
        self._limit = step_events  # the next step's read: grows while behind (MAX_STEP_EVENTS)
        self.engine = Engine(self.settings)
        self.cursor = 0
        self.fence = -1.0  # the checkpoint's saved_at as last loaded or committed (EngineCommit.fence)
        self.alerts: dict[str, AlertRecord] = {}  # alerts not resolved, as last committed
        self.rejected = 0  # events the engine could not use (not of the schema)
        self.unreadable = 0  # log rows that could not be read back
        self.requests_done = 0
        self.requests_refused = 0
        self.commit_failures = 0
        self.alert_events = 0
        self.loaded = False

    # --- start-up -------------------------------------------------------------------------------

    def load(self) -> None:
        """Restore the last commit (or, the first time, start at the end of the log: the engine
        follows what arrives from now on). Raises StoreError or EngineError."""
        self._reload_settings()
        checkpoint = self.store.load_engine(self.name)
        self.fence = -1.0 if checkpoint is None else checkpoint.saved_at
        if checkpoint is None:
            self.engine = Engine(self.settings)
            self.cursor = self.eventlog.last_seq()
            self.engine.now = self.clock()
        else:
            devices = {}
            for device, text in checkpoint.devices.items():
                try:
                    devices[str(device)] = json.loads(text)
                except ValueError as exc:
                    raise EngineError(f"engine {self.name!r}: the saved state of device {device} is not "
                                      f"JSON ({exc})") from None
            self.engine = Engine.restore(checkpoint.now, devices, self.settings)
            self.cursor = checkpoint.cursor
        self.alerts = {alert.id: alert for alert in
                       self.store.list_alerts(states=("open", "acknowledged")) if self._mine(alert.device)}
        self.loaded = True

    def _mine(self, device: Any) -> bool:
        if self.partition is None:
            return True
        try:
            return int(device) % self.partition[1] == self.partition[0]
        except (TypeError, ValueError):
            return self.partition[0] == 0  # not a device number: the first partition judges (rejects) it

    # --- one step -------------------------------------------------------------------------------

    def step(self) -> StepResult:
        """Read, judge, handle requests, commit. Raises StoreError (the runner has reloaded its
        last commit: call again later)."""
        if not self.loaded:
            self.load()
        engine = self.engine
        result = StepResult()
        out = result.actions
        if self.settings_loader is not None and self.store.generation() != self._generation:
            self._reload_settings()
            out += engine.update_settings(self.settings)
        result.limit = limit = self._limit
        # the clock is read before the log: every event stamped before `now` was committed
        # before it was read, so running the clock to `now` below cannot pass one unseen
        now = self.clock()
        try:
            entries = self.eventlog.entries_after(self.cursor, limit)
        except EventLogError as exc:
            entries = self._read_around(exc, limit)
        cursor = self.cursor
        for entry in entries:
            cursor = entry.seq
            if entry.message is None and entry.event.get("kind") == "alert":
                continue  # the engine's own output (and other hosts' alerts)
            event = entry.event
            if self.partition is not None and not self._mine(event.get("device")):
                continue  # another partition's device
            rx = event_seconds(event.get("received_at"))
            if rx is not None:
                out += engine.advance(rx)
            try:
                out += engine.feed(event)
            except EngineError as exc:
                self.rejected += 1
                log.warning("engine: event log seq %d skipped: %s", entry.seq, exc)
        result.events = len(entries)
        if len(entries) < limit:
            # caught up; while behind, the events not read yet come before `now` and may cancel
            # wake-ups due in between (the events' own times move the clock meanwhile)
            out += engine.advance(now)
        handled = self._requests(out)
        result.requests = len(handled)
        commit = self._commit_of(cursor, out, handled)
        if cursor == self.cursor and not (commit.events or commit.alerts or commit.actions
                                          or commit.commands or commit.devices):
            return result  # nothing to make durable (the clock alone is not worth a commit)
        try:
            result.commit = self.store.commit_engine(self.name, commit)
        except StoreError:
            self.commit_failures += 1
            self.loaded = False  # the in-memory engine is ahead of what is stored: reload
            raise
        self.cursor = cursor
        self.fence = result.commit.saved_at
        self._limit = min(2 * limit, self.max_step_events) if len(entries) >= limit else self.step_events
        for request_id, outcome, _detail, _at in handled:
            if outcome == ACTION_DONE:
                self.requests_done += 1
            else:
                self.requests_refused += 1
        for alert in commit.alerts:
            if alert.state == "resolved":
                self.alerts.pop(alert.id, None)
        self.alert_events += len(commit.events)
        for device, cmd, why in result.commit.skipped_commands:  # type: ignore[union-attr]
            log.warning("engine: %s for device %s not queued: %s", cmd, device, why)
        return result

    def _reload_settings(self) -> None:
        """The loader's settings (a bad set keeps the ones in use: logged, never fatal)."""
        if self.settings_loader is None:
            return
        self._generation = self.store.generation()
        try:
            self.settings = self.settings_loader()
        except SettingsError as exc:
            log.error("engine: settings not changed: %s", exc)
            return
        log.info("engine: settings loaded (%d devices with their own)", len(self.settings.devices))

    def _read_around(self, error: EventLogError, limit: int) -> list[Any]:
        """A row that cannot be read back: read the others one by one, skipping it (counted)."""
        log.error("engine: %s: reading around it", error)
        entries: list[Any] = []
        seq = self.cursor
        last = self.eventlog.last_seq()
        while seq < last and len(entries) < limit:
            try:
                got = self.eventlog.entries_after(seq, 1)
            except EventLogError:
                self.unreadable += 1
                seq += 1
                continue
            if not got:
                break
            entries.extend(got)
            seq = got[0].seq
        return entries

    def _requests(self, out: list[Action]) -> list[tuple[int, str, str | None, float]]:
        handled = []
        engine = self.engine
        for request in self.store.pending_alert_actions():
            if not self._mine(request.device):
                continue  # another partition's: its engine handles it
            now = engine.now
            try:
                if request.action == "acknowledge":
                    steps = engine.acknowledge(request.alert_id, request.by, now)
                else:
                    steps = engine.resolve(request.alert_id, request.by, now)
            except UnknownAlert:
                known = self.alerts.get(request.alert_id)
                why = "the alert is already resolved" if known is None else "the alert is not open"
                handled.append((request.id, ACTION_REFUSED, why, now))
                continue
            if not steps:
                handled.append((request.id, ACTION_REFUSED, "the alert is already acknowledged", now))
                continue
            if request.reason:
                for step in steps:
                    if step.alert_id == request.alert_id:
                        step.details["reason"] = request.reason
            out += steps
            handled.append((request.id, ACTION_DONE, None, now))
        return handled

    def _commit_of(self, cursor: int, out: list[Action], handled: list[tuple[int, str, str | None, float]]
                   ) -> EngineCommit:
        engine = self.engine
        commit = EngineCommit(cursor=cursor, now=engine.now, actions=handled, fence=self.fence)
        changed: dict[str, AlertRecord] = {}
        for action in out:
            if isinstance(action, SendCheckin):
                commit.commands.append((int(action.device), "checkin_prompt",
                                        {"prompt_id": action.prompt_id, "timeout_s": min(action.timeout_s, 0xFFFF)}))
                continue
            commit.events.append(action.event())
            changed[action.alert_id] = self._record(action)
        commit.alerts = list(changed.values())
        for device in engine.take_dirty():
            if device in engine.devices or device in engine.removed:
                commit.devices[int(device)] = state_json(engine.device_state(device))
            else:  # added again after a removal: judged from fresh
                commit.devices[int(device)] = None
        return commit

    def _record(self, step: Notify) -> AlertRecord:
        record = self.alerts.get(step.alert_id)
        if record is None:
            record = self.alerts[step.alert_id] = AlertRecord(
                step.alert_id, int(step.device), step.kind, step.state, step.step, step.at, step.at)
        record.state = step.state
        record.updated_at = step.at
        details = dict(step.details)
        if step.step == "acknowledged":
            record.acknowledged_by = details.get("acknowledged_by")
            record.acknowledged_at = step.at
        elif step.step != "resolved":
            record.step = step.step
            record.notified = [*record.notified, {"step": step.step, "at": step.at,
                                                  "notify": list(step.notify),
                                                  "recipients": list(step.recipients)}]
        if step.state == "resolved":
            record.closed_reason = details.get("closed_reason")
            record.closed_at = step.at
            record.closed_by = details.get("resolved_by")
        if details.get("prompt_id") is not None:
            record.prompt_id = details["prompt_id"]
        record.details = {**record.details, **details}
        return record


def state_json(state: dict[str, Any]) -> str:
    """A device's state (Engine.device_state) as compact JSON, as json.dumps writes it; orjson
    (five times faster: a state per changed device and step) unless a value is beyond it (an
    integer past 64 bits)."""
    try:
        return orjson.dumps(state).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(state, separators=(",", ":"))


class EngineThread:
    """A runner stepping in a thread: woken by `notify()` (ingest committed) and every `poll_s`."""

    def __init__(self, runner: EngineRunner, *, poll_s: float = POLL_S,
                 on_commit: Callable[[EngineCommitResult], None] | None = None, lock: Any = None):
        """`lock`: the right to step (engine.process.EngineLock: try_acquire(), held(), renew()
        between steps); None: always."""
        self.runner = runner
        self.lock = lock
        self.poll_s = poll_s
        self.on_commit = on_commit
        self._wake = threading.Event()
        self._stop = False
        self._steps = 0  # steps finished
        self._started = 0  # steps begun
        self.behind = False  # the last step read all it asked for: more is waiting in the log
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> None:
        if self.lock is None and not self.runner.loaded:
            self.runner.load()
        self._thread = threading.Thread(target=self._run, name="carecard-engine", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def sync(self, timeout: float = 30.0) -> bool:
        """Wait until a step that started after this call has finished (tests, tools)."""
        with self._done:
            target = self._started + 1  # the next step to begin (one under way began before)
            self._wake.set()
            return self._done.wait_for(lambda: self._steps >= target or self._stop, timeout)

    def _run(self) -> None:
        runner = self.runner
        while not self._stop:
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop:
                break
            with self._done:
                self._started += 1
            more = False
            try:
                if not self._hold_lock():
                    result = StepResult()
                else:
                    result = runner.step()
                more = result.events >= result.limit > 0
                self.behind = more
                self.error = None
                if self.on_commit is not None and result.commit is not None:
                    self.on_commit(result.commit)
            except (StoreError, EngineError) as exc:
                if self.error != str(exc):
                    log.error("engine: step failed (retrying from its last commit): %s", exc)
                self.error = str(exc)
            except Exception as exc:  # never let the engine thread die silently
                log.exception("engine: unexpected error (retrying from its last commit): %s", exc)
                self.error = repr(exc)
                runner.loaded = False
            with self._done:
                self._steps += 1
                self._done.notify_all()
            if more:
                self._wake.set()
        with self._done:
            self._done.notify_all()

    def _hold_lock(self) -> bool:
        """True while this thread may step: it holds the lock (taking it when it is free: then the
        runner restores the last commit, whoever made it)."""
        lock = self.lock
        if lock is None:
            return True
        if lock.renew():
            return True
        if self.runner.loaded:
            log.warning("engine %s: lost its lock: standing by", self.runner.name)
            self.runner.loaded = False
        if not lock.try_acquire():
            return False
        log.info("engine %s: took the lock: resuming from the last commit", self.runner.name)
        self.runner.loaded = False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the step under way (its commit included) and stop."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        r = self.runner
        return {"cursor": r.cursor, "devices": len(r.engine.devices), "alerts_open": len(r.alerts),
                "alert_events": r.alert_events, "rejected": r.rejected, "unreadable": r.unreadable,
                "requests_done": r.requests_done, "requests_refused": r.requests_refused,
                "commit_failures": r.commit_failures, "error": self.error}
