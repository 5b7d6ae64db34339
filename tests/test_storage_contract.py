"""The storage contract (host/storage): what every implementation of IngestStore and
EventLogReader must do, run against each implementation (SQLite and PostgreSQL: the `backend`
parameter). Real databases only: the SQLite files live in a temp folder, the PostgreSQL
databases in a throwaway server of the session (tools/pgcluster.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from carecard.host.events import alert_event
from carecard.host import downlink_lifecycle as lifecycle
from carecard.host.storage import CommitBatch, EventLogReader, IngestStore, StoreError
from carecard.host.storage.postgresql import PostgreSQLStore

from receiver_helpers import STATUS

DEVICE = 861234567890123
OTHER = 861234567890131


@dataclass
class Backend:
    store: IngestStore
    open_reader: Callable[[], EventLogReader]
    reopen: Callable[[], IngestStore]


def _sqlite(tmp_path: Path) -> Backend:
    from carecard.host.storage.sqlite import SQLiteEventLog, SQLiteStore

    path = tmp_path / "carecard.sqlite"
    return Backend(SQLiteStore(path), lambda: SQLiteEventLog(path), lambda: SQLiteStore(path))


def _postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    from carecard.host.storage.postgresql import PostgreSQLEventLog, PostgreSQLStore

    url = request.getfixturevalue("pg_cluster").new_database()
    return Backend(PostgreSQLStore(url), lambda: PostgreSQLEventLog(url), lambda: PostgreSQLStore(url))


BACKENDS = {"sqlite": lambda request, tmp_path: _sqlite(tmp_path), "postgresql": _postgresql}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = BACKENDS[request.param](request, tmp_path)
    yield made
    made.store.close()


def _frame(device: int, counter: int, tag: bytes | None = None, received_at: float = 1_764_000_000.0) -> tuple:
    """A frame's row (storage.FRAME_ROW); the opened frame is what the reader parses back."""
    from carecard.protocol import decode_frame, encode_frame

    key = bytes(range(16))
    message = {"type": "status", "device": device, "counter": counter, "time": 1_764_000_000 + counter,
               **STATUS}
    frame = encode_frame(message, key)
    opened: list[bytes] = []
    decode_frame(frame, key, opened)
    return (device, counter, tag or frame[-8:], "status", message["time"], received_at, "udp", frame, opened[0])


def _commit(store: IngestStore, batch: CommitBatch) -> int:
    last_seq = store.prepare(batch)
    store.finish()
    return last_seq


def test_nothing_prepared_is_seen_until_finished_and_an_abort_leaves_nothing(backend: Backend) -> None:
    store = backend.store
    store.prepare(CommitBatch(frames=[_frame(DEVICE, 1)]))
    store.abort()
    assert store.window_state(DEVICE, 16) == (-1, {})
    assert store.stored_tag(DEVICE, 1) is None
    row = _frame(DEVICE, 1)
    assert _commit(store, CommitBatch(frames=[row, _frame(DEVICE, 2)])) == 2
    highest, recent = store.window_state(DEVICE, 16)
    assert highest == 2 and recent[1] == row[2] and set(recent) == {1, 2}
    assert store.stored_tag(DEVICE, 1) == row[2] and store.stored_tag(OTHER, 1) is None


def test_a_frame_is_stored_once(backend: Backend) -> None:
    """A (device, counter) already stored is never stored again. In the embedded store (one
    receiver, whose replay window knows every stored frame, so it never sends one) it fails the
    whole batch and nothing of it is stored; in a store shared by several receivers (another one
    may have stored it after this one loaded its window) the frame leaves the batch, listed as
    refused when its content differs, and the rest is stored."""
    store = backend.store
    original = _frame(DEVICE, 1)
    _commit(store, CommitBatch(frames=[original]))
    batch = CommitBatch(frames=[_frame(DEVICE, 2), _frame(DEVICE, 1, tag=b"x" * 8)])
    if isinstance(store, PostgreSQLStore):
        assert _commit(store, batch) == 2
        assert batch.frames_refused == [(DEVICE, 1)] and [row[1] for row in batch.frames] == [2]
        assert store.window_state(DEVICE, 16)[0] == 2
    else:
        with pytest.raises(StoreError):
            store.prepare(batch)
        assert store.window_state(DEVICE, 16)[0] == 1
        assert _commit(store, CommitBatch(frames=[_frame(DEVICE, 2)])) == 2
    assert store.stored_tag(DEVICE, 1) == original[2]


