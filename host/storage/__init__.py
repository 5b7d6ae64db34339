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
- CommandQueue: the downlink command queue as admin commands change it (`carecard send`); a
  running receiver picks the changes up through IngestStore.generation.

A frame's event is logged as its row (FRAME_ROW: the archive columns, then the opened frame), not
as JSON: readers make the JSON when they need it (LogEntry).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from carecard.host.events import event_json, event_record, parse_body
from carecard.host.receiver.command_lifecycle import CommandChange, CommandRecord

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


@dataclass
class CommitBatch:
    """Everything one ingest transaction makes durable."""

    # one row per frame, in order: FRAME_ROW (the archive columns, then the opened frame), each
    # the frame's event too (the event log's row)
    frames: list[tuple] = field(default_factory=list)
    # (device, last_seen, last_counter, last_source, frames_added)
    device_stats: list[tuple] = field(default_factory=list)
    downlink_reserved: dict[int, int] = field(default_factory=dict)
    # command changes, in order (command_lifecycle.CommandChange: the row, CHANGE_COLUMNS)
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


class UnknownDeviceError(StoreError):
    """The device is not in the registry."""


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
            self._event = parse_body(self.body)
        return self._event

    def __repr__(self) -> str:
        return f"LogEntry(seq={self.seq}, event={self.event!r})"


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
        """Cancel the device's latest command with this seq (command_lifecycle.cancel) and return
        it. Raises LookupError when there is none, CommandStateError when it is already final."""

    @abc.abstractmethod
    def list_commands(self, device: int | None = None, *, open_only: bool = False,
                      limit: int | None = None) -> list[CommandRecord]:
        """Commands (of one device), oldest first; with `limit`, the newest that many."""
