"""Reliability with real processes and real loopback sockets:

- SIGKILL the receiver in the middle of a burst from a sender that records every ack it got,
  restart it: every acked frame is stored (with its event), re-sent frames are not stored twice,
  and downlink counters never go back;
- a flood of garbage, forged and replayed frames from another process alongside valid traffic
  from the same address: every valid frame is stored and the flood is counted by reason.
"""

from __future__ import annotations

import collections
import select
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.paths import ingest_db_path
from carecard.protocol import decode_frame

from receiver_helpers import Card, ReceiverProcess, provision


class Sender:
    """Sends frames keeping `window` unacknowledged, retransmitting after `retry` seconds like a
    card's outbox; records every ack (device, uplink counter, downlink counter)."""

    def __init__(self, cards: dict[int, Card], frames: list[tuple[int, int, bytes]], port: int,
                 window: int = 32, retry: float = 0.5):
        self.cards = cards
        self.frames = frames
        self.port = port
        self.window = window
        self.retry = retry
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.acked: dict[tuple[int, int], int] = {}  # (device, counter) -> downlink counter
        self.downlink: dict[int, list[int]] = collections.defaultdict(list)
        self.outstanding: dict[tuple[int, int], tuple[bytes, float]] = {}
        self.next = 0
        self.sent = 0

    def step(self, wait: float = 0.01) -> None:
        now = time.monotonic()
        while len(self.outstanding) < self.window and self.next < len(self.frames):
            device, counter, frame = self.frames[self.next]
            self.next += 1
            self._send(frame)
            self.outstanding[(device, counter)] = (frame, now)
        for key, (frame, at) in list(self.outstanding.items()):
            if now - at > self.retry:
                self._send(frame)
                self.outstanding[key] = (frame, now)
        ready, _, _ = select.select([self.sock], [], [], wait)
        if ready:
            self.drain()

    def _send(self, frame: bytes) -> None:
        try:
            self.sock.sendto(frame, ("127.0.0.1", self.port))
            self.sent += 1
        except OSError:
            pass

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                return
            device = int.from_bytes(data[3:11], "big")
            ack = decode_frame(data, self.cards[device].key)
            key = (device, ack["acked"])
            self.acked.setdefault(key, ack["counter"])
            self.downlink[device].append(ack["counter"])
            self.outstanding.pop(key, None)

    def done(self) -> bool:
        return self.next >= len(self.frames) and not self.outstanding


def stored_frames(data_dir: Path) -> tuple[list[tuple[int, int]], set[str]]:
    """The frames stored, and the ids of the events that are safe: in the event log, or pruned
    from it after the only sink (SQLite, the default) delivered them. An event pruned but not in
    the sink would be an event lost."""
    with sqlite3.connect(ingest_db_path(data_dir)) as conn:
        frames = conn.execute("SELECT device, counter FROM frames").fetchall()
        kept = conn.execute("SELECT COUNT(*) FROM event_log WHERE seq > 0").fetchone()[0]
        head = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'event_log'").fetchone()
    log = SQLiteEventLog(ingest_db_path(data_dir))
    try:
        logged = [event["id"] for _seq, event in log.events_after(0, 10_000_000)]
    finally:
        log.close()
    events = set(logged)
    assert len(events) == len(logged), "an event logged twice"
    pruned = (head[0] if head else 0) - kept  # seqs are handed out without gaps
    if pruned:
        with sqlite3.connect(data_dir / "events.sqlite") as conn:
            delivered = {row[0] for row in conn.execute("SELECT id FROM events")}
        assert len(delivered) >= pruned, "events pruned from the log that the sink never got"
        events |= delivered
    return frames, events


def make_frames(cards: dict[int, Card], per_device: int) -> list[tuple[int, int, bytes]]:
    frames = []
    for _round in range(per_device):
        for card in cards.values():
            frame = card.frame("position" if card.counter % 4 else "status")
            frames.append((card.device, card.counter, frame))
    return frames