def test_the_replay_window_keeps_only_the_last_counters(backend: Backend) -> None:
    store = backend.store
    _commit(store, CommitBatch(frames=[_frame(DEVICE, n) for n in (1, 5, 9, 10)]))
    highest, recent = store.window_state(DEVICE, 4)
    assert highest == 10 and set(recent) == {9, 10}  # 5 and 1 are older than 10 - 4


def test_downlink_reservations_only_grow_and_survive_a_reopen(backend: Backend) -> None:
    store = backend.store
    _commit(store, CommitBatch(downlink_reserved={DEVICE: 4096}))
    _commit(store, CommitBatch(downlink_reserved={DEVICE: 100}))  # never backwards
    store.close()
    backend.store = store = backend.reopen()
    assert store.load_devices()[DEVICE].downlink_reserved == 4096
    assert store.jump_downlink_counters([OTHER], 1 << 24) == []
    devices = store.load_devices()
    assert devices[DEVICE].downlink_reserved == 4096 + (1 << 24) and devices[OTHER].downlink_reserved == 1 << 24


def test_device_statistics_and_lost_history(backend: Backend) -> None:
    store = backend.store
    _commit(store, CommitBatch(frames=[_frame(DEVICE, 3)],
                               device_stats=[(DEVICE, 1_764_000_001.0, 3, "udp:10.0.0.1:5000", 1)]))
    record = store.load_devices()[DEVICE]
    assert (record.last_counter, record.last_source, record.frames_stored) == (3, "udp:10.0.0.1:5000", 1)
    # OTHER has a key but no row: its history is not in this database
    assert store.devices_without_history([DEVICE, OTHER]) == [OTHER]


def test_alerts_and_frames_share_one_ordered_log_with_durable_cursors(backend: Backend) -> None:
    store = backend.store
    _commit(store, CommitBatch(frames=[_frame(DEVICE, 1)]))
    alert = alert_event(DEVICE, "inactivity", {"still_for_s": 7200}, 1_764_007_200.0)
    assert store.append_events([alert]) == 2
    _commit(store, CommitBatch(frames=[_frame(DEVICE, 2)]))
    with backend.open_reader() as reader:
        entries = reader.entries_after(0)
        assert [entry.seq for entry in entries] == [1, 2, 3] and reader.last_seq() == 3
        assert [entry.event["id"] for entry in entries] == [f"{DEVICE}-1", alert["id"], f"{DEVICE}-2"]
        assert entries[1].event == alert and entries[0].message is not None
        assert reader.entries_after(1, limit=1)[0].event == alert
        assert reader.load_cursor("engine") is None
        reader.save_cursor("engine", 2)
        reader.save_cursor("sqlite", 3)
    with backend.open_reader() as reader:
        assert reader.load_cursor("engine") == 2 and reader.cursors() == {"engine": 2, "sqlite": 3}


def test_pruning_takes_delivered_alerts_never_frames(backend: Backend) -> None:
    store = backend.store
    _commit(store, CommitBatch(frames=[_frame(DEVICE, 1)]))
    store.append_events([alert_event(DEVICE, "offline", {}, 1_764_000_000.0 + n) for n in range(3)])
    _commit(store, CommitBatch(frames=[_frame(DEVICE, 2)]))
    store.prepare(CommitBatch(prune_upto=5))
    assert store.finish() == 3
    with backend.open_reader() as reader:
        assert [entry.seq for entry in reader.entries_after(0)] == [1, 5] and reader.first_seq() == 1


