"""`carecard receive --store postgresql://...`: the receiver on a real PostgreSQL server (a
throwaway cluster of the session, tools/pgcluster.py), and the `store` setting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from carecard.host.receiver.config import ConfigError, config_from_mapping
from carecard.host.receiver.downlinks import queue_command
from carecard.host.receiver.registry import DeviceSpec, add_devices, make_imei
from carecard.host.storage.postgresql import PostgreSQLStore
from carecard.protocol import decode_frame, spec

from receiver_helpers import Card, ReceiverProcess, exchange, key_for, udp_client


def test_a_receiver_on_postgresql_stores_once_acks_and_delivers_a_queued_command(
        pg_cluster, tmp_path: Path) -> None:
    url = pg_cluster.new_database()
    device = make_imei(86123456000001)
    store = PostgreSQLStore(url)
    try:
        add_devices(store, tmp_path, [DeviceSpec(device, "Grandma Li", key_for(device))])
        queued = queue_command(store, device, "locate_now", {}, now=time.time())
    finally:
        store.close()
    receiver = ReceiverProcess(tmp_path, "--store", url)
    try:
        card = Card(device, key_for(device))
        sock = udp_client()
        frames = [card.frame("position"), card.frame("status"), card.frame("position")]
        acks = [exchange(sock, receiver.udp_port, frame) for frame in frames]
        again = exchange(sock, receiver.udp_port, frames[1])  # a retransmission: acked again
        assert all(ack is not None for ack in acks) and again is not None
        first = card.ack(acks[0])
        assert [(c["cmd"], c["seq"]) for c in first["commands"]] == [("locate_now", queued.seq)]
        assert card.ack(again)["acked"] == 2
        sock.close()
    finally:
        code, err = receiver.terminate()
    assert code == 0, err
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT device, counter FROM frames ORDER BY counter").fetchall() == [
            (device, 1), (device, 2), (device, 3)]
        assert conn.execute("SELECT state FROM commands").fetchall() == [("sent",)]
        assert conn.execute("SELECT frames_stored, last_counter FROM devices").fetchone() == (3, 3)
        cursors = dict(conn.execute("SELECT name, seq FROM sink_cursor").fetchall())
    assert cursors == {"sqlite": 3}  # the sinks read the log from PostgreSQL


def test_the_store_setting_takes_sqlite_or_a_postgresql_url(tmp_path: Path) -> None:
    assert config_from_mapping({}, "t.toml").store == "sqlite"
    url = "postgresql://carecard@127.0.0.1:5432/carecard"
    assert config_from_mapping({"receive": {"store": url}}, "t.toml").store == url
    for bad in ("mysql://x@y/z", 5, "", "postgresql"):
        with pytest.raises(ConfigError, match=r"t.toml \[receive\]: store must be \"sqlite\" or a PostgreSQL URL"):
            config_from_mapping({"receive": {"store": bad}}, "t.toml")


def test_an_unreachable_database_is_one_line_naming_it_without_the_password(tmp_path: Path) -> None:
    from receiver_helpers import run_cli
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_cli("receive", "--data", str(tmp_path), "--udp", "127.0.0.1:0", "--store",
                     f"postgresql://carecard:secret@127.0.0.1:{port}/carecard", timeout=60)
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "level=warning" not in line]
    assert line.startswith(f"carecard receive: cannot connect to postgresql://carecard@127.0.0.1:{port}/"
                           "carecard: ") and "refused" in line, result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_migrations_are_applied_once_and_a_newer_schema_is_refused(pg_cluster) -> None:
    from carecard.host.storage import StoreError
    from carecard.host.storage.postgresql.schema import SCHEMA_VERSION

    url = pg_cluster.new_database()
    PostgreSQLStore(url).close()
    PostgreSQLStore(url).close()  # again: nothing left to apply
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall() == [
            (version,) for version in range(1, SCHEMA_VERSION + 1)]
        conn.execute("INSERT INTO schema_migrations VALUES (%s, 'from a newer carecard', 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade carecard"):
        PostgreSQLStore(url)


RECEIVERS = 3
CARDS = 12
ROUNDS = 16
KILL_AFTER_ROUND = 6


def _receiver_config(path: Path, url: str) -> Path:
    config = path / "carecard.toml"
    config.write_text(f'sinks = []\n\n[receive]\nstore = "{url}"\n\n[ingest]\nregistry_poll_s = 0.1\n')
    return config


def test_three_receivers_on_one_database_store_each_acked_frame_once_and_never_reuse_a_counter(
        pg_cluster, tmp_path: Path) -> None:
    """A load generator sprays every card's frames over three `carecard receive` processes on one
    PostgreSQL (a card's next frame may reach any of them, as behind carrier NAT and a UDP load
    balancer); one receiver is SIGKILLed with frames in flight and started again; a frame not
    acked is sent again to the next receiver. Every acked frame is stored exactly once, no
    card ever sees a downlink counter twice, and a command queued while they run reaches its
    card through whichever receiver the card's next frame reaches."""
    import shutil
    import socket as socketlib

    from carecard.protocol import decode_frame

    url = pg_cluster.new_database()
    folders = [tmp_path / f"r{i}" for i in range(RECEIVERS)]
    for folder in folders:
        folder.mkdir()
    cards = [Card(make_imei(86123456100000 + i), key_for(make_imei(86123456100000 + i)))
             for i in range(CARDS)]
    store = PostgreSQLStore(url)
    try:
        add_devices(store, folders[0], [DeviceSpec(c.device, f"Elder {i}", c.key) for i, c in enumerate(cards)])
    finally:
        store.close()
    for folder in folders[1:]:
        shutil.copy2(folders[0] / "keys.json", folder / "keys.json")
    configs = [_receiver_config(folder, url) for folder in folders]
    receivers = [ReceiverProcess(folder, "--config", str(config)) for folder, config in zip(folders, configs)]
    sock = socketlib.socket(socketlib.AF_INET, socketlib.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    acked: dict[tuple[int, int], int] = {}  # (device, counter) -> acks received
    downlink_counters: dict[int, list[int]] = {c.device: [] for c in cards}

    def collect(pending: dict[tuple[int, int], bytes], wait: float) -> None:
        sock.settimeout(wait)
        while pending:
            try:
                data, _ = sock.recvfrom(2048)
            except socketlib.timeout:
                return
            for card in cards:
                try:
                    message = decode_frame(data, card.key)
                except Exception:
                    continue
                if message["type"] == "ack":
                    key = (card.device, message["acked"])
                    acked[key] = acked.get(key, 0) + 1
                    downlink_counters[card.device].append(message["counter"])
                    pending.pop(key, None)
                break

    def spray(frames: dict[tuple[int, int], bytes], attempt: int) -> None:
        for (device, counter), frame in frames.items():
            target = receivers[(device + counter + attempt) % RECEIVERS]
            if target.proc.poll() is None:
                sock.sendto(frame, ("127.0.0.1", target.udp_port))

    try:
        for round_ in range(ROUNDS):
            if round_ == KILL_AFTER_ROUND + 2:
                receivers[1] = ReceiverProcess(folders[1], "--config", str(configs[1]))
            frames = {(c.device, c.counter + 1): c.frame("position" if round_ % 3 else "status") for c in cards}
            pending = dict(frames)
            spray(pending, 0)
            if round_ == KILL_AFTER_ROUND:
                receivers[1].kill()  # frames of this round in flight to it
            for attempt in range(1, 30):
                collect(pending, 0.5)
                if not pending:
                    break
                spray(pending, attempt)
            assert not pending, f"round {round_}: never acked: {sorted(pending)}"
        assert receivers[1].proc.poll() is None  # restarted, and took frames since

        # a command queued while they run reaches the card through another receiver
        store = PostgreSQLStore(url)
        try:
            queued = queue_command(store, cards[0].device, "locate_now", {}, now=time.time())
        finally:
            store.close()
        card = cards[0]
        carried = None
        frame = card.frame("status")
        for _ in range(100):
            sock.sendto(frame, ("127.0.0.1", receivers[2].udp_port))
            sock.settimeout(1.0)
            try:
                data, _ = sock.recvfrom(2048)
            except socketlib.timeout:  # not acked (its batch failed): send it again
                continue
            try:
                message = decode_frame(data, card.key)
            except Exception:  # a late ack of another card's frame from the rounds above
                continue
            acked[(card.device, message["acked"])] = 1
            downlink_counters[card.device].append(message["counter"])
            if message["commands"]:
                carried = message["commands"]
                break
            if message["acked"] == card.counter:
                frame = card.frame("status")
            time.sleep(0.05)
        assert carried is not None and [(c["cmd"], c["seq"]) for c in carried] == [("locate_now", queued.seq)]
    finally:
        sock.close()
        codes = []
        for receiver in receivers:
            if receiver.proc.poll() is None:
                codes.append(receiver.terminate()[0])
    assert codes == [0] * RECEIVERS
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT device, counter, COUNT(*) FROM frames GROUP BY device, counter").fetchall()
    assert {(d, c) for d, c, _n in stored} >= set(acked)
    assert all(n == 1 for _d, _c, n in stored)
    assert len(acked) >= CARDS * ROUNDS
    for device, counters in downlink_counters.items():
        assert len(counters) == len(set(counters)), f"device {device}: a downlink counter was used twice"


def test_one_cards_frames_alternating_over_three_receivers_are_each_acked_at_once_and_stored_once(
        pg_cluster, tmp_path: Path) -> None:
    """A load balancer sends a card's consecutive frames to different receivers, each of which
    loaded the card's downlink reservation at start: every frame is acked on its first sending
    (no receiver fails its batch on a block of downlink counters another one reserved first),
    no downlink counter is used twice, a retransmission to a receiver that has not seen the
    frame is acked again and stored once, and a counter used again with other content is
    answered with a resync, never acked."""
    import shutil

    url = pg_cluster.new_database()
    folders = [tmp_path / f"r{i}" for i in range(RECEIVERS)]
    for folder in folders:
        folder.mkdir()
    device = make_imei(86123456200000)
    card = Card(device, key_for(device))
    store = PostgreSQLStore(url)
    try:
        add_devices(store, folders[0], [DeviceSpec(device, "Grandpa Wang", card.key)])
    finally:
        store.close()
    for folder in folders[1:]:
        shutil.copy2(folders[0] / "keys.json", folder / "keys.json")
    receivers = [ReceiverProcess(folder, "--config", str(_receiver_config(folder, url)))
                 for folder in folders]
    sock = udp_client()
    downlink_counters: list[int] = []
    try:
        frames = [card.frame("position" if i % 4 else "status") for i in range(4 * RECEIVERS)]
        for i, frame in enumerate(frames):
            answer = exchange(sock, receivers[i % RECEIVERS].udp_port, frame, timeout=10.0)
            assert answer is not None, f"frame {i + 1} (to receiver {i % RECEIVERS}) not acked"
            ack = card.ack(answer)
            assert ack["acked"] == i + 1
            downlink_counters.append(ack["counter"])
        # the last frame, stored by receiver 2, sent again to receiver 0 and then 1
        for target in (0, 1):
            answer = exchange(sock, receivers[target].udp_port, frames[-1], timeout=10.0)
            assert answer is not None and card.ack(answer)["acked"] == len(frames)
            downlink_counters.append(card.ack(answer)["counter"])
        # the last counter again with other content (a card that lost its counter): a resync
        reused = card.frame("position", counter=len(frames), lat_e7=1)
        resync = None
        for attempt in range(10):
            answer = exchange(sock, receivers[attempt % 2].udp_port, reused, timeout=5.0)
            if answer is None:
                continue
            message = decode_frame(answer, card.key)
            assert message["type"] == "resync", f"a reused counter was answered with {message}"
            resync = message
            break
        assert resync is not None and resync["rejected"] == len(frames)
        assert resync["next_counter"] == len(frames) + 1
    finally:
        sock.close()
        codes = [receiver.terminate()[0] for receiver in receivers]
    assert codes == [0] * RECEIVERS
    assert len(downlink_counters) == len(set(downlink_counters)), downlink_counters
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT counter, tag FROM frames WHERE device = %s ORDER BY counter",
                              (device,)).fetchall()
        log_rows = conn.execute("SELECT COUNT(*) FROM event_log WHERE device = %s", (device,)).fetchone()[0]
        reserved = conn.execute("SELECT downlink_reserved FROM devices WHERE device = %s",
                                (device,)).fetchone()[0]
    assert [counter for counter, _tag in stored] == list(range(1, len(frames) + 1))
    assert [bytes(tag) for _c, tag in stored] == [frame[-spec.TAG_LEN:] for frame in frames]
    assert log_rows == len(frames)
    assert max(downlink_counters) <= reserved  # every counter sent was reserved first