def test_sigkill_mid_burst_loses_no_acked_frame(tmp_path: Path) -> None:
    keys = provision(tmp_path, 20)
    cards = {d: Card(d, k) for d, k in keys.items()}
    frames = make_frames(cards, 150)  # 3000 frames
    receiver = ReceiverProcess(tmp_path)
    sender = Sender(cards, frames, receiver.udp_port, window=64, retry=0.3)
    deadline = time.monotonic() + 30
    while len(sender.acked) < 800 and time.monotonic() < deadline:
        sender.step()
    assert len(sender.acked) >= 800, "the receiver did not ack the burst"
    receiver.kill()  # SIGKILL while frames are in flight
    for _ in range(5):  # acks already sent before the kill are still in our socket buffer
        sender.step(wait=0.02)
    acked_before = dict(sender.acked)
    downlink_before = {d: max(c) for d, c in sender.downlink.items()}
    assert sender.outstanding, "the kill should have caught frames in flight"

    frames_stored, events = stored_frames(tmp_path)
    stored_set = set(frames_stored)
    missing = [key for key in acked_before if key not in stored_set]
    assert not missing, f"acked but not stored: {missing[:5]}"
    assert all(f"{d}-{c}" in events for d, c in acked_before), "an acked frame lost its event"

    # restart and let the card outboxes resend everything, including frames already stored
    receiver = ReceiverProcess(tmp_path)
    try:
        sender.port = receiver.udp_port
        for key, (frame, _at) in list(sender.outstanding.items()):
            sender.outstanding[key] = (frame, 0.0)  # retransmit at once
        resend = [f for f in frames[: sender.next]]
        deadline = time.monotonic() + 30
        while not sender.done() and time.monotonic() < deadline:
            sender.step()
        assert sender.done(), f"{len(sender.outstanding)} frames never acked after the restart"
        # retransmissions of frames stored before the kill: acked again, not stored again
        replay = Sender(cards, resend[:400], receiver.udp_port, window=64)
        deadline = time.monotonic() + 20
        while not replay.done() and time.monotonic() < deadline:
            replay.step()
        assert replay.done()
    finally:
        code, err = receiver.terminate()
    assert code == 0, err
    frames_stored, events = stored_frames(tmp_path)
    assert len(frames_stored) == len(set(frames_stored)) == len(frames)
    assert len(events) == len(frames)
    # downlink counters after the restart are all above every counter used before it
    after_restart = collections.defaultdict(list)
    for (device, _counter), dl in sender.acked.items():
        if (device, _counter) not in acked_before:
            after_restart[device].append(dl)
    for device, counters in after_restart.items():
        assert min(counters) > downlink_before.get(device, 0)


FLOODER = textwrap.dedent("""
    import os, random, socket, sys, time
    from carecard.protocol import encode_frame
    port, seconds, known = int(sys.argv[1]), float(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    rng = random.Random(7)
    forged_key = bytes(16)
    end = time.monotonic() + seconds
    sent = 0
    position = dict(lat_e7=1, lon_e7=2, alt_m=3, hdop_x10=4, sats=5, fix="3d", fix_age_s=1,
                    speed_cms=0, course_x10=0, source="fresh")
    while time.monotonic() < end:
        kind = sent % 5
        device = known[sent % len(known)]
        if kind == 0:
            data = os.urandom(rng.randrange(0, 80))
        elif kind == 1:
            data = os.urandom(600)
        elif kind == 2:  # forged: a known device, the wrong key
            data = encode_frame(dict(position, type="position", device=device, counter=rng.randrange(1, 10**6),
                                     time=1764374400), forged_key)
        elif kind == 3:  # a genuine-looking header with a flipped tag byte
            data = bytes([1, 3, 0]) + device.to_bytes(8, "big") + os.urandom(35)
        else:
            data = b"\\x01\\x7f" + os.urandom(40)  # unknown type
        try:
            socks[sent % 4].sendto(data, ("127.0.0.1", port))
        except OSError:
            pass
        sent += 1
    print(sent)
""")