def test_command_changes_reach_only_open_commands(backend: Backend) -> None:
    from carecard.host.receiver.downlinks import cancel_command, queue_command

    store = backend.store
    _commit(store, CommitBatch(device_stats=[(DEVICE, 1.0, 0, "udp:x", 0)]))
    first = queue_command(store, DEVICE, "locate_now", {}, now=10.0)
    second = queue_command(store, DEVICE, "reboot", {"delay_s": 5}, now=11.0)
    assert [c.seq for c in store.open_commands()] == [first.seq, second.seq]
    cancel_command(store, DEVICE, second.seq, now=12.0)
    sent = lifecycle.on_ack(first, 13.0)
    _commit(store, CommitBatch(commands=[sent, lifecycle.on_ack(second, 13.0)]))
    (still_open,) = store.open_commands()
    assert (still_open.id, still_open.state, still_open.attempts) == (first.id, lifecycle.SENT, 1)
    lifecycle.apply(still_open, sent)
    _commit(store, CommitBatch(commands=[lifecycle.on_result(still_open, "done", 14.0)]))
    assert store.open_commands() == []


def test_the_command_queue_numbers_commands_and_refuses_what_it_cannot_do(backend: Backend) -> None:
    from carecard.host.downlink_lifecycle import CommandStateError
    from carecard.host.storage import CommandQueue, UnknownDeviceError

    store = backend.store
    assert isinstance(store, CommandQueue)
    with pytest.raises(UnknownDeviceError, match=f"device {DEVICE} is not registered"):
        store.queue_command(DEVICE, "locate_now", lambda seq: {}, 1.0)
    _commit(store, CommitBatch(device_stats=[(DEVICE, 1.0, 0, "udp:x", 0)]))
    first = store.queue_command(DEVICE, "checkin_prompt", lambda seq: {"timeout_s": 60, "prompt_id": seq}, 2.0)
    with pytest.raises(ValueError):  # make_args refuses: nothing queued, the seq not used up
        store.queue_command(DEVICE, "reboot", lambda seq: (_ for _ in ()).throw(ValueError("no")), 3.0)
    second = store.queue_command(DEVICE, "locate_now", lambda seq: {}, 4.0)
    assert (first.seq, first.args["prompt_id"], second.seq) == (1, 1, 2)
    assert [c.seq for c in store.list_commands(DEVICE, open_only=True)] == [1, 2]
    assert store.cancel_command(DEVICE, 1, 5.0).state == lifecycle.CANCELLED
    with pytest.raises(CommandStateError, match="already cancelled"):
        store.cancel_command(DEVICE, 1, 6.0)
    with pytest.raises(LookupError, match="no command with seq 9"):
        store.cancel_command(DEVICE, 9, 6.0)
    assert [c.seq for c in store.list_commands(DEVICE, open_only=True)] == [2]
    assert [c.seq for c in store.list_commands(limit=1)] == [2]



def test_the_device_registry_registers_all_or_nothing_and_bumps_the_generation(backend: Backend) -> None:
    from carecard.host.storage import Contact, DeviceExistsError, DeviceRecord, DeviceRegistry

    store = backend.store
    assert isinstance(store, DeviceRegistry)
    # a row the receiver made (frames of a card not registered yet) has no name: not registered
    _commit(store, CommitBatch(frames=[_frame(OTHER, 1)], device_stats=[(OTHER, 1.0, 1, "udp:x", 1)]))
    generation = store.generation()
    son = Contact(1, "+8613800138000", "Son")
    store.register_devices([DeviceRecord(DEVICE, "Grandma Li", "89860012345678901234", "+8613700137000",
                                         [son]), DeviceRecord(OTHER, "Uncle Wang")], now=5.0)
    assert store.generation() != generation
    devices = store.load_devices()
    first, other = devices[DEVICE], devices[OTHER]
    assert (first.name, first.iccid, first.phone, first.contacts, first.created_at) == (
        "Grandma Li", "89860012345678901234", "+8613700137000", [son], 5.0)
    assert (other.name, other.frames_stored, other.last_counter) == ("Uncle Wang", 1, 1)
    # already registered: refused, naming the device, and nothing of the call is stored
    third = OTHER + 8
    with pytest.raises(DeviceExistsError, match=f"device {DEVICE} is already registered") as refused:
        store.register_devices([DeviceRecord(third, "Aunt Chen"), DeviceRecord(DEVICE, "Li")], now=6.0)
    assert refused.value.device == DEVICE and third not in store.load_devices()

    def key_file_fails() -> None:
        raise OSError("disk full")

    generation = store.generation()
    with pytest.raises(OSError, match="disk full"):  # the caller's last step inside the transaction
        store.register_devices([DeviceRecord(third, "Aunt Chen")], now=6.0, before_commit=key_file_fails)
    assert third not in store.load_devices() and store.generation() == generation
    # replace: name, SIM details and contacts replaced; created_at and the statistics kept
    grid = Contact(4, "+8613900139000", "Grid worker")
    store.register_devices([DeviceRecord(OTHER, "Wang Wei", contacts=[grid])], replace=True, now=7.0)
    other = store.load_devices()[OTHER]
    assert (other.name, other.contacts, other.iccid, other.updated_at, other.frames_stored) == (
        "Wang Wei", [grid], None, 7.0, 1)
    store.close()
    backend.store = store = backend.reopen()
    assert store.load_devices()[DEVICE].contacts == [son]


