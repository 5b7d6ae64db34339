"""The ingest pipeline: frame in -> verdict, and after the commit, ack bytes and events out.

Sans-I/O apart from the store's lookups: transports call `handle()` with each frame and where to
send its ack; the service takes batches with `take_batch()`, writes them with `IngestStore.prepare` and
commits them with `IngestStore.finish` in a writer thread, and calls `committed()` (or `failed()`),
which hands back the acks to send. So:

- a frame is acked only once its batch is committed (persist before ack), duplicates included:
  a retransmission of a frame still in an uncommitted batch waits for that batch;
- per device, a ReplayWindow (restored lazily from the store; it takes a new frame at once, so
  it also knows the frames of batches not yet committed, and a failed commit resets it) sorts
  NEW, DUPLICATE (ack again, store nothing), REUSED and TOO_OLD (asks the store: same tag =
  duplicate); an authentic frame whose counter was used for other content, or is older than the
  window and not stored, comes from a card that lost its counter: it is not stored, and the
  card gets a `resync` telling it the next counter to use (docs/protocol.md);
- a `hello` carries the lowest downlink counter the card still applies: the device's downlink
  counter continues from there;
- every ack has a fresh downlink counter (strictly increasing per device, reserved in blocks in
  the same transaction, so a crash never makes the receiver reuse one) and the device's open
  commands; `command_result` uplinks close commands in the same transaction;
- on a store shared by several receivers, `prepared()` takes what the store changed in a batch
  before its acks leave: a block of downlink counters another receiver reserved first is
  replaced by one above it (the acks numbered from it are numbered again), and a frame another
  receiver stored meanwhile with other content is not acked;
- rejected frames are counted by reason and charged to the source's budget (budget.py).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from carecard.host.receiver.budget import RejectBudget
from carecard.host.receiver.config import BudgetSettings, DownlinkSettings, IngestSettings
from carecard.host.receiver.downlinks import wire_command
from carecard.host.receiver.metrics import Metrics
from carecard.host import downlink_lifecycle as lifecycle
from carecard.host.downlink_lifecycle import CommandRecord
from carecard.host.storage import CommitBatch, Contact, DeviceRecord, IngestStore
from carecard.protocol import KeyRing, ProtocolError, ReplayWindow, Verdict, decode_frame, encode_frame, spec
from carecard.protocol.ack import EMPTY_ACK_SIZE, AckEncoder
from carecard.protocol.codec import HEADER_STRUCT, MESSAGE_TYPES
from carecard.protocol.errors import InvalidMessage

log = logging.getLogger("carecard.receiver.ingest")

# Downlink counters are reserved in the store this many at a time.
DOWNLINK_BLOCK = 4096
_U32_MAX = 0xFFFFFFFF
_TAG_LEN = spec.TAG_LEN
RESYNC_SIZE = spec.MIN_FRAME + MESSAGE_TYPES["resync"].packed.size  # a resync frame's bytes
_MIN_FRAME = spec.MIN_FRAME
_MAX_FRAME = spec.MAX_FRAME
_unpack_header = HEADER_STRUCT.unpack_from
_compare = hmac.compare_digest
_NEW = Verdict.NEW
_DUPLICATE = Verdict.DUPLICATE
_TOO_OLD = Verdict.TOO_OLD
# What an ack carries (Ingest._ack): a new frame's ack sends the open commands and counts an
# attempt; a retransmission's ack to the card's own address repeats them without counting.
_SEND = 0
_REPEAT = 1
_NO_COMMANDS = 2

# A reply target: `send(ack_bytes, address)`; returns nothing, never raises for a lost peer.
Sender = Callable[[bytes, Any], None]


@dataclass
class PendingBatch:
    """A batch being collected or committed: what to store, and the acks to send after."""

    commit: CommitBatch = field(default_factory=CommitBatch)
    acks: list[tuple[Sender, Any, bytes]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # command states reached in this batch
    finished_ids: list[int] = field(default_factory=list)
    commands_sent: int = 0
    duplicates: int = 0
    started: float = 0.0

    def __len__(self) -> int:
        return len(self.acks)


class Ingest:
    def __init__(self, store: IngestStore, keyring: KeyRing, metrics: Metrics, *,
                 settings: IngestSettings | None = None, budget: BudgetSettings | None = None,
                 downlinks: DownlinkSettings | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.keyring = keyring
        self.metrics = metrics
        self.settings = settings or IngestSettings()
        budget = budget or BudgetSettings()
        self.downlinks = downlinks or DownlinkSettings()
        self.budget = RejectBudget(budget.rejects_per_second, budget.burst, budget.max_sources)
        self.clock = clock  # seconds, for the rate of the rejection log lines
        self.encoder = AckEncoder(keyring)
        self.windows: dict[int, ReplayWindow] = {}
        self.batch = PendingBatch()
        self.devices: dict[int, DeviceRecord] = {}
        self.dl_next: dict[int, int] = {}
        self.dl_reserved: dict[int, int] = {}
        self.commands: dict[int, list[CommandRecord]] = {}
        self._finishing: set[int] = set()  # ids of commands finished in uncommitted batches
        self.last_seen: dict[int, float] = {}
        # device -> (transport, address) of its last new frame, kept when statistics are flushed
        self._verified: dict[int, tuple[str, Any]] = {}
        # device -> [last_seen, last_counter, transport, address, added]
        self._stats: dict[int, list[Any]] = {}
        self._stats_flushed = 0.0
        # called after each commit that stored frames: (event log last seq, the frames' rows)
        self.commit_observer: Callable[[int, list[tuple]], None] | None = None
        self._rejected = metrics.rejected
        self._received = metrics.frames_received
        self._rejects_logged = 0.0
        self._reject_log_count = 0

    # --- registry -----------------------------------------------------------------------------

    def load_registry(self, devices: dict[int, DeviceRecord], commands: list[CommandRecord], *,
                      from_store: bool = False) -> None:
        """Take devices and open commands from the store. Memory wins for what the ingest itself
        changes (downlink reservations, command attempts); admin changes (new devices, new or
        cancelled commands) are merged in. Safe while batches are in flight.

        `from_store`: after a failed commit, the store is the truth for reservations (a
        reservation made in memory may not have been committed) and for commands."""
        self.devices = devices
        previous = self.dl_reserved
        if from_store:
            self.dl_reserved = {}
        for device, record in devices.items():
            stored = record.downlink_reserved
            known = previous.get(device)  # what this process reserved; None: never numbered it
            if known is None or stored > known or from_store:
                # Counters up to the stored reservation may have been used by an earlier run (this
                # is a start-up), by another writer, or by this process (a failed commit may have
                # been its claim of a block another receiver holds): go on above them. Otherwise
                # (a registry reload) this process's next counter stands.
                self.dl_next[device] = max(self.dl_next.get(device, 0), stored + 1)
            self.dl_reserved[device] = stored if from_store or known is None else max(known, stored)
        for device in list(self.dl_next):
            if device not in self.dl_reserved:  # no row yet: nothing reserved in the store
                self.dl_reserved[device] = 0
        in_memory = {} if from_store else {c.id: c for cmds in self.commands.values() for c in cmds}
        merged: dict[int, list[CommandRecord]] = defaultdict(list)
        finishing = self._finishing
        for command in commands:  # open in the store, oldest first
            if command.id not in finishing:  # finished here, the commit saying so still in flight
                merged[command.device].append(in_memory.get(command.id, command))
        # Open in memory but not in the store means cancelled by an admin (commands this ingest
        # finishes leave memory at once): dropped.
        self.commands = dict(merged)

    def reset(self) -> None:
        """After a failed commit: forget everything derived from uncommitted state."""
        self.windows.clear()
        self.batch = PendingBatch()
        self._finishing.clear()
        self.load_registry(self.store.load_devices(), self.store.open_commands(), from_store=True)

    # --- the hot path ---------------------------------------------------------------------------

    def handle(self, frame: bytes, reply: Sender, address: Any, source: Hashable, transport: str,
               received_at: float) -> str | None:
        """One frame from `source`. Returns None when it is accepted (its ack will come after the
        commit), or the reason it was rejected."""
        self._received[transport] += 1
        if source in self.budget.over and not self._authentic(frame):
            self._rejected["over_budget"] += 1
            return "over_budget"
        opened: list[bytes] = []
        try:
            message = decode_frame(frame, self.keyring, opened)
        except ProtocolError as exc:
            return self._reject(exc.reason, source, str(exc))
        if message["direction"] != "uplink":
            return self._reject("wrong_direction", source,
                                f"{message['type']} frame from device {message['device']}: a downlink "
                                "frame sent to the receiver (reflected?)")
        device = message["device"]
        counter = message["counter"]
        tag = frame[-_TAG_LEN:]
        batch = self.batch
        window = self.windows.get(device)
        if window is None:
            window = self._load_window(device)
        # above the highest counter seen is NEW: classify's first test, without the call
        verdict = _NEW if counter > window.highest else window.classify(counter, tag)
        if verdict is _TOO_OLD:
            stored = self.store.stored_tag(device, counter)
            if stored is None:
                # never stored: its own (lost) frame, or a captured one replayed by anyone
                return self._resync(frame, reply, address, source, transport, device, counter,
                                    received_at, window, "is older than the replay window and not stored",
                                    anyone=True)
            verdict = _DUPLICATE if _compare(stored, tag) else Verdict.REUSED
        if verdict is _NEW:
            # into the window now, before its batch commits: a retransmission meanwhile is a
            # duplicate, whose ack waits for a later commit (a failed commit resets the windows)
            window.accept(counter, tag)
            mtype = message["type"]
            commit = batch.commit
            # FRAME_ROW: the frame's archive columns and its event as the log keeps it, the
            # opened frame, not JSON (a sink makes the JSON if it needs it: the same text,
            # carecard.host.events.event_record)
            commit.frames.append((device, counter, tag, mtype, message["time"], received_at,
                                  transport, frame, opened[0]))
            if mtype == "command_result":
                self._command_result(device, message, received_at)
            elif mtype == "hello":
                self._downlink_from(device, message["downlink_min"])
            stats = self._stats.get(device)
            if stats is None:
                self._stats[device] = [received_at, counter, transport, address, 1]
            else:
                stats[0] = received_at
                if counter > stats[1]:
                    stats[1] = counter
                stats[2] = transport
                stats[3] = address
                stats[4] += 1
        elif verdict is _DUPLICATE:
            if message["type"] == "hello":
                self._downlink_from(device, message["downlink_min"])
            return self._duplicate(frame, reply, address, transport, device, counter, received_at)
        else:
            # other content under a used counter: only the key holder can make it
            return self._resync(frame, reply, address, source, transport, device, counter,
                                received_at, window, "was already used for another frame")
        self.last_seen[device] = received_at
        try:
            ack = self._ack(device, counter, received_at, version=frame[0])
        except (InvalidMessage, OverflowError) as exc:
            log.error("cannot make the ack for device %s counter %s: %s", device, counter, exc)
            return None  # stored, not acked: the card retransmits, we ack it as a duplicate
        batch.acks.append((reply, address, ack))
        if not batch.started:
            batch.started = received_at
        return None

    def _duplicate(self, frame: bytes, reply: Sender, address: Any, transport: str, device: int,
                   counter: int, received_at: float) -> None:
        """A frame already seen: acked again, but a replay is bit-identical to the card's own
        retransmission, so nothing about it may change state. Commands ride along (without
        counting an attempt) only to the card's last verified address (the source of its last
        new frame); elsewhere the ack is empty, and withheld on UDP when even that would be
        larger than the frame (no amplification toward a spoofed source)."""
        batch = self.batch
        batch.duplicates += 1
        self.last_seen[device] = received_at
        verified = self._is_verified_address(device, transport, address)
        if not verified and transport == "udp" and len(frame) < EMPTY_ACK_SIZE:
            self.metrics.acks_withheld += 1
            return None
        try:
            ack = self._ack(device, counter, received_at, _REPEAT if verified else _NO_COMMANDS,
                            frame[0])
        except (InvalidMessage, OverflowError) as exc:
            log.error("cannot make the ack for device %s counter %s: %s", device, counter, exc)
            return None
        batch.acks.append((reply, address, ack))
        if not batch.started:
            batch.started = received_at
        return None

    def _resync(self, frame: bytes, reply: Sender, address: Any, source: Hashable, transport: str,
                device: int, counter: int, received_at: float, window: ReplayWindow, why: str,
                anyone: bool = False) -> str:
        """An authentic frame not stored because its counter is used: counted as a replay, and
        answered (after the batch commits) with a `resync` naming the next counter to use. With
        `anyone` (a frame that may be a replayed capture), to an address other than the card's
        last verified one only when the resync is no larger than the frame."""
        reason = self._reject("replay", source, f"device {device} counter {counter} {why}: not "
                              "stored, the card is told the next counter to use")
        next_counter = window.highest + 1
        if next_counter > _U32_MAX:
            log.error("device %s has used every uplink counter: it needs a new key", device)
            return reason
        if anyone and transport == "udp" and len(frame) < RESYNC_SIZE \
                and not self._is_verified_address(device, transport, address):
            self.metrics.acks_withheld += 1
            return reason
        try:
            answer = encode_frame({"type": "resync", "device": device,
                                   "counter": self._downlink_counter(device),
                                   "time": int(received_at), "rejected": counter,
                                   "next_counter": next_counter}, self.keyring, frame[0])
        except (InvalidMessage, OverflowError) as exc:
            log.error("cannot make the resync for device %s counter %s: %s", device, counter, exc)
            return reason
        batch = self.batch
        batch.acks.append((reply, address, answer))
        if not batch.started:
            batch.started = received_at
        return reason

    def _downlink_from(self, device: int, lowest: int) -> None:
        """The card applies downlinks from counter `lowest` on (its `hello`): never send below."""
        if self.dl_next.get(device, 1) < lowest:
            self.dl_next[device] = lowest
            self.dl_reserved.setdefault(device, 0)

    def _downlink_counter(self, device: int) -> int:
        """A fresh downlink counter for `device`, reserved in the store in blocks (in this batch)."""
        counter = self.dl_next.get(device)
        if counter is None:  # a device with a key but no registry row yet
            counter = 1
            self.dl_reserved[device] = 0
        if counter > self.dl_reserved[device]:
            reserve = min(counter + DOWNLINK_BLOCK - 1, _U32_MAX)
            if counter > _U32_MAX:
                raise OverflowError(f"device {device}: the downlink counter is exhausted")
            self.dl_reserved[device] = reserve
            self.batch.commit.downlink_reserved[device] = reserve
            self.batch.commit.downlink_claimed.setdefault(device, counter)
        self.dl_next[device] = counter + 1
        return counter

    def _is_verified_address(self, device: int, transport: str, address: Any) -> bool:
        """Did the device's last new (authentic, never seen) frame come from this address?"""
        stats = self._stats.get(device)  # new frames since the last statistics flush
        if stats is not None:
            return stats[3] == address and stats[2] == transport
        known = self._verified.get(device)
        if known is not None:
            return known == (transport, address)
        record = self.devices.get(device)  # after a restart: what the registry stored
        return record is not None and record.last_source == f"{transport}:{_address_text(address)}"

    def _authentic(self, frame: bytes) -> bool:
        """Cheap check for sources over budget: does the frame carry a valid tag?"""
        size = len(frame)
        if size < _MIN_FRAME or size > _MAX_FRAME:
            return False
        keys = self.keyring.get(_unpack_header(frame)[3])
        if keys is None:
            return False
        cut = size - _TAG_LEN
        return _compare(keys.tag(frame[:cut]), frame[cut:])

    def _reject(self, reason: str, source: Hashable, detail: str) -> str:
        self._rejected[reason] += 1
        within = self.budget.charge(source)
        if within and log.isEnabledFor(logging.DEBUG):
            log.debug("rejected frame from %s: %s: %s", source, reason, detail)
        elif within:
            # a rate-limited sample at info level, the totals are in the metrics
            now = self.clock()
            if now - self._rejects_logged >= 10.0:
                log.info("rejected frame from %s: %s (%s); %d more rejections since the last "
                         "message", source, reason, detail, self._reject_log_count)
                self._rejects_logged = now
                self._reject_log_count = 0
            else:
                self._reject_log_count += 1
        return reason

    def _load_window(self, device: int) -> ReplayWindow:
        size = self.settings.replay_window
        highest, recent = self.store.window_state(device, size)
        window = self.windows[device] = ReplayWindow(size, highest, recent)
        return window

    # --- acks and commands ----------------------------------------------------------------------

    def _ack(self, device: int, acked: int, now: float, commands_mode: int = 0,
             version: int = spec.VERSION) -> bytes:
        """The ack of `acked` with a fresh downlink counter, in protocol `version` (the uplink's).
        `commands_mode`: _SEND (a new frame: open commands go out and count an attempt), _REPEAT
        (a retransmission from the card's address: they go out, nothing counted) or
        _NO_COMMANDS."""
        counter = self._downlink_counter(device)
        stamp = int(now)
        if device not in self.commands or commands_mode == _NO_COMMANDS:  # the usual case first
            return self.encoder.encode(device, counter, stamp, acked, None, version)
        commands = self._commands_for_ack(device, now, commands_mode == _SEND)
        if not commands:
            return self.encoder.encode(device, counter, stamp, acked, None, version)
        while True:
            try:
                ack = self.encoder.encode(device, counter, stamp, acked,
                                          [wire_command(c, stamp) for c in commands], version)
                break
            except InvalidMessage:
                if len(commands) == 1:
                    raise
                commands.pop()  # too large together: the rest go in later acks
        if commands_mode == _SEND:
            self._mark_sent(commands, now)
        return ack

    def _commands_for_ack(self, device: int, now: float, finish: bool) -> list[CommandRecord]:
        """The open commands an ack may carry, oldest first. `finish`: expire or fail those past
        their limits (a new frame's ack); otherwise only skip them (changing nothing)."""
        open_commands = self.commands.get(device) or []
        settings = self.downlinks
        out: list[CommandRecord] = []
        still_open: list[CommandRecord] = []
        for command in open_commands:
            change = lifecycle.expire(command, now, settings.expire_after_s, settings.max_attempts)
            if change is not None:
                if finish:
                    self._finish(command, change)
                continue
            still_open.append(command)
            if len(out) < settings.max_commands_per_ack:
                out.append(command)
        if finish:
            if still_open:
                self.commands[device] = still_open
            else:
                self.commands.pop(device, None)
        return out

    def _mark_sent(self, commands: list[CommandRecord], now: float) -> None:
        """These commands went out in an ack: one attempt each."""
        batch = self.batch
        for command in commands:
            change = lifecycle.on_ack(command, now)
            lifecycle.apply(command, change)
            batch.commit.commands.append(change)
            batch.commands_sent += 1

    def _finish(self, command: CommandRecord, change: lifecycle.CommandChange) -> None:
        lifecycle.apply(command, change)
        self.batch.commit.commands.append(change)
        self.batch.finished.append(change.state)
        self.batch.finished_ids.append(command.id)
        self._finishing.add(command.id)
        log.info("command %s #%d for device %s: %s%s", command.cmd, command.seq, command.device,
                 change.state, f" ({change.detail})" if change.detail else "")

    def _command_result(self, device: int, message: dict[str, Any], now: float) -> None:
        seq, result = message["seq"], message["result"]
        open_commands = self.commands.get(device) or []
        for command in open_commands:
            if command.seq == seq:
                self._finish(command, lifecycle.on_result(command, result, now))
                open_commands.remove(command)
                if not open_commands:
                    self.commands.pop(device, None)
                if command.state == lifecycle.DONE and command.cmd == "set_contacts":
                    contacts = [Contact(c["key"], c["number"], c["name"])
                                for c in command.args.get("contacts", [])]
                    self.batch.commit.contacts.append((device, contacts))
                return
        log.info("command_result from device %s for seq %s (%s): no open command with that seq "
                 "(already finished, cancelled or unknown)", device, seq, result)

    def expire_commands(self, now: float) -> None:
        """Expire old commands of devices that have not called (run every minute or so)."""
        limit = self.downlinks.expire_after_s
        for device in list(self.commands):
            keep = []
            for command in self.commands[device]:
                change = lifecycle.expire(command, now, limit)
                if change is not None:
                    self._finish(command, change)
                else:
                    keep.append(command)
            if keep:
                self.commands[device] = keep
            else:
                del self.commands[device]

    # --- batches --------------------------------------------------------------------------------

    @property
    def stats_pending(self) -> bool:
        return bool(self._stats)

    def take_batch(self, now: float, *, force_stats: bool = False) -> PendingBatch | None:
        """Hand over the collected batch for commit (None when there is nothing to commit).
        Device statistics ride along every `device_stats_interval_s` (or now, with force_stats)."""
        batch = self.batch
        if self._stats and (force_stats or now - self._stats_flushed >= self.settings.device_stats_interval_s):
            batch.commit.device_stats = [
                (device, s[0], s[1], f"{s[2]}:{_address_text(s[3])}", s[4])
                for device, s in self._stats.items()]
            verified = self._verified
            for device, s in self._stats.items():
                verified[device] = (s[2], s[3])
            self._stats = {}
            self._stats_flushed = now
        if not batch.acks and not batch.commit:
            return None
        self.batch = PendingBatch()
        return batch

    def prepared(self, batch: PendingBatch) -> None:
        """The store has written the batch (not yet committed) and said what a shared store
        changed in it: acks numbered from a block of downlink counters another receiver reserved
        first take the counters of the block reserved instead; frames another receiver stored
        meanwhile with other content are not acked. Called before any further frame is handled."""
        commit = batch.commit
        if not commit.downlink_granted and not commit.frames_refused:
            return
        granted = commit.downlink_granted
        claimed = commit.downlink_claimed
        refused = set(commit.frames_refused)
        next_in_block = {device: first for device, (first, _last) in granted.items()}
        keyring = self.keyring
        acks = []
        for reply, address, ack in batch.acks:
            device, counter = _unpack_header(ack)[3:5]
            if device in next_in_block and counter >= claimed[device] or refused:
                message = decode_frame(ack, keyring)
                if refused and message["type"] == "ack" and (device, message["acked"]) in refused:
                    continue
                if device in next_in_block and counter >= claimed[device]:
                    if next_in_block[device] > granted[device][1]:
                        continue  # the block is used up (a flood of retransmissions): not acked
                    message["counter"] = next_in_block[device]
                    next_in_block[device] += 1
                    ack = encode_frame(message, keyring, ack[0])
            acks.append((reply, address, ack))
        batch.acks = acks
        for device, (first, last) in granted.items():
            self.dl_next[device] = next_in_block[device]
            self.dl_reserved[device] = last
            log.debug("device %s: downlink counters from %s on were reserved by another receiver "
                     "first: this receiver's acks go on from %s", device, claimed[device], first)
        for device, counter in refused:
            # the window took the refused content as stored: read it again from the store
            self.windows.pop(device, None)
            log.warning("device %s counter %s: another receiver stored other content under this "
                        "counter meanwhile: not stored, not acked (its next sending is answered "
                        "with a resync)", device, counter)
        self.metrics.downlink_blocks_moved += len(granted)

    def committed(self, batch: PendingBatch, last_seq: int, seconds: float) -> list[tuple[Sender, Any, bytes]]:
        """The batch is durable: count, and return the acks to send."""
        frames = batch.commit.frames  # rows of FRAME_ROW: device, counter, tag, type, ...
        stored = self.metrics.frames_stored
        for row in frames:
            stored[row[3]] += 1
        if self.commit_observer is not None and frames:
            self.commit_observer(last_seq, frames)
        m = self.metrics
        m.duplicates += batch.duplicates
        m.observe_commit(seconds)
        m.batch_frames += len(frames)
        m.commands_sent += batch.commands_sent
        for state in batch.finished:
            m.commands_finished[state] += 1
        self._finishing.difference_update(batch.finished_ids)
        return batch.acks

    def failed(self, batch: PendingBatch, error: BaseException) -> None:
        """The commit failed: nothing of it (nor of the batch collected meanwhile, whose
        duplicates may refer to it) is acked; state is rebuilt from the store."""
        self.metrics.commit_failures += 1
        dropped = len(batch) + len(self.batch)
        log.error("commit failed, %d frames not acked (the cards will retransmit): %s", dropped, error)
        try:
            self.reset()
        except Exception as exc:  # the store is unusable; keep going, the next commit will tell
            log.error("cannot reload state from the store: %s", exc)
            self.windows.clear()
            self.batch = PendingBatch()

    def devices_seen_since(self, since: float) -> int:
        return sum(1 for t in self.last_seen.values() if t >= since)

    @property
    def open_command_count(self) -> int:
        return sum(len(c) for c in self.commands.values())


def _address_text(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