def test_a_block_of_downlink_counters_another_receiver_reserved_first_is_moved_above_it(pg_cluster) -> None:
    """Two receivers that both start numbering a card's acks from the same stored reservation:
    the second one's batch is committed all the same, with a block as large above the first
    one's reservation, which the store says it reserved instead."""
    from carecard.host.storage import CommitBatch

    url = pg_cluster.new_database()
    device = make_imei(86123456000002)
    first, second = PostgreSQLStore(url), PostgreSQLStore(url)
    try:
        first.prepare(CommitBatch(downlink_reserved={device: 4096}, downlink_claimed={device: 1}))
        first.finish()
        batch = CommitBatch(downlink_reserved={device: 4096}, downlink_claimed={device: 1})
        second.prepare(batch)
        second.finish()
        assert batch.downlink_granted == {device: (4097, 8192)}
        assert first.load_devices()[device].downlink_reserved == 8192
        claimed_in_time = CommitBatch(downlink_reserved={device: 12288}, downlink_claimed={device: 8193})
        first.prepare(claimed_in_time)
        first.finish()
        assert claimed_in_time.downlink_granted == {}
        assert second.load_devices()[device].downlink_reserved == 12288
    finally:
        first.close()
        second.close()


def test_frames_another_receiver_stored_meanwhile_leave_the_batch_and_the_others_are_stored(pg_cluster) -> None:
    """A batch holding frames another receiver stored after this one's replay window was loaded:
    the same content (a retransmission) is not stored again, other content under a stored
    counter is refused, the rest of the batch is stored, and the log's seqs stay gapless."""
    from carecard.host.storage import CommitBatch

    url = pg_cluster.new_database()
    device = make_imei(86123456000003)
    card = Card(device, key_for(device))

    def row(frame: bytes) -> tuple:
        message = decode_frame(frame, card.key)
        return (device, message["counter"], frame[-spec.TAG_LEN:], message["type"], message["time"],
                1_700_000_000.0, "udp", frame, frame[spec.HEADER_LEN:-spec.TAG_LEN])

    frames = [card.frame("position") for _ in range(4)]
    other = card.frame("position", counter=2, lat_e7=5)
    first, second = PostgreSQLStore(url), PostgreSQLStore(url)
    try:
        first.prepare(CommitBatch(frames=[row(frames[0]), row(frames[1])]))
        first.finish()
        batch = CommitBatch(frames=[row(frames[0]), row(other), row(frames[2]), row(frames[3])])
        last = second.prepare(batch)
        second.finish()
        assert [r[1] for r in batch.frames] == [3, 4]
        assert batch.frames_refused == [(device, 2)]
        assert last == 4
    finally:
        first.close()
        second.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT seq, counter, tag FROM event_log ORDER BY seq").fetchall() == [
            (i + 1, i + 1, frames[i][-spec.TAG_LEN:]) for i in range(4)]