def test_a_removed_device_leaves_the_registry_and_keeps_its_counters(backend: Backend) -> None:
    """Removal clears what the registry says of the elder, cancels the card's open commands and
    bumps the generation; the replay history, statistics, downlink reservation and command seqs
    stay, so the card added again continues them (a key and counter pair is never used twice)."""
    from carecard.host.storage import Contact, DeviceRecord, UnknownDeviceError

    store = backend.store
    son = Contact(1, "+8613800138000", "Son")
    store.register_devices([DeviceRecord(DEVICE, "王奶奶", "89860012345678901234", "+8613700137000", [son]),
                            DeviceRecord(OTHER, "Uncle Wang")], now=5.0)
    _commit(store, CommitBatch(frames=[_frame(DEVICE, 7)], device_stats=[(DEVICE, 9.0, 7, "udp:x", 1)],
                               downlink_reserved={DEVICE: 64}))
    store.queue_command(DEVICE, "locate_now", lambda seq: {}, 6.0)
    store.queue_command(DEVICE, "locate_now", lambda seq: {}, 6.0)
    generation = store.generation()

    def key_file_fails() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):  # the caller's last step inside the transaction
        store.remove_device(DEVICE, now=10.0, before_commit=key_file_fails)
    assert store.load_devices()[DEVICE].name == "王奶奶" and store.generation() == generation
    assert len(store.list_commands(DEVICE, open_only=True)) == 2

    steps: list[str] = []
    removed = store.remove_device(DEVICE, now=10.0, before_commit=lambda: steps.append("keys"))
    assert steps == ["keys"] and (removed.name, removed.contacts) == ("王奶奶", [son])
    assert store.generation() != generation
    row = store.load_devices()[DEVICE]
    assert (row.name, row.iccid, row.phone, row.contacts) == ("", None, None, [])
    assert (row.last_counter, row.frames_stored, row.downlink_reserved) == (7, 1, 64)
    assert store.window_state(DEVICE, 8)[0] == 7
    assert store.load_devices()[OTHER].name == "Uncle Wang"
    cancelled = store.list_commands(DEVICE)
    assert [c.state for c in cancelled] == [lifecycle.CANCELLED] * 2
    assert all("removed" in (c.detail or "") for c in cancelled)
    # not registered any more: removing it again names the device and the way out
    with pytest.raises(UnknownDeviceError, match=f"device {DEVICE} is not registered.*carecard devices"):
        store.remove_device(DEVICE, now=11.0)
    with pytest.raises(UnknownDeviceError, match=f"device {OTHER + 8} is not registered"):
        store.remove_device(OTHER + 8, now=11.0)

    # added again (a card reissued): a new registration on top of the kept counters
    store.register_devices([DeviceRecord(DEVICE, "李爷爷")], now=12.0)
    again = store.load_devices()[DEVICE]
    assert (again.name, again.created_at, again.downlink_reserved, again.last_counter) == ("李爷爷", 5.0, 64, 7)
    assert store.queue_command(DEVICE, "locate_now", lambda seq: {}, 13.0).seq == 3
    store.close()
    backend.store = store = backend.reopen()
    assert store.load_devices()[DEVICE].downlink_reserved == 64


