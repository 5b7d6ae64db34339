"""The ingest pipeline without sockets: verdicts, persist-before-ack, downlink counters, budgets."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.paths import ingest_db_path
from carecard.host.receiver.config import BudgetSettings
from carecard.host.receiver.ingest import DOWNLINK_BLOCK
from carecard.host.storage import StoreError
from carecard.protocol import decode_frame, encode_frame, spec

from receiver_helpers import Card, Harness, commit_batch, provision


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    devices = provision(tmp_path, 2)
    h = Harness(tmp_path, devices)
    yield h
    h.store.close()


def card_of(h: Harness, index: int = 0) -> Card:
    device, key = list(h.devices.items())[index]
    return Card(device, key)


def test_new_frame_is_stored_with_its_event_and_acked_only_after_commit(harness: Harness) -> None:
    card = card_of(harness)
    assert harness.feed(card.frame("hello", fw_major=1, fw_minor=2, fw_patch=3, reset_cause="power_on",
                                   config_version=1, modem="a7670", downlink_min=0,
                                   motion_sensor="lis2dh12")) is None
    assert harness.sent == []  # nothing acked before the commit
    assert harness.frames() == []
    acks = harness.commit()
    assert len(acks) == 1
    ack = card.ack(acks[0])
    assert ack["acked"] == 1 and ack["commands"] == []
    assert harness.frames() == [(card.device, 1)]
    assert harness.events() == [f"{card.device}-1"]
    assert harness.metrics.frames_stored["hello"] == 1


def test_retransmission_is_acked_again_but_stored_once(harness: Harness) -> None:
    card = card_of(harness)
    frame = card.frame()
    harness.feed(frame)
    harness.feed(frame)  # duplicate of a frame in the same, uncommitted batch
    acks = harness.commit()
    assert [card.ack(a)["acked"] for a in acks] == [1, 1]
    harness.feed(frame)  # duplicate of a committed frame
    acks += harness.commit()
    assert len(acks) == 3
    assert harness.frames() == [(card.device, 1)]
    assert harness.events() == [f"{card.device}-1"]
    assert harness.metrics.duplicates == 2
    counters = [card.ack(a)["counter"] for a in acks]
    assert counters == sorted(set(counters)), "every ack has a fresh, increasing downlink counter"


def test_reused_counter_with_other_content_is_a_replay(harness: Harness) -> None:
    card = card_of(harness)
    harness.feed(card.frame(counter=5))
    assert harness.feed(card.frame(counter=5, lat_e7=1)) == "replay"  # pending in this batch
    harness.commit()
    assert harness.feed(card.frame(counter=5, lat_e7=2)) == "replay"  # committed
    assert harness.metrics.rejected["replay"] == 2
    assert harness.frames() == [(card.device, 5)]


def test_too_old_frames_are_looked_up_in_the_store(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    h = Harness(tmp_path, devices, window=16)
    card = card_of(h)
    first = card.frame(counter=1)
    h.feed(first)
    h.commit()
    for counter in range(2, 60):
        h.feed(card.frame(counter=counter))
    h.commit()
    # counter 1 is far below the window now: the store decides
    assert h.feed(first) is None  # same tag: a late retransmission, acked again
    assert card.ack(h.commit()[0])["acked"] == 1
    assert h.feed(card.frame(counter=1, lat_e7=7)) == "replay"  # other content
    h.store.close()


def test_unknown_counter_below_the_window_is_rejected(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    h = Harness(tmp_path, devices, window=16)
    card = card_of(h)
    for counter in range(40, 60):
        if counter != 55:
            h.feed(card.frame(counter=counter))
    h.commit()
    h.reopen()  # the window is restored from the store
    assert h.feed(card.frame(counter=10)) == "replay"  # never stored, older than the window
    assert h.feed(card.frame(counter=50)) is None  # stored: a duplicate
    assert h.feed(card.frame(counter=45, lat_e7=3)) == "replay"
    assert h.feed(card.frame(counter=39)) == "replay"  # below the window (59 - 16), not stored
    assert h.feed(card.frame(counter=55)) is None  # inside the window, never seen: reordered, new
    h.commit()
    assert (card.device, 55) in h.frames() and (card.device, 10) not in h.frames()
    h.store.close()


def test_windows_and_downlink_counters_survive_a_restart(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    h = Harness(tmp_path, devices)
    card = card_of(h)
    frames = [card.frame() for _ in range(5)]
    for frame in frames:
        h.feed(frame)
    acks = h.commit()
    before = max(card.ack(a)["counter"] for a in acks)
    h.reopen()
    assert h.feed(frames[2]) is None  # duplicate, known from the store
    assert h.feed(card.frame(counter=3, lat_e7=5)) == "replay"  # answered with a resync
    answers = [decode_frame(a, card.key) for a in h.commit()]
    assert [a["type"] for a in answers] == ["ack", "resync"]
    after = [a["counter"] for a in answers]
    assert min(after) > before
    # after a restart the receiver starts above everything it may have used
    assert min(after) > DOWNLINK_BLOCK - 1 or before < DOWNLINK_BLOCK
    assert h.frames() == [(card.device, c) for c in range(1, 6)]
    h.store.close()


def test_a_registry_change_keeps_the_downlink_counters_and_a_restart_jumps_past_the_block(
        tmp_path: Path) -> None:
    """Counters go on one by one across registry reloads (an admin's change); a process that
    has not numbered the device yet (a restart), or whose commit failed (its claim of the block
    may be what failed: another receiver on the same database holds it), starts above the
    reserved block."""
    devices = provision(tmp_path, 2)
    h = Harness(tmp_path, devices)
    card, other = card_of(h), card_of(h, 1)
    counters = []
    for _ in range(4):
        h.feed(card.frame())
        counters += [card.ack(a)["counter"] for a in h.commit()]
        # what the receiver does when `carecard devices add` or `carecard send` changed the registry
        h.ingest.load_registry(h.store.load_devices(), h.store.open_commands())
    h.feed(other.frame())
    h.commit()
    assert counters == [1, 2, 3, 4]
    h.ingest.reset()  # after a failed commit the store is the truth for reservations
    h.feed(card.frame())
    assert [card.ack(a)["counter"] for a in h.commit()] == [DOWNLINK_BLOCK + 1]
    h.reopen()
    h.feed(card.frame())
    assert [card.ack(a)["counter"] for a in h.commit()] == [2 * DOWNLINK_BLOCK + 1]
    h.store.close()


def test_downlink_counter_never_reused_after_a_crash_between_commits(tmp_path: Path) -> None:
    """Acks are numbered from reservations committed before they were sent; a restart (even after
    SIGKILL) starts above the last reservation."""
    devices = provision(tmp_path, 1)
    h = Harness(tmp_path, devices)
    card = card_of(h)
    seen = []
    for round_ in range(3):
        for _ in range(DOWNLINK_BLOCK // 2 + 7):
            h.feed(card.frame())
        seen += [card.ack(a)["counter"] for a in h.commit()]
        h.reopen()  # as if the process died right after this commit
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_failed_commit_acks_nothing_and_recovers(harness: Harness) -> None:
    card = card_of(harness)
    harness.feed(card.frame())
    batch = harness.ingest.take_batch(time.time())
    # a duplicate of the in-flight frame arrives while its commit is running
    harness.feed(card.frame(counter=1))
    harness.ingest.failed(batch, StoreError("disk full"))
    assert harness.sent == [] and harness.frames() == []
    assert harness.metrics.commit_failures == 1
    # the card retransmits: now it is stored and acked
    assert harness.feed(card.frame(counter=1)) is None
    assert [card.ack(a)["acked"] for a in harness.commit()] == [1]
    assert harness.frames() == [(card.device, 1)]


def test_commit_is_all_or_nothing(harness: Harness) -> None:
    card = card_of(harness)
    for _ in range(3):
        harness.feed(card.frame())
    batch = harness.ingest.take_batch(time.time())
    batch.commit.frames.append(batch.commit.frames[0])  # a primary-key violation at the end
    with pytest.raises(StoreError):
        commit_batch(harness.store, batch.commit)
    assert harness.frames() == [] and harness.events() == []


def test_wrong_key_unknown_device_and_reflected_acks_are_rejected(harness: Harness) -> None:
    card = card_of(harness)
    forged = Card(card.device, os.urandom(16)).frame()
    assert harness.feed(forged) == "bad_tag"
    assert harness.feed(Card(123456789012347, os.urandom(16)).frame()) == "unknown_device"
    ack = encode_frame({"type": "ack", "device": card.device, "counter": 1, "time": 1, "acked": 1,
                        "commands": []}, card.key)
    assert harness.feed(ack) == "wrong_direction"
    assert harness.feed(b"\x01" * 10) == "truncated"
    assert harness.feed(bytes(spec.MAX_FRAME + 1)) == "oversize"
    assert harness.commit() == []
    assert harness.frames() == []


def test_source_over_budget_is_dropped_cheaply_but_genuine_frames_still_pass(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    h = Harness(tmp_path, devices, budget=BudgetSettings(rejects_per_second=1, burst=5))
    card = card_of(h)
    reasons = [h.feed(os.urandom(40), source="10.9.9.9") for _ in range(20)]
    assert all(r not in (None, "over_budget") for r in reasons[:5])
    assert set(reasons[6:]) == {"over_budget"}
    assert "10.9.9.9" in h.ingest.budget.over
    # a genuine card behind the same address (carrier NAT) is not cut off
    assert h.feed(card.frame(), source="10.9.9.9") is None
    # another source is unaffected
    assert h.feed(os.urandom(40), source="10.1.1.1") != "over_budget"
    assert len(h.commit()) == 1
    assert h.metrics.rejected["over_budget"] >= 14
    h.store.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), flip=st.integers(min_value=0, max_value=10_000))
def test_hostile_bytes_never_crash_and_are_counted(harness: Harness, data: bytes, flip: int) -> None:
    card = card_of(harness)
    genuine = bytearray(card.frame())
    genuine[flip % len(genuine)] ^= 1 + flip % 255  # a corrupted genuine frame
    before = harness.metrics.rejected_total
    for frame in (data, bytes(genuine), data + bytes(genuine)):
        reason = harness.feed(frame, source=f"10.0.{flip % 200}.{len(data) % 200}")
        assert reason is not None and isinstance(reason, str)
    assert harness.metrics.rejected_total == before + 3
    assert harness.commit() == []


def test_event_log_holds_every_committed_frame_in_order(harness: Harness) -> None:
    a, b = card_of(harness, 0), card_of(harness, 1)
    for _ in range(3):
        harness.feed(a.frame())
        harness.feed(b.frame("status"))
    harness.commit()
    log = SQLiteEventLog(ingest_db_path(harness.data_dir))
    try:
        events = [event for _seq, event in log.events_after(0)]
    finally:
        log.close()
    assert [e["id"] for e in events] == [f"{d}-{c}" for c in (1, 2, 3) for d in (a.device, b.device)]
    assert {e["kind"] for e in events} == {"position", "status"}


def test_a_database_of_a_development_schema_is_refused_with_the_fix(tmp_path: Path) -> None:
    import sqlite3

    from carecard.host.storage import StoreError
    from carecard.host.storage.sqlite.store import SQLiteStore

    provision(tmp_path, 1)
    db = ingest_db_path(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 1 WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match=r"schema version 1, .*no release wrote: start with a new data folder"):
        SQLiteStore(db)


def test_a_database_of_a_newer_schema_is_refused_with_the_fix(tmp_path: Path) -> None:
    import sqlite3

    from carecard.host.storage import StoreError
    from carecard.host.storage.sqlite.store import SQLiteStore

    provision(tmp_path, 1)
    db = ingest_db_path(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match=r"schema version 99.*upgrade carecard"):
        SQLiteStore(db)


def test_the_commit_observer_sees_each_commits_frames_only_after_it(harness: Harness) -> None:
    """The benchmark's latency probe: after a commit, and only then, the observer gets the event
    log's last seq and that commit's frame rows (FRAME_ROW), in order; nothing when no frame
    was stored."""
    calls: list[tuple[int, list[tuple]]] = []
    harness.ingest.commit_observer = lambda last_seq, rows: calls.append((last_seq, list(rows)))
    a = card_of(harness, 0)
    frames = [a.frame(), a.frame("status"), a.frame()]
    received = time.time()
    for frame in frames:
        assert harness.ingest.handle(frame, harness.send, ("10.0.0.1", 1), "10.0.0.1", "udp", received) is None
    assert calls == []
    harness.commit()
    with SQLiteEventLog(ingest_db_path(harness.data_dir)) as log:
        last_seq = log.last_seq()
    ((seq, rows),) = calls
    assert seq == last_seq == 3
    assert [(row[0], row[1], row[5], row[7]) for row in rows] == [(a.device, n, received, f)
                                                                    for n, f in enumerate(frames, 1)]
    harness.commit()  # nothing new: no call
    assert len(calls) == 1


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=16, max_size=16) | st.binary(min_size=32, max_size=32),
       data=st.binary(max_size=600))
def test_frame_tags_are_truncated_hmac_sha256(key: bytes, data: bytes) -> None:
    """FrameKeys.tag hashes the HMAC pads once per key (the receiver's hot path): still exactly
    HMAC-SHA256(mac_key, data) cut to the tag length, as the card computes it."""
    import hmac

    from carecard.protocol.crypto import FrameKeys

    keys = FrameKeys(key)
    assert keys.mac_key == hmac.digest(key, spec.KDF_MAC, "sha256")
    assert keys.tag(data) == hmac.digest(keys.mac_key, data, "sha256")[: spec.TAG_LEN]
    assert keys.tag(data) == keys.tag(data)  # the pads' states are copied, never consumed


def test_device_statistics_name_the_last_source_and_count_the_frames(harness: Harness) -> None:
    card = card_of(harness)
    harness.feed(card.frame(), source="10.0.0.1", address=("10.0.0.1", 5000))
    harness.feed(card.frame(), source="10.0.0.9", address=("10.0.0.9", 6001))
    harness.feed(card.frame(counter=2), source="10.0.0.9", address=("10.0.0.9", 6001))  # duplicate
    batch = harness.ingest.take_batch(time.time(), force_stats=True)
    assert batch is not None
    commit_batch(harness.store, batch.commit)
    row = harness.store.connection.execute(
        "SELECT last_counter, last_source, frames_stored FROM devices WHERE device = ?",
        (card.device,)).fetchone()
    assert row == (2, "udp:10.0.0.9:6001", 2)


_OPS = st.lists(st.one_of(
    st.tuples(st.just("new"), st.integers(0, 1)),         # a card sends its next frame
    st.tuples(st.just("again"), st.integers(0, 10_000)),  # an earlier frame, sent again
    st.tuples(st.just("take"), st.just(0)),               # the writer takes the batch
    st.tuples(st.just("commit"), st.just(0)),             # ... and its commit succeeds
    st.tuples(st.just("fail"), st.just(0)),               # ... or fails
), max_size=60)


@settings(max_examples=100, deadline=None)
@given(ops=_OPS)
def test_any_interleaving_of_frames_retransmissions_and_commits_keeps_persist_before_ack(
        ops: list[tuple[str, int]]) -> None:
    """Whatever the order of new frames, retransmissions (of committed frames, of frames whose
    batch is committing, of frames whose commit failed) and commits that succeed or fail: an
    ack only ever names a frame already stored, no frame is stored twice, and once the cards
    have sent everything again every frame is stored and acked."""
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(Path(tmp), provision(Path(tmp), 2))
        try:
            _interleave(harness, ops)
        finally:
            harness.store.close()


def _interleave(harness: Harness, ops: list[tuple[str, int]]) -> None:
    import sqlite3

    cards = [card_of(harness, 0), card_of(harness, 1)]
    sent: list[tuple[int, int, bytes]] = []  # (device, counter, frame bytes) in sending order
    acked: set[tuple[int, int]] = set()
    inflight = None
    db = ingest_db_path(harness.data_dir)

    def stored() -> set[tuple[int, int]]:
        with sqlite3.connect(db) as conn:
            return set(conn.execute("SELECT device, counter FROM frames"))

    def commit(batch: object) -> None:
        last_seq = commit_batch(harness.store, batch.commit)  # a frame stored twice would raise here
        now_stored = stored()
        for _send, _address, ack in harness.ingest.committed(batch, last_seq, 0.0):
            owners = []
            for card in cards:
                try:
                    owners.append((card.device, card.ack(ack)["acked"]))
                except Exception:  # another card's ack: its key does not open it
                    continue
            assert len(owners) == 1
            assert owners[0] in now_stored, "an ack for a frame not stored"
            acked.add(owners[0])

    for op, arg in ops:
        if op == "new":
            card = cards[arg]
            frame = card.frame("position" if card.counter % 3 else "status")
            sent.append((card.device, card.counter, frame))
            assert harness.feed(frame) is None
        elif op == "again" and sent:
            assert harness.feed(sent[arg % len(sent)][2]) is None
        elif op == "take" and inflight is None:
            inflight = harness.ingest.take_batch(time.time())
        elif op == "commit" and inflight is not None:
            commit(inflight)
            inflight = None
        elif op == "fail" and inflight is not None:
            harness.ingest.failed(inflight, StoreError("disk full"))
            inflight = None
    if inflight is not None:
        commit(inflight)
    for _device, _counter, frame in sent:  # the cards send again whatever was not acked
        assert harness.feed(frame) is None
    batch = harness.ingest.take_batch(time.time())
    if batch is not None:
        commit(batch)
    everything = {(device, counter) for device, counter, _frame in sent}
    assert stored() == everything
    assert acked == everything
