"""Storage: what the receiver, the sinks and the alert engine need from a database.

Two interfaces and the records they exchange; SQLite implements them (carecard.host.storage.
sqlite); a second implementation (PostgreSQL) goes beside it and must pass the same contract
tests (tests/test_storage_contract.py).

- IngestStore: the ingest's replay history (window_state, stored_tag); the group commit of a
  CommitBatch (prepare on the event loop, finish on the writer thread, or abort): frames and
  their events, downlink counter reservations, command changes, device statistics, confirmed
  contacts, pruning of delivered events; events that are not frames' (alerts); the device
  registry and the open commands as the ingest reads them; the start-up checks of lost history.
- EventLogReader: the event log in order from a seq, and durable cursors by reader name.
- RegistryReader, DeviceRegistry: the devices as admin commands register and remove them (`carecard devices
  add|remove`, provisioning records): names, SIM details and contacts, all or nothing, with the
  caller's last step (writing the key file) inside the transaction; and the registry as its
  readers (the bridges, the dashboard) follow it, reloading when its generation changes.
- CommandQueue: the downlink command queue as admin commands change it (`carecard send`); a
  running receiver picks the changes up through IngestStore.generation.
- AlertStore: the alert engine's alerts as everybody reads them (`carecard alerts`, the
  dashboard), and the queue of acknowledge/resolve requests (CLI, MQTT, HTTP, dashboard) that
  the engine consumes: nobody but the engine changes an alert.
- EngineSettingsStore: the alert engine's per-device settings kept in the registry (imported from
  the documented settings file: `carecard alerts settings import`).
- EngineStore: the engine's durable side: its checkpoint (cursor into the event log, clock,
  per-device state) and one atomic commit of everything a step of the engine produced (alert
  events into the log, alert rows, handled requests, check-in prompts into the command queue,
  changed device states, the cursor), so a restart resumes exactly and raises nothing twice.

A frame's event is logged as its row (FRAME_ROW: the archive columns, then the opened frame), not
as JSON: readers make the JSON when they need it (LogEntry).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from carecard.host.events import event_from_message, event_json, event_record, parse_body, registry_event
from carecard.host.downlink_lifecycle import CommandChange, CommandRecord

# A frame's row in the log is also the frame's archive: besides its event (the opened frame), it
# holds the frame as received, under a unique (device, counter) index, and the view `frames`
# shows those columns. One row per frame, written once: the ingest's replay checks, the archive
# and the sinks' hand-over are the same row (a separate frames table cost a second row, a second
# B-tree and pruning the event's copy). Rows of other events (device NULL: alerts) are pruned
# once every sink has delivered them; frame rows are kept (the archive).
FRAME_COLUMNS = ("device", "counter", "tag", "type", "device_time", "received_at", "transport", "frame")
# What append_frames takes per frame: FRAME_COLUMNS, then the opened frame.
FRAME_ROW = FRAME_COLUMNS + ("opened",)


class StoreError(RuntimeError):
    """The store cannot be opened, read or written; the message says which file and why."""


@dataclass
class Contact:
    key: int
    number: str
    name: str

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "number": self.number, "name": self.name}


@dataclass
class DeviceRecord:
    device: int
    name: str
    iccid: str | None = None
    phone: str | None = None
    contacts: list[Contact] = field(default_factory=list)
    created_at: float | None = None
    updated_at: float | None = None
    last_seen: float | None = None
    last_counter: int | None = None
    last_source: str | None = None
    frames_stored: int = 0
    downlink_reserved: int = 0
    village: str | None = None  # the village (grid) it belongs to: whose grid worker sees it


@dataclass
class CommitBatch:
    """Everything one ingest transaction makes durable."""

    # one row per frame, in order: FRAME_ROW (the archive columns, then the opened frame), each
    # the frame's event too (the event log's row)
    frames: list[tuple] = field(default_factory=list)
    # (device, last_seen, last_counter, last_source, frames_added)
    device_stats: list[tuple] = field(default_factory=list)
    downlink_reserved: dict[int, int] = field(default_factory=dict)
    # the first counter of each block newly reserved in `downlink_reserved`: a store shared by
    # several receivers takes the block only if nobody reserved that counter meanwhile
    downlink_claimed: dict[int, int] = field(default_factory=dict)
    # Filled in by `IngestStore.prepare` of a store shared by several writers (the batch is
    # committed all the same; the ingest adjusts its acks before they are sent):
    # device -> (first, last) of the block reserved instead of a claimed one another writer
    # reserved first (the block's size, above that writer's reservation): the acks numbered from
    # the claimed counter on take the counters of this block instead, in order
    downlink_granted: dict[int, tuple[int, int]] = field(default_factory=dict)
    # (device, counter) of frames another writer stored meanwhile with other content: taken out
    # of `frames`, not stored, not to be acked (a frame stored meanwhile with the same content is
    # taken out of `frames` too, and acked: a retransmission)
    frames_refused: list[tuple[int, int]] = field(default_factory=list)
    # command changes, in order (downlink_lifecycle.CommandChange: the row, CHANGE_COLUMNS)
    commands: list[CommandChange] = field(default_factory=list)
    # contacts confirmed by the card (set_contacts done): (device, [Contact, ...])
    contacts: list[tuple[int, list[Contact]]] = field(default_factory=list)
    # prune the event log up to this seq (what every sink has delivered), at most
    # `prune_max_rows` of its oldest events, in the same transaction; 0: no pruning
    prune_upto: int = 0
    prune_max_rows: int = 0

    def __bool__(self) -> bool:
        return bool(self.frames or self.device_stats or self.downlink_reserved
                    or self.commands or self.contacts or self.prune_upto)


# The alert states (the engine's vocabulary, docs/events.md) and the requests that change them.
ALERT_STATES = ("open", "acknowledged", "resolved")
ALERT_ACTIONS = ("acknowledge", "resolve")
# Outcomes of a request, as the engine records them (None: not handled yet).
ACTION_DONE = "done"
ACTION_REFUSED = "refused"
# Longest `by`, `reason` and `source` texts of a request.
ALERT_BY_MAX = 200
ALERT_REASON_MAX = 1000
ALERT_SOURCE_MAX = 40


@dataclass
class AlertRecord:
    """One alert as the engine last committed it (rows of AlertStore.list_alerts).

    `notified` is every step so far, oldest first, each {"step", "at" (Unix time), "notify"
    (roles: card, family, grid_worker), "recipients" (numbers/names told)}: who was told when.
    `details` are the alert's facts (the alert event's details: still_since, lat, lon,
    battery_pct, reason...)."""

    id: str
    device: int
    kind: str
    state: str  # ALERT_STATES
    step: str  # the latest escalation step (vocabulary STEPS)
    opened_at: float
    updated_at: float
    notified: list[dict[str, Any]] = field(default_factory=list)
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    closed_reason: str | None = None  # vocabulary CLOSE_REASONS, or "resolved_by_hand"
    closed_by: str | None = None  # who resolved it, when a person did
    closed_at: float | None = None
    prompt_id: int | None = None  # the check-in prompt that answers it (inactivity)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class AlertAction:
    """A request to acknowledge or resolve an alert, queued by whoever asks (AlertStore.
    request_alert_action) and handled by the engine, which records the outcome."""

    id: int  # the queue's order
    alert_id: str
    device: int
    action: str  # ALERT_ACTIONS
    by: str  # who asks (a name, a number, an account)
    reason: str | None
    source: str  # where it came in: cli, mqtt, http, dashboard...
    requested_at: float
    outcome: str | None = None  # None: pending; ACTION_DONE or ACTION_REFUSED
    detail: str | None = None  # why it was refused, or what it did
    handled_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class AlertActionError(ValueError):
    """A request that cannot be queued; the message says which alert, why, and what to do."""


class UnknownAlertError(AlertActionError, LookupError):
    """No alert has this id."""


class AlertStateError(AlertActionError):
    """The alert is already in a state the request cannot change (resolved; acknowledged)."""


@dataclass
class EngineCheckpoint:
    """What an engine committed last (EngineStore.load_engine)."""

    cursor: int  # the last event log seq it handled
    now: float  # its clock
    devices: dict[int, str]  # every device's state (the engine's JSON text), by device
    saved_at: float


@dataclass
class EngineCommit:
    """Everything one step of the engine makes durable, in one transaction."""

    cursor: int  # event log seq handled up to (never moves back)
    now: float  # the engine's clock
    devices: dict[int, str | None] = field(default_factory=dict)  # changed state; None: forget
    events: list[Mapping[str, Any]] = field(default_factory=list)  # alert events for the log
    alerts: list[AlertRecord] = field(default_factory=list)  # whole rows, inserted or replaced
    # handled requests: (AlertAction.id, outcome ACTION_DONE/ACTION_REFUSED, detail, handled_at)
    actions: list[tuple[int, str, str | None, float]] = field(default_factory=list)
    # downlink commands to queue (check-in prompts): (device, cmd, args as downlink_lifecycle
    # stores them); a device not in the registry is skipped and reported
    commands: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    # the checkpoint's saved_at this engine last loaded or committed (-1.0: none existed): the
    # commit is refused (StoreError "another engine ...") when another engine of the name
    # committed since, so two holders of one lease never both commit; None: not checked
    fence: float | None = None


@dataclass
class EngineCommitResult:
    last_seq: int  # the event log's last seq after the commit
    saved_at: float = 0.0  # the new checkpoint's saved_at: the next commit's fence
    commands: list[CommandRecord] = field(default_factory=list)  # queued, in order
    skipped_commands: list[tuple[int, str, str]] = field(default_factory=list)  # (device, cmd, why)


class UnknownDeviceError(StoreError):
    """The device is not in the registry."""

    @classmethod
    def of(cls, missing: Sequence[int]) -> "UnknownDeviceError":
        """For settings of devices the registry lacks (EngineSettingsStore.save_engine_settings)."""
        missing = sorted(missing)
        return cls(f"device{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing[:5]))}"
                   f"{' ...' if len(missing) > 5 else ''} not in the registry: add "
                   f"{'them' if len(missing) > 1 else 'it'} with `carecard devices add` first")


def not_registered(device: int) -> str:
    """The message for a device the registry does not have."""
    return (f"device {device} is not registered: list the registered devices with `carecard devices`, "
            "add one with `carecard devices add`")


def registry_changes(devices: Sequence[DeviceRecord], unnamed: Iterable[int], now: float
                     ) -> list[dict[str, Any]]:
    """The `registry` "added" events of a registration (DeviceRegistry.register_devices, in its
    transaction): one per device of `devices` in `unnamed`, the devices with a registry row but
    no name before it (removed, or only ever keyed): the alert engine may have stopped judging
    them. A card new to the registry was never removed, and a re-provisioned one is not added
    again: neither needs one."""
    before = set(unnamed)
    added = dict.fromkeys(record.device for record in devices if record.device in before)
    return [registry_event(device, "added", now) for device in added]


# Why the open commands of a removed device were cancelled (their `detail`).
REMOVED_DETAIL = "cancelled: the device was removed from the registry"


class DeviceExistsError(StoreError):
    """The device is registered already (DeviceRegistry.register_devices without `replace`)."""

    def __init__(self, device: int):
        super().__init__(f"device {device} is already registered (use --replace to re-provision it)")
        self.device = device


class EventLogError(RuntimeError):
    """The event log cannot be opened or read (missing file or tables, corrupt row)."""


class LogEntry:
    """One event read from the log, in order.

    `seq`; `appended_at` (host Unix time of the append, for lag in seconds); `body`, the event's
    JSON (event_json(event)); `event`, the event as a dict. A frame's event (logged as its
    opened frame by append_frames) also has `message` (the decoded message) and `received_at`, and makes its body
    and event when first asked for them (a sink that stores the message's fields never pays for
    the JSON), and `opened`, the opened frame as logged; for other events these are None."""

    __slots__ = ("seq", "appended_at", "message", "opened", "received_at", "_event", "_body")

    def __init__(self, seq: int, appended_at: float, event: dict[str, Any] | None = None,
                 body: str | None = None, *, message: dict[str, Any] | None = None,
                 opened: bytes | None = None, received_at: float | None = None):
        self.seq = seq
        self.appended_at = appended_at
        self.message = message
        self.opened = opened
        self.received_at = received_at
        self._event = event
        self._body = body

    @property
    def body(self) -> str:
        if self._body is None:
            if self.message is not None:
                self._body = event_record(self.message, self.received_at)[1]
            else:
                self._body = event_json(self._event) if self._event is not None else ""
        return self._body

    @property
    def event(self) -> dict[str, Any]:
        if self._event is None:
            if self.message is not None and self._body is None:
                # the dict straight from the message: what parsing its JSON would give (a test
                # checks the round trip), without writing and parsing the text
                self._event = event_from_message(self.message, self.received_at)
            else:
                self._event = parse_body(self.body)
        return self._event

    def __repr__(self) -> str:
        return f"LogEntry(seq={self.seq}, event={self.event!r})"


def log_entries(rows: Iterable[Sequence[Any]], where: str) -> list[LogEntry]:
    """LogEntry objects from event log rows (seq, appended_at, body, opened, received_at), as
    every implementation stores them: a frame's row has its opened frame (parsed here, so a bad
    row fails the read, not a sink), another event's row its JSON. Raises EventLogError naming
    `where` (the database) and the row."""
    from carecard.protocol import ProtocolError, parse_opened

    entries = []
    add = entries.append
    for row_seq, appended_at, body, opened, received_at in rows:
        if opened is not None:
            try:
                message = parse_opened(opened)
            except ProtocolError as exc:
                raise EventLogError(f"{where}: event log row seq {row_seq} is not an opened "
                                    f"frame: {exc}") from None
            if type(received_at) is not float:
                raise EventLogError(f"{where}: event log row seq {row_seq} has no "
                                    "received_at for its frame")
            add(LogEntry(row_seq, appended_at, message=message, opened=bytes(opened),
                         received_at=received_at))
            continue
        try:
            event = parse_body(body)
        except (ValueError, TypeError) as exc:
            raise EventLogError(f"{where}: event log row seq {row_seq} is not JSON: {exc}") from None
        add(LogEntry(row_seq, appended_at, event, body))
    return entries


class IngestStore(abc.ABC):
    """What the receiver needs from storage. Methods are synchronous; the receiver calls
    `prepare` and the read methods on its event loop thread and `finish` on a writer thread (never
    two at once)."""

    @abc.abstractmethod
    def window_state(self, device: int, size: int) -> tuple[int, dict[int, bytes]]:
        """(highest stored counter or -1, {counter: tag} of the last `size` counters)."""

    @abc.abstractmethod
    def stored_tag(self, device: int, counter: int) -> bytes | None:
        """The tag of the stored frame (device, counter), or None."""

    @abc.abstractmethod
    def prepare(self, batch: CommitBatch) -> int:
        """Open the transaction and write the batch (frames, events, counters, commands) without
        committing; return the event log's last seq. Raises StoreError (rolled back). The
        receiver calls this on its event loop (CPU work) and `finish` on a thread (the wait)."""

    @abc.abstractmethod
    def finish(self) -> int:
        """Commit what `prepare` wrote; durable when it returns. Returns the number of events
        pruned from the log (the batch's `prune_upto`). Raises StoreError."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Roll back what `prepare` wrote."""

    @abc.abstractmethod
    def append_events(self, events: list[Mapping[str, Any]]) -> int:
        """Append events that are not frames' (the alert engine's alerts, events.alert_event) to
        the event log in a transaction of their own; return the log's last seq. Raises
        StoreError (none of them appended)."""

    @abc.abstractmethod
    def devices_without_history(self, keyed: Iterable[int]) -> list[int]:
        """Devices of `keyed` (those with keys) whose replay and counter history is not in this
        store: no registry row, or a row counting stored frames of which none is left."""

    @abc.abstractmethod
    def jump_downlink_counters(self, devices: Iterable[int], jump: int) -> list[int]:
        """Move every device's downlink counter reservation (and those of `devices`, given a row
        if they have none) `jump` ahead, capped at the largest u32; the devices now exhausted."""

    @abc.abstractmethod
    def generation(self) -> int:
        """A number that changes whenever devices, keys or commands are changed by an admin."""

    @abc.abstractmethod
    def load_devices(self) -> dict[int, DeviceRecord]:
        """The device registry (contacts included), by device."""

    @abc.abstractmethod
    def open_commands(self) -> list[CommandRecord]:
        """Commands still to be delivered, oldest first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections."""


class EventLogReader(abc.ABC):
    """The event log as its readers see it (the sinks, the alert engine): events in order from
    a seq, and durable cursors by reader name. A reader is used from worker threads, never from
    the receiver's event loop."""

    @abc.abstractmethod
    def entries_after(self, seq: int, limit: int = 1000) -> list[LogEntry]:
        """Up to `limit` entries with seq > `seq`, in order. Raises EventLogError for a row that
        cannot be read back."""

    def events_after(self, seq: int, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` (seq, event) pairs with seq > `seq`, in order."""
        return [(entry.seq, entry.event) for entry in self.entries_after(seq, limit)]

    @abc.abstractmethod
    def last_seq(self) -> int:
        """The seq of the newest event ever appended (0 when none)."""

    @abc.abstractmethod
    def first_seq(self) -> int:
        """The seq of the oldest event still in the log (0 when empty)."""

    @abc.abstractmethod
    def load_cursor(self, name: str) -> int | None:
        """The last seq reader `name` has handled, or None if it never saved one."""

    @abc.abstractmethod
    def save_cursor(self, name: str, seq: int) -> None:
        """Persist reader `name`'s cursor (a lost cursor only moves back: at-least-once)."""

    @abc.abstractmethod
    def cursors(self) -> dict[str, int]:
        """Every saved cursor, by reader name."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections."""

    def __enter__(self) -> "EventLogReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RegistryReader(abc.ABC):
    """The device registry as its readers follow it (the bridges, the dashboard): every row, and
    a generation number to reload on. A device is registered when its row has a name; the
    receiver also keeps rows (statistics, counters) for devices nobody registered yet."""

    @abc.abstractmethod
    def load_devices(self) -> dict[int, DeviceRecord]:
        """The device registry (contacts included), by device."""

    @abc.abstractmethod
    def generation(self) -> int:
        """A number that changes whenever devices, keys or commands are changed by an admin."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections."""


class DeviceRegistry(RegistryReader):
    """The device registry as admins change it."""

    @abc.abstractmethod
    def register_devices(self, devices: Sequence[DeviceRecord], *, replace: bool = False, now: float,
                         before_commit: Callable[[], None] | None = None) -> None:
        """Register `devices` (their name, iccid, phone and contacts; the other fields are the
        store's) in one transaction that bumps the registry generation and appends a `registry`
        "added" event (registry_changes) for each device that had a row but no name (removed). A device registered
        already raises DeviceExistsError unless `replace`, which replaces its name, SIM details
        and contacts and keeps its creation time, statistics and counters. `before_commit` runs
        inside the transaction after the rows are written (the key file is written there): if it
        raises, nothing is stored and its exception propagates. Raises StoreError."""

    @abc.abstractmethod
    def remove_device(self, device: int, *, now: float,
                      before_commit: Callable[[], None] | None = None) -> DeviceRecord:
        """Take a registered device out of the registry, in one transaction that bumps the
        registry generation and appends a `registry` "removed" event (the alert engine stops
        judging the card): its name, SIM details and contacts are cleared, its open commands
        cancelled and its engine settings dropped; its row stays with its statistics, replay
        history and downlink counter reservation, so a card added again never has a counter
        used twice. Returns the record as it was. `before_commit` as in register_devices (the
        key is taken out of the key file there). Raises UnknownDeviceError when the device is
        not registered, StoreError."""


class CommandQueue(abc.ABC):
    """The downlink command queue. Every change bumps the registry generation, so a running
    receiver reloads its open commands."""

    @abc.abstractmethod
    def queue_command(self, device: int, cmd: str, make_args: Callable[[int], dict[str, Any]],
                      now: float) -> CommandRecord:
        """Queue `cmd` for a registered device under its next seq (1..65535, wrapping), in one
        transaction; `make_args(seq)` gives the arguments to store (it may refuse them by
        raising: nothing is queued then). Raises UnknownDeviceError or StoreError."""

    @abc.abstractmethod
    def cancel_command(self, device: int, seq: int, now: float) -> CommandRecord:
        """Cancel the device's latest command with this seq (downlink_lifecycle.cancel) and return
        it. Raises LookupError when there is none, CommandStateError when it is already final."""

    @abc.abstractmethod
    def list_commands(self, device: int | None = None, *, open_only: bool = False,
                      limit: int | None = None) -> list[CommandRecord]:
        """Commands (of one device), oldest first; with `limit`, the newest that many."""


class AlertStore(abc.ABC):
    """The engine's alerts as everybody reads them, and the requests that change them. Only the
    engine writes alerts (EngineStore.commit_engine); anybody queues a request, and the engine
    handles requests in queue order and records each outcome."""

    @abc.abstractmethod
    def list_alerts(self, *, device: int | None = None, states: Iterable[str] | None = None,
                    kinds: Iterable[str] | None = None, since: float | None = None,
                    limit: int | None = None) -> list[AlertRecord]:
        """Alerts, oldest opened first, filtered by device, states, kinds and opened at or after
        `since`; with `limit`, the newest that many."""

    @abc.abstractmethod
    def get_alert(self, alert_id: str) -> AlertRecord | None:
        """One alert by id, or None."""

    @abc.abstractmethod
    def request_alert_action(self, alert_id: str, action: str, by: str, *, reason: str | None = None,
                             source: str = "cli", now: float) -> AlertAction:
        """Queue a request to `action` (ALERT_ACTIONS) the alert, in a transaction of its own.
        Raises AlertActionError for a bad action or an empty/too long `by`, `reason` or `source`,
        UnknownAlertError for an id no alert has, AlertStateError when the alert is resolved (or,
        to acknowledge, already acknowledged: the message says by whom)."""

    @abc.abstractmethod
    def pending_alert_actions(self, limit: int = 1000) -> list[AlertAction]:
        """Requests not handled yet, oldest first."""

    @abc.abstractmethod
    def list_alert_actions(self, alert_id: str | None = None, *,
                           limit: int | None = None) -> list[AlertAction]:
        """Requests (of one alert), oldest first; with `limit`, the newest that many."""


STORE_SQLITE = "sqlite"
STORE_URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql_url(text: str) -> bool:
    """Whether a `store` setting names a PostgreSQL database (else it is "sqlite")."""
    return text.startswith(STORE_URL_SCHEMES)


def check_store_setting(value: Any, where: str) -> str:
    """The `store` setting: "sqlite" (the embedded default, in the data folder) or a PostgreSQL
    URL. Raises ValueError naming `where` and the accepted forms."""
    if isinstance(value, str) and (value == STORE_SQLITE or is_postgresql_url(value)):
        return value
    shown = value.split("@")[-1] if isinstance(value, str) else repr(value)
    raise ValueError(f"{where}: store must be \"sqlite\" or a PostgreSQL URL "
                     f"(postgresql://USER@HOST:PORT/DATABASE), got {shown[:80]!r}")


def ingest_store_for(setting: str, data_dir: Any, durability: str = "full") -> Any:
    """The store a `store` setting names: SQLiteStore in DATA/carecard.sqlite, or PostgreSQLStore.
    Raises StoreError."""
    if is_postgresql_url(setting):
        from carecard.host.storage.postgresql import PostgreSQLStore

        return PostgreSQLStore(setting)
    from carecard.host.paths import ingest_db_path
    from carecard.host.storage.sqlite import SQLiteStore

    return SQLiteStore(ingest_db_path(data_dir), durability)


def registry_reader_for(setting: str, data_dir: Any) -> RegistryReader:
    """The registry reader of a `store` setting: DATA/carecard.sqlite read-only (connected at
    the first read, so a reader may start before the receiver made the file), or the PostgreSQL
    store. Raises StoreError."""
    if is_postgresql_url(setting):
        from carecard.host.storage.postgresql import PostgreSQLStore

        return PostgreSQLStore(setting, pool_size=1)
    from carecard.host.paths import ingest_db_path
    from carecard.host.storage.sqlite.store import SQLiteRegistryReader

    return SQLiteRegistryReader(ingest_db_path(data_dir))


def event_log_for(setting: str, data_dir: Any) -> EventLogReader:
    """The event log reader of a `store` setting. Raises EventLogError."""
    if is_postgresql_url(setting):
        from carecard.host.storage.postgresql import PostgreSQLEventLog

        return PostgreSQLEventLog(setting)
    from carecard.host.paths import ingest_db_path
    from carecard.host.storage.sqlite import SQLiteEventLog

    return SQLiteEventLog(ingest_db_path(data_dir))


class EngineSettingsStore(abc.ABC):
    """The alert engine's settings in the registry: tables of the settings file (docs/events.md,
    "Alert engine settings"), checked by the caller (engine.Settings.from_mapping) before they are
    saved. Saving bumps the registry generation, so a running receiver's engine reloads them."""

    @abc.abstractmethod
    def load_engine_settings(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """(the `defaults` table, {device: its table}) as saved ({} and {} when none)."""

    @abc.abstractmethod
    def save_engine_settings(self, defaults: Mapping[str, Any] | None,
                             devices: Mapping[int, Mapping[str, Any]], now: float, *,
                             replace: bool = False) -> None:
        """Save the `defaults` table (None: keep the saved one) and the devices' tables, each
        replacing that device's saved table, in one transaction; with `replace`, the tables not
        given are dropped. Raises UnknownDeviceError (nothing saved) for a device not in the
        registry, StoreError."""


class EngineStore(abc.ABC):
    """The alert engine's durable side, by engine name (one name per engine instance or
    partition)."""

    @abc.abstractmethod
    def load_engine(self, name: str) -> EngineCheckpoint | None:
        """The engine's last commit, or None if it never committed."""

    @abc.abstractmethod
    def commit_engine(self, name: str, commit: EngineCommit) -> EngineCommitResult:
        """Make `commit` durable in one transaction: append its events to the event log, insert
        or replace its alert rows, record the outcomes of its handled requests, queue its
        commands under each device's next command seq (bumping the registry generation so the
        receiver sends them), write the changed device states and the cursor and clock. All or
        nothing: raises StoreError and nothing of it is stored."""