def test_a_devices_village_is_registered_replaced_and_cleared_on_removal(backend: Backend) -> None:
    """The village a card belongs to (the dashboard shows a grid worker their village's cards)."""
    from carecard.host.storage import DeviceRecord

    store = backend.store
    store.register_devices([DeviceRecord(DEVICE, "王奶奶", village="石井村"), DeviceRecord(OTHER, "Uncle Wang")],
                           now=5.0)
    devices = store.load_devices()
    assert (devices[DEVICE].village, devices[OTHER].village) == ("石井村", None)
    store.register_devices([DeviceRecord(OTHER, "Uncle Wang", village="水头村")], replace=True, now=6.0)
    store.close()
    backend.store = store = backend.reopen()
    assert {d: r.village for d, r in store.load_devices().items()} == {DEVICE: "石井村", OTHER: "水头村"}
    store.remove_device(DEVICE, now=7.0)
    assert store.load_devices()[DEVICE].village is None


def test_a_sqlite_registry_from_before_villages_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    from carecard.host.storage import DeviceRecord
    from carecard.host.storage.sqlite import SQLiteStore

    path = tmp_path / "carecard.sqlite"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE devices DROP COLUMN village")
    conn.execute("INSERT INTO devices (device, name, created_at, updated_at) VALUES (?, 'Old', 1, 1)", (DEVICE,))
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.load_devices()[DEVICE].village is None
        store.register_devices([DeviceRecord(OTHER, "New", village="石井村")], now=2.0)
        assert store.load_devices()[OTHER].village == "石井村"
    finally:
        store.close()


def test_registry_changes_are_registry_events_in_the_log_kept_by_pruning(backend: Backend) -> None:
    """A removal, and the registration of a card removed before, append a `registry` event in
    the change's own transaction (nothing when it fails; nothing for a card new to the registry
    or re-provisioned); the engine reads them in order with the frames, possibly after every
    sink delivered them, so pruning keeps them like frames."""
    from carecard.host.storage import DeviceRecord

    store = backend.store
    store.register_devices([DeviceRecord(DEVICE, "王奶奶"), DeviceRecord(OTHER, "Uncle Wang")], now=5.0)
    store.register_devices([DeviceRecord(DEVICE, "王奶奶 (new SIM)")], replace=True, now=6.0)

    def key_file_fails() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.remove_device(DEVICE, now=7.0, before_commit=key_file_fails)
    store.remove_device(DEVICE, now=8.0)
    store.append_events([alert_event(OTHER, "offline", {}, 9.0)])
    store.register_devices([DeviceRecord(DEVICE, "李爷爷")], now=10.0)
    with backend.open_reader() as reader:
        events = [entry.event for entry in reader.entries_after(0)]
    changes = [(e["device"], e["data"]["change"], e["received_at"]) for e in events if e["kind"] == "registry"]
    assert changes == [(str(DEVICE), "removed", "1970-01-01T00:00:08.000Z"),
                       (str(DEVICE), "added", "1970-01-01T00:00:10.000Z")]
    store.prepare(CommitBatch(prune_upto=100))
    assert store.finish() == 1  # the alert only
    with backend.open_reader() as reader:
        assert [entry.event for entry in reader.entries_after(0)] == [e for e in events if e["kind"] == "registry"]


# --- the alert engine's side: alerts, requests, checkpoints (AlertStore, EngineStore) ------------

def _alert(alert_id: str, state: str = "open", *, device: int = DEVICE, kind: str = "inactivity",
           step: str = "checkin", at: float = 1_764_007_200.0, **more: object) -> "AlertRecord":
    from carecard.host.storage import AlertRecord

    return AlertRecord(alert_id, device, kind, state, step, at, at,
                       [{"step": step, "at": at, "notify": ["card"], "recipients": []}],
                       details={"still_s": 7200, "lat": 24.7}, **more)  # type: ignore[arg-type]