def test_flood_of_garbage_and_forgeries_does_not_cost_valid_frames(tmp_path: Path) -> None:
    keys = provision(tmp_path, 5)
    cards = {d: Card(d, k) for d, k in keys.items()}
    frames = make_frames(cards, 60)  # 300 valid frames
    receiver = ReceiverProcess(tmp_path, metrics=True)
    flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(receiver.udp_port), "4",
                                ",".join(str(d) for d in keys)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the flood is on
        sender = Sender(cards, frames, receiver.udp_port, window=8, retry=0.3)
        deadline = time.monotonic() + 30
        while not sender.done() and time.monotonic() < deadline:
            sender.step()
        flood_sent = int(flooder.communicate(timeout=30)[0])
        assert sender.done(), f"{len(sender.outstanding)} valid frames never acked under the flood"
        text = urllib.request.urlopen(f"http://127.0.0.1:{receiver.metrics_port}/metrics", timeout=5).read().decode()
    finally:
        if flooder.poll() is None:
            flooder.kill()
        code, err = receiver.terminate()
    assert code == 0, err
    frames_stored, events = stored_frames(tmp_path)
    assert sorted(frames_stored) == sorted((d, c) for d, c, _f in frames)
    assert len(events) == len(frames)
    rejected = {}
    for line in text.splitlines():
        if line.startswith("carecard_frames_rejected_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            rejected[reason] = int(line.rsplit(" ", 1)[1])
    assert flood_sent > 1000
    assert sum(rejected.values()) > 0.5 * flood_sent  # the rest: dropped by the kernel under the flood
    assert {"bad_tag", "oversize"} <= set(rejected) or "over_budget" in rejected
    assert "over_budget" in rejected, "the flooding address should have run out of budget"


def test_sink_process_killed_is_restarted_and_loses_nothing(tmp_path: Path) -> None:
    import os
    import signal

    from carecard.host.receiver.config import Endpoint, ReceiverConfig
    from carecard.host.receiver.service import ReceiverThread

    keys = provision(tmp_path, 2)
    cards = {d: Card(d, k) for d, k in keys.items()}
    frames = make_frames(cards, 50)
    config = ReceiverConfig(udp=[Endpoint("127.0.0.1", 0)], data_dir=tmp_path, log_level="error")
    with ReceiverThread(config) as rt:
        receiver = rt.receiver
        sender = Sender(cards, frames[:40], receiver.udp_ports[0])
        deadline = time.monotonic() + 20
        while not sender.done() and time.monotonic() < deadline:
            sender.step()
        first_pid = receiver.sinks.pid
        os.kill(first_pid, signal.SIGKILL)  # the sinks die; ingest goes on
        sender = Sender(cards, frames[40:], receiver.udp_ports[0])
        deadline = time.monotonic() + 20
        while not sender.done() and time.monotonic() < deadline:
            sender.step()
        assert sender.done(), "ingest must not depend on the sink process"
        while time.monotonic() < deadline and rt.call(receiver.sink_delivered).get("sqlite", 0) < len(frames):
            time.sleep(0.05)
        assert receiver.sinks.pid != first_pid and receiver.sinks.restarts == 1
    with sqlite3.connect(tmp_path / "events.sqlite") as conn:
        ids = {row[0] for row in conn.execute("SELECT id FROM events")}
    assert ids == {f"{d}-{c}" for d, c, _f in frames}


def test_sinks_in_the_receiver_process_work_too(tmp_path: Path) -> None:
    from carecard.host.receiver.config import Endpoint, ReceiverConfig
    from carecard.host.receiver.service import ReceiverThread

    keys = provision(tmp_path, 1)
    cards = {d: Card(d, k) for d, k in keys.items()}
    frames = make_frames(cards, 20)
    config = ReceiverConfig(udp=[Endpoint("127.0.0.1", 0)], data_dir=tmp_path, log_level="error",
                            sinks_in="thread")
    with ReceiverThread(config) as rt:
        sender = Sender(cards, frames, rt.receiver.udp_ports[0])
        deadline = time.monotonic() + 20
        while not sender.done() and time.monotonic() < deadline:
            sender.step()
    with sqlite3.connect(tmp_path / "events.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == len(frames)


@pytest.mark.parametrize("sinks_in", ["process", "thread"])
def test_event_log_is_pruned_only_up_to_what_every_sink_delivered(tmp_path: Path, sinks_in: str) -> None:
    """Two sinks, the webhook's endpoint failing (503, retried). Besides the cards' frames, other
    events are logged (as the inactivity engine's alerts will be): the SQLite sink delivers
    everything, yet nothing is pruned. The endpoint recovers: once both delivered, the other
    events' rows are pruned, the frames' rows (the frame archive) never. It fails again: the
    new events stay in the log. At every look, the log still holds every event after the lowest
    persisted cursor, and in the end both sinks got every event exactly in order."""
    from carecard.host.receiver.config import Endpoint, ReceiverConfig
    from carecard.host.receiver.service import ReceiverThread

    from brokers import FlakyHTTPServer
    from eventgen import status_event

    keys = provision(tmp_path, 3)
    cards = {d: Card(d, k) for d, k in keys.items()}
    frames = make_frames(cards, 30)  # 90 frames
    first, second = frames[:60], frames[60:]
    others = [status_event(n) for n in range(1, 31)]  # events of no frame, from another device
    up = False
    server = FlakyHTTPServer(lambda _n, _e: 200 if up else 503)
    config = ReceiverConfig(udp=[Endpoint("127.0.0.1", 0)], data_dir=tmp_path, log_level="error",
                            sinks_in=sinks_in)
    config.engine.enabled = False  # the hand-made events of a year ago would raise alerts (offline...)
    config.sinks = [{"type": "sqlite"},
                    {"type": "webhook", "url": server.url, "secret": "prune-test-secret-0001",
                     "retry_min": 0.02, "retry_max": 0.1, "max_retries": 1000}]
    db = ingest_db_path(tmp_path)
    checks = 0

    def log_state() -> tuple[int, int, int]:
        """(frames' rows, other events' rows, the lowest seq of those), checked: every event after
        the lowest persisted cursor is still in the log."""
        nonlocal checks
        with sqlite3.connect(db) as conn:
            cursors = dict(conn.execute("SELECT name, seq FROM sink_cursor").fetchall())
            lowest = min(cursors.get("sqlite", 0), cursors.get("webhook", 0))
            above = conn.execute("SELECT COUNT(*) FROM event_log WHERE seq > ?", (lowest,)).fetchone()[0]
            head = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'event_log'").fetchone()
            framed = conn.execute("SELECT COUNT(*) FROM event_log WHERE device IS NOT NULL").fetchone()[0]
            other, low = conn.execute("SELECT COUNT(*), MIN(seq) FROM event_log WHERE device IS NULL").fetchone()
        assert above == max(0, (head[0] if head else 0) - lowest), "an undelivered event was pruned"
        checks += 1
        return framed, other, low or 0

    def log_others(batch: list[dict]) -> None:
        writer = SQLiteEventLog.connect_writer(db)
        try:
            head = SQLiteEventLog.append(writer, batch)
        finally:
            writer.close()
        rt.call(lambda: receiver.sinks.notify(head))

    def wait_for(what: Callable[[], bool], seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while not what():
            assert time.monotonic() < deadline, "timed out"
            log_state()
            time.sleep(0.05)

    with ReceiverThread(config) as rt:
        receiver = rt.receiver

        def delivered(name: str) -> int:
            return rt.call(receiver.sink_delivered).get(name, 0)

        sender = Sender(cards, first[:30], receiver.udp_ports[0])
        wait_for(lambda: sender.step() or sender.done())
        log_others(others[:20])
        sender = Sender(cards, first[30:], receiver.udp_ports[0])
        wait_for(lambda: sender.step() or sender.done())
        wait_for(lambda: delivered("sqlite") == 80)
        time.sleep(1.5)  # a few maintenance ticks and prune intervals
        assert log_state()[:2] == (60, 20), "nothing may be pruned while the webhook lags"
        up = True  # the endpoint recovers
        wait_for(lambda: delivered("webhook") == 80)
        wait_for(lambda: log_state()[1] == 0)  # the other events, delivered by both: pruned
        assert log_state()[0] == 60  # the frames' rows stay: they are the frame archive
        up = False  # fails again
        sender = Sender(cards, second, receiver.udp_ports[0])
        wait_for(lambda: sender.step() or sender.done())
        log_others(others[20:])
        wait_for(lambda: delivered("sqlite") == 120)
        time.sleep(1.5)
        framed, other, low = log_state()
        assert (framed, other, low) == (90, 10, 111), "only what both sinks delivered is pruned"
        pruned = receiver.metrics.events_pruned
        up = True
        wait_for(lambda: delivered("webhook") == 120)
        wait_for(lambda: log_state()[1] == 0)
        assert log_state()[0] == 90
    server.close()
    assert pruned == 20 and checks > 10
    frame_ids = [f"{d}-{c}" for d, c, _f in frames]
    ids = frame_ids[:30] + [e["id"] for e in others[:20]] + frame_ids[30:] + [e["id"] for e in others[20:]]
    with sqlite3.connect(tmp_path / "events.sqlite") as conn:
        assert {row[0] for row in conn.execute("SELECT id FROM events")} == set(ids)
    got = [r["event"]["id"] for r in server.accepted]
    assert [i for i in got if i in ids[80:]] == ids[80:]  # the second webhook run, in order


def test_sink_and_engine_processes_exit_quietly_when_the_receiver_is_killed(tmp_path: Path) -> None:
    """SIGKILL the receiver: its sink process and its alert engine's process notice (stdin
    closes), finish, and exit with one log line each saying so; no traceback (their stdout pipes
    to the dead receiver are broken)."""
    import json
    import signal

    from receiver_helpers import exchange, udp_client

    keys = provision(tmp_path, 1)
    card = Card(*next(iter(keys.items())))
    receiver = ReceiverProcess(tmp_path)
    client = udp_client()
    for _ in range(3):
        assert exchange(client, receiver.udp_port, card.frame()) is not None
    pid = receiver.proc.pid
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    commands = sorted(Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[2].decode() for child in children)
    assert commands == ["carecard.host.engine.process", "carecard.host.receiver.sinkproc"]
    receiver.proc.send_signal(signal.SIGKILL)
    # the children hold the same stderr: it reaches EOF only when they are gone too
    _out, err = receiver.proc.communicate(timeout=30)
    for child in children:
        assert not Path(f"/proc/{child}/cmdline").exists() or not Path(f"/proc/{child}/cmdline").read_bytes()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    records = [json.loads(line) for line in err.splitlines()]  # every line a log record
    for logger in ("carecard.receiver.sink", "carecard.engine"):
        gone = [r for r in records if r.get("logger", "").startswith(logger) and "receiver is gone" in r["msg"]]
        assert len(gone) == 1, (logger, records)