def test_devices_add_registers_a_card_in_the_postgresql_store(pg_cluster, tmp_path: Path) -> None:
    from receiver_helpers import run_cli

    url = pg_cluster.new_database()
    imei = str(make_imei(86123456000003))
    result = run_cli("devices", "add", imei, "--name", "Grandma Li", "--generate-key",
                     "--contact", "1:+8613800138000:Son", "--data", str(tmp_path), "--store", url)
    assert result.returncode == 0, result.stderr
    store = PostgreSQLStore(url)
    try:
        record = store.load_devices()[int(imei)]
    finally:
        store.close()
    assert (record.name, [c.number for c in record.contacts]) == ("Grandma Li", ["+8613800138000"])
    assert imei in (tmp_path / "keys.json").read_text()


def test_engine_settings_are_imported_into_and_shown_from_the_postgresql_registry(pg_cluster, tmp_path: Path) -> None:
    from receiver_helpers import run_cli

    url = pg_cluster.new_database()
    imei = str(make_imei(86123456000004))
    assert run_cli("devices", "add", imei, "--name", "Grandma Li", "--generate-key", "--data", str(tmp_path),
                   "--store", url).returncode == 0
    settings = tmp_path / "engine.toml"
    settings.write_text(f'[defaults]\nstillness_threshold = "2h"\n\n[devices."{imei}"]\nname = "王奶奶"\n',
                        encoding="utf-8")
    done = run_cli("alerts", "settings", "import", str(settings), "--data", str(tmp_path), "--store", url)
    assert done.returncode == 0, done.stderr
    shown = run_cli("alerts", "settings", "show", imei, "--json", "--data", str(tmp_path), "--store", url)
    assert shown.returncode == 0, shown.stderr
    mine = json.loads(shown.stdout)["settings"]
    assert (mine["name"], mine["stillness_threshold"]) == ("王奶奶", 7200)
    assert not (tmp_path / "carecard.sqlite").exists()  # nothing went to a SQLite registry