def test_an_engine_commit_stores_its_alerts_events_states_and_cursor_together(backend: Backend) -> None:
    from carecard.host.storage import AlertStore, EngineCommit, EngineStore

    store = backend.store
    assert isinstance(store, AlertStore) and isinstance(store, EngineStore)
    assert store.load_engine("engine") is None
    _commit(store, CommitBatch(frames=[_frame(DEVICE, 1)]))
    event = alert_event(DEVICE, "inactivity", {"step": "checkin"}, 1_764_007_200.0, alert_id="a1-checkin")
    result = store.commit_engine("engine", EngineCommit(
        cursor=1, now=1_764_007_200.0, devices={DEVICE: '{"move_t": 1}', OTHER: '{"move_t": 2}'},
        events=[event], alerts=[_alert("a1"), _alert("a2", kind="sos", step="raised", device=OTHER,
                                                     at=1_764_007_300.0, prompt_id=None)]))
    assert result.last_seq == 2 and result.commands == [] and result.skipped_commands == []
    store.commit_engine("engine", EngineCommit(cursor=2, now=1_764_007_260.0, devices={OTHER: None},
                                               alerts=[_alert("a1", step="family", prompt_id=3)]))
    store.close()
    backend.store = store = backend.reopen()
    checkpoint = store.load_engine("engine")
    assert checkpoint is not None and (checkpoint.cursor, checkpoint.now) == (2, 1_764_007_260.0)
    assert checkpoint.devices == {DEVICE: '{"move_t": 1}'} and store.load_engine("other") is None
    with backend.open_reader() as reader:
        assert [entry.event for entry in reader.entries_after(1)] == [event]
    first = store.get_alert("a1")
    assert first is not None and (first.step, first.prompt_id, first.device) == ("family", 3, DEVICE)
    assert first.notified[0]["notify"] == ["card"] and first.details == {"still_s": 7200, "lat": 24.7}
    assert store.get_alert("nope") is None
    assert [a.id for a in store.list_alerts()] == ["a1", "a2"]
    assert [a.id for a in store.list_alerts(device=OTHER)] == ["a2"]
    assert [a.id for a in store.list_alerts(kinds=["sos"], states=["open"])] == ["a2"]
    assert [a.id for a in store.list_alerts(states=["resolved"])] == []
    assert [a.id for a in store.list_alerts(since=1_764_007_250.0)] == ["a2"]
    assert [a.id for a in store.list_alerts(limit=1)] == ["a2"]


def test_a_failed_engine_commit_stores_nothing_of_it(backend: Backend) -> None:
    from carecard.host.storage import EngineCommit

    store = backend.store
    store.commit_engine("engine", EngineCommit(cursor=5, now=10.0, devices={DEVICE: "{}"}))
    event = alert_event(DEVICE, "sos", {}, 1_764_007_200.0, alert_id="s1-raised")
    for bad in (EngineCommit(cursor=4, now=11.0, events=[event], alerts=[_alert("s1")]),  # cursor back
                EngineCommit(cursor=6, now=11.0, events=[event], alerts=[_alert("s1", state="closed")])):
        with pytest.raises(StoreError, match="engine 'engine'"):
            store.commit_engine("engine", bad)
    checkpoint = store.load_engine("engine")
    assert checkpoint is not None and (checkpoint.cursor, checkpoint.now) == (5, 10.0)
    assert store.list_alerts() == []
    with backend.open_reader() as reader:
        assert reader.last_seq() == 0


def test_an_engine_commit_is_fenced_against_another_engine_of_its_name(backend: Backend) -> None:
    """Two workers of one engine name (a lease lost without its holder noticing): the one whose
    fence (the checkpoint it last loaded or committed) is stale commits nothing."""
    from carecard.host.storage import EngineCommit

    store = backend.store
    first = store.commit_engine("engine", EngineCommit(cursor=1, now=1.0, fence=-1.0))  # no checkpoint yet
    loaded = store.load_engine("engine")
    assert loaded is not None and loaded.saved_at == first.saved_at
    second = store.commit_engine("engine", EngineCommit(cursor=2, now=2.0, fence=first.saved_at))
    assert second.saved_at > first.saved_at
    event = alert_event(DEVICE, "sos", {}, 1_764_007_200.0, alert_id="s1-raised")
    for stale in (-1.0, first.saved_at):  # the worker that loaded before the other one committed
        with pytest.raises(StoreError, match="another engine"):
            store.commit_engine("engine", EngineCommit(cursor=3, now=3.0, events=[event], alerts=[_alert("s1")],
                                                       fence=stale))
    checkpoint = store.load_engine("engine")
    assert checkpoint is not None and checkpoint.cursor == 2 and store.list_alerts() == []
    store.commit_engine("engine", EngineCommit(cursor=3, now=3.0))  # no fence: not checked


def test_requests_are_checked_queued_in_order_and_handled_once(backend: Backend) -> None:
    from carecard.host.storage import (ACTION_DONE, ACTION_REFUSED, AlertActionError, AlertStateError,
                                       EngineCommit, UnknownAlertError)

    store = backend.store
    store.commit_engine("engine", EngineCommit(cursor=0, now=1.0, alerts=[_alert("a1"), _alert("a2")]))
    with pytest.raises(UnknownAlertError, match="no alert has the id 'a9'"):
        store.request_alert_action("a9", "acknowledge", "Li", now=2.0)
    with pytest.raises(AlertActionError, match="unknown action 'close'"):
        store.request_alert_action("a1", "close", "Li", now=2.0)
    with pytest.raises(AlertActionError, match="by"):
        store.request_alert_action("a1", "acknowledge", "  ", now=2.0)
    with pytest.raises(AlertActionError, match="reason"):
        store.request_alert_action("a1", "resolve", "Li", reason="x" * 5000, now=2.0)
    ack = store.request_alert_action("a1", "acknowledge", "Son Wang", source="mqtt", now=3.0)
    res = store.request_alert_action("a2", "resolve", "Li", reason="visited: fine", now=4.0)
    assert (ack.device, ack.by, ack.source, ack.outcome) == (DEVICE, "Son Wang", "mqtt", None)
    assert [a.id for a in store.pending_alert_actions()] == [ack.id, res.id] and ack.id < res.id
    assert [a.id for a in store.pending_alert_actions(limit=1)] == [ack.id]
    store.commit_engine("engine", EngineCommit(
        cursor=0, now=5.0, actions=[(ack.id, ACTION_DONE, None, 5.0), (res.id, ACTION_DONE, None, 5.0)],
        alerts=[_alert("a1", "acknowledged", acknowledged_by="Son Wang", acknowledged_at=5.0),
                _alert("a2", "resolved", closed_reason="resolved_by_hand", closed_by="Li", closed_at=5.0)]))
    assert store.pending_alert_actions() == []
    handled = store.list_alert_actions("a2")
    assert [(a.action, a.reason, a.outcome, a.handled_at) for a in handled] == [
        ("resolve", "visited: fine", ACTION_DONE, 5.0)]
    assert [a.id for a in store.list_alert_actions()] == [ack.id, res.id]
    assert [a.id for a in store.list_alert_actions(limit=1)] == [res.id]
    with pytest.raises(AlertStateError, match="already acknowledged by Son Wang"):
        store.request_alert_action("a1", "acknowledge", "Li", now=6.0)
    with pytest.raises(AlertStateError, match="already resolved by Li"):
        store.request_alert_action("a2", "acknowledge", "Son Wang", now=6.0)
    late = store.request_alert_action("a1", "resolve", "Li", now=7.0)  # acknowledged: may be resolved
    store.commit_engine("engine", EngineCommit(cursor=0, now=8.0,
                                               actions=[(late.id, ACTION_REFUSED, "raced", 8.0)]))
    assert store.list_alert_actions("a1")[-1].outcome == ACTION_REFUSED


def test_an_engine_commit_queues_check_in_prompts_for_registered_devices(backend: Backend) -> None:
    from carecard.host.storage import EngineCommit

    store = backend.store
    _commit(store, CommitBatch(device_stats=[(DEVICE, 1.0, 0, "udp:x", 0)]))
    generation = store.generation()
    result = store.commit_engine("engine", EngineCommit(cursor=0, now=2.0, commands=[
        (DEVICE, "checkin_prompt", {"prompt_id": 7, "timeout_s": 300}),
        (OTHER, "checkin_prompt", {"prompt_id": 1, "timeout_s": 300})]))
    (queued,) = result.commands
    assert (queued.device, queued.seq, queued.cmd, queued.args, queued.state) == (
        DEVICE, 1, "checkin_prompt", {"prompt_id": 7, "timeout_s": 300}, lifecycle.QUEUED)
    assert result.skipped_commands == [(OTHER, "checkin_prompt", f"device {OTHER} is not registered")]
    # queued at the engine's clock, which a command's time to live runs from (as the receiver's
    # clock, which expires it: both the real time but in a simulation, where both are virtual)
    assert (queued.created_at, queued.updated_at) == (2.0, 2.0)
    assert [(c.created_at, c.updated_at) for c in store.open_commands()] == [(2.0, 2.0)]
    assert store.generation() != generation
    assert [(c.id, c.args["prompt_id"]) for c in store.open_commands()] == [(queued.id, 7)]
    assert store.queue_command(DEVICE, "locate_now", lambda seq: {}, 3.0).seq == 2


def test_storage_imports_nothing_of_the_receiver() -> None:
    """The storage layer sits below the receiver (and below the engine and the sinks): no module
    of host/storage imports carecard.host.receiver, so a second store or a tool that only reads
    the database never pulls the receiver in."""
    import ast

    storage = Path(__file__).resolve().parent.parent / "host" / "storage"
    offenders = []
    for path in sorted(storage.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{alias.name}" for alias in node.names]
                     if isinstance(node, ast.ImportFrom) and node.module else [])
            offenders += [f"{path.relative_to(storage)}:{node.lineno}: {name}" for name in names
                          if name.startswith(("carecard.host.receiver", "carecard.host.engine",
                                              "carecard.host.sinks", "carecard.host.commands"))]
    assert offenders == []


# Backends that implement storage.EngineSettingsStore.
SETTINGS_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=SETTINGS_BACKENDS)
def settings_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = BACKENDS[request.param](request, tmp_path)
    yield made
    made.store.close()


def test_the_engines_settings_are_kept_per_device_for_registered_devices(settings_backend: Backend) -> None:
    from carecard.host.storage import EngineSettingsStore, UnknownDeviceError

    backend = settings_backend
    store = backend.store
    assert isinstance(store, EngineSettingsStore)
    assert store.load_engine_settings() == ({}, {})
    _commit(store, CommitBatch(device_stats=[(DEVICE, 1.0, 0, "udp:x", 0), (OTHER, 1.0, 0, "udp:x", 0)]))
    generation = store.generation()
    store.save_engine_settings({"stillness_threshold": "2h"}, {DEVICE: {"name": "王奶奶", "family": ["+861"]}}, 1.0)
    assert store.generation() != generation
    store.save_engine_settings(None, {OTHER: {"wake": "06:00"}}, 2.0)
    assert store.load_engine_settings() == ({"stillness_threshold": "2h"},
                                            {DEVICE: {"name": "王奶奶", "family": ["+861"]}, OTHER: {"wake": "06:00"}})
    with pytest.raises(UnknownDeviceError, match="861234567890149 not in the registry"):
        store.save_engine_settings({}, {DEVICE: {}, 861234567890149: {"name": "x"}}, 3.0)
    store.save_engine_settings(None, {OTHER: {"wake": "07:00"}}, 4.0, replace=True)
    store.close()
    backend.store = store = backend.reopen()
    assert store.load_engine_settings() == ({"stillness_threshold": "2h"}, {OTHER: {"wake": "07:00"}})


def test_a_removed_device_loses_its_engine_settings(settings_backend: Backend) -> None:
    """The elder's settings (home, contacts to alert) leave with the card: a card reissued to
    another elder must not be judged by the first one's home."""
    from carecard.host.storage import DeviceRecord

    store = settings_backend.store
    store.register_devices([DeviceRecord(DEVICE, "王奶奶"), DeviceRecord(OTHER, "Uncle Wang")], now=1.0)
    store.save_engine_settings({"stillness_threshold": "2h"}, {DEVICE: {"wake": "06:00"},
                                                               OTHER: {"wake": "07:00"}}, 2.0)
    store.remove_device(DEVICE, now=3.0)
    assert store.load_engine_settings() == ({"stillness_threshold": "2h"}, {OTHER: {"wake": "07:00"}})
