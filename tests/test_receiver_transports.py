"""The receiver on real transports: UDP and TCP on loopback, serial through a pty pair, metrics over
HTTP, start-up errors and graceful shutdown of the real `carecard receive` process."""

from __future__ import annotations

import os
import select
import socket
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest

from carecard.host.paths import ingest_db_path
from carecard.host.receiver.config import Endpoint, ReceiverConfig, SerialPort
from carecard.host.receiver.service import ReceiverThread, StartupError
from carecard.protocol import StreamDeframer, decode_frame, encode_stream_frame
from carecard.protocol.framing import StreamFrame

from receiver_helpers import Card, ReceiverProcess, exchange, provision, run_cli, udp_client


def stored(data_dir: Path) -> list[tuple[int, int, str]]:
    with sqlite3.connect(ingest_db_path(data_dir)) as conn:
        return conn.execute("SELECT device, counter, transport FROM frames ORDER BY device, counter").fetchall()


def config_for(data_dir: Path, **kwargs: object) -> ReceiverConfig:
    config = ReceiverConfig(data_dir=data_dir, log_level="warning", **kwargs)  # type: ignore[arg-type]
    config.ingest.registry_poll_s = 0.05
    return config


def test_udp_frames_are_stored_and_acked_to_their_source(tmp_path: Path) -> None:
    devices = provision(tmp_path, 2)
    cards = [Card(d, k) for d, k in devices.items()]
    with ReceiverThread(config_for(tmp_path, udp=[Endpoint("127.0.0.1", 0)])) as rt:
        port = rt.receiver.udp_ports[0]
        clients = [udp_client(), udp_client()]
        for card, client in zip(cards, clients):
            for _ in range(3):
                ack = exchange(client, port, card.frame())
                assert ack is not None
                assert card.ack(ack)["acked"] == card.counter  # each source gets its own acks
    assert stored(tmp_path) == [(c.device, n, "udp") for c in cards for n in (1, 2, 3)]


def test_tcp_stream_with_garbage_resynchronises(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    card = Card(*next(iter(devices.items())))
    with ReceiverThread(config_for(tmp_path, tcp=[Endpoint("127.0.0.1", 0)])) as rt:
        port = rt.receiver.tcp_ports[0]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            stream = b"".join([
                b"\x13\x37garbage before anything",
                encode_stream_frame(card.frame()),
                b"\x00\xff\xfe\x00",  # a bad chunk between two delimiters
                encode_stream_frame(card.frame())[:-9] + b"\x00",  # a frame cut short
                encode_stream_frame(card.frame()),
            ])
            for i in range(0, len(stream), 7):  # arbitrary chunking
                conn.sendall(stream[i:i + 7])
            acks = read_stream_acks(conn, 2)
        garbage = dict(rt.receiver.metrics.stream_garbage)
    assert [card.ack(a)["acked"] for a in acks] == [1, 3]
    assert stored(tmp_path) == [(card.device, 1, "tcp"), (card.device, 3, "tcp")]
    assert sum(garbage.values()) >= 2


def read_stream_acks(conn: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    deframer = StreamDeframer()
    acks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(acks) < count and time.monotonic() < deadline:
        data = conn.recv(4096)
        if not data:
            break
        deframer.receive_data(data)
        while (event := deframer.next_event()) is not None:
            if isinstance(event, StreamFrame):
                acks.append(event.frame)
    return acks


def test_serial_through_a_pty_pair(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    card = Card(*next(iter(devices.items())))
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        with ReceiverThread(config_for(tmp_path, serial=[SerialPort(path, 115200)])) as rt:
            os.write(master, b"\x00noise\x00" + encode_stream_frame(card.frame()) + b"\xaa\xbb")
            os.write(master, encode_stream_frame(card.frame()))
            deframer = StreamDeframer()
            acks: list[bytes] = []
            deadline = time.monotonic() + 5
            while len(acks) < 2 and time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    deframer.receive_data(os.read(master, 4096))
                    while (event := deframer.next_event()) is not None:
                        if isinstance(event, StreamFrame):
                            acks.append(event.frame)
            assert rt.receiver.metrics.frames_received["serial"] == 2
    finally:
        os.close(master)
        os.close(slave)
    assert [card.ack(a)["acked"] for a in acks] == [1, 2]
    assert stored(tmp_path) == [(card.device, 1, "serial"), (card.device, 2, "serial")]


def test_metrics_endpoint_reports_frames_rejections_and_sinks(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    card = Card(*next(iter(devices.items())))
    config = config_for(tmp_path, udp=[Endpoint("127.0.0.1", 0)], metrics=Endpoint("127.0.0.1", 0))
    with ReceiverThread(config) as rt:
        port = rt.receiver.udp_ports[0]
        client = udp_client()
        frame = card.frame()
        assert exchange(client, port, frame) is not None
        assert exchange(client, port, frame) is not None  # duplicate
        assert exchange(client, port, b"\x01" * 40, timeout=0.3) is None  # rejected: no answer
        assert rt.receiver.metrics_server is not None
        url = f"http://127.0.0.1:{rt.receiver.metrics_server.port}/metrics"
        deadline = time.monotonic() + 5
        while True:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            if 'carecard_sink_delivered_total{sink="sqlite"} 1' in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    lines = set(text.splitlines())
    assert 'carecard_frames_received_total{transport="udp"} 3' in lines
    assert 'carecard_frames_stored_total{type="position"} 1' in lines
    assert "carecard_frames_duplicate_total 1" in lines
    assert any(line.startswith("carecard_frames_rejected_total{reason=") for line in lines)
    assert "carecard_acks_sent_total 2" in lines
    assert "carecard_devices_seen_last_hour 1" in lines
    assert 'carecard_sink_delivered_total{sink="sqlite"} 1' in lines
    assert any(line.startswith('carecard_sink_lag_events{sink="sqlite"}') for line in lines)
    assert "# TYPE carecard_frames_rejected_total counter" in lines


def test_receiver_picks_up_devices_added_while_it_runs(tmp_path: Path) -> None:
    provision(tmp_path, 1)
    with ReceiverThread(config_for(tmp_path, udp=[Endpoint("127.0.0.1", 0)])) as rt:
        port = rt.receiver.udp_ports[0]
        newcomer = provision(tmp_path, 1, first=500)
        card = Card(*next(iter(newcomer.items())))
        client = udp_client()
        deadline = time.monotonic() + 5
        ack = None
        while ack is None and time.monotonic() < deadline:
            ack = exchange(client, port, card.frame(counter=1), timeout=0.2)
        assert ack is not None and card.ack(ack)["acked"] == 1


def test_a_second_receiver_on_the_same_data_folder_is_refused(tmp_path: Path) -> None:
    provision(tmp_path, 1)
    with ReceiverThread(config_for(tmp_path, udp=[Endpoint("127.0.0.1", 0)])):
        with pytest.raises(StartupError, match="in use by another receiver"):
            ReceiverThread(config_for(tmp_path, udp=[Endpoint("127.0.0.1", 0)])).start()


def test_startup_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        result = run_cli("receive", "--data", str(tmp_path / "a"), "--udp", f"127.0.0.1:{busy.getsockname()[1]}")
    finally:
        busy.close()
    assert result.returncode == 1
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("carecard receive: UDP 127.0.0.1:")

    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("[receive]\nudp = 5\n")
    result = run_cli("receive", "--config", str(bad_config))
    assert result.returncode == 1 and "must be text" in result.stderr and "Traceback" not in result.stderr
    bad_config.write_text("[receive\n")
    result = run_cli("receive", "--config", str(bad_config))
    assert result.returncode == 1 and "not valid TOML" in result.stderr
    result = run_cli("receive", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 1 and "does not exist" in result.stderr

    data = tmp_path / "b"
    data.mkdir()
    (data / "keys.json").write_text('{"version": 1, "keys": {"861234567890127": "zz"}}')
    result = run_cli("receive", "--data", str(data), "--udp", "127.0.0.1:0")
    assert result.returncode == 1 and "bad key file" in result.stderr and "Traceback" not in result.stderr
    assert "zz" not in result.stderr.split("key of device")[0]


def test_sigterm_commits_acks_and_exits_zero(tmp_path: Path) -> None:
    devices = provision(tmp_path, 1)
    card = Card(*next(iter(devices.items())))
    receiver = ReceiverProcess(tmp_path)
    client = udp_client()
    for _ in range(5):
        assert exchange(client, receiver.udp_port, card.frame()) is not None
    code, err = receiver.terminate()
    assert code == 0, err
    assert "receiver stopped" in err
    assert stored(tmp_path) == [(card.device, n, "udp") for n in range(1, 6)]
    # the SQLite sink drained before exit
    with sqlite3.connect(tmp_path / "events.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 5


def test_healthz_says_ok_only_when_ready(tmp_path: Path) -> None:
    """/healthz is 200 only once every listener accepts, the store is open and the sink process
    is up; while the sink process is down (killed, not yet restarted) it is 503."""
    import asyncio
    import signal

    from carecard.host.receiver.service import Receiver

    provision(tmp_path, 1)
    config = config_for(tmp_path, udp=[Endpoint("127.0.0.1", 0)], tcp=[Endpoint("127.0.0.1", 0)],
                        metrics=Endpoint("127.0.0.1", 0))

    async def healthz(port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = await reader.read()
        writer.close()
        return int(answer.split()[1])

    async def tcp_accepts(port: int) -> bool:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    async def main() -> None:
        receiver = Receiver(config)
        starting = asyncio.create_task(receiver.start())
        while not starting.done():
            server = receiver.metrics_server
            if server is None or not server.port:
                await asyncio.sleep(0.001)
                continue
            if await healthz(server.port) == 200:
                assert await tcp_accepts(receiver.tcp_ports[0]), "/healthz said ok before TCP accepted"
                assert receiver.sinks is not None and receiver.sinks.pid is not None
        await starting
        assert receiver.metrics_server is not None
        port = receiver.metrics_server.port
        try:
            assert await healthz(port) == 200
            first = receiver.sinks.pid
            os.kill(first, signal.SIGKILL)
            seen = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (503 in seen and seen[-1] == 200):
                seen.append(await healthz(port))
                await asyncio.sleep(0.01)
            assert 503 in seen, "the sink process was down, /healthz kept saying ok"
            assert seen[-1] == 200 and receiver.sinks.pid != first
        finally:
            await receiver.shutdown()

    asyncio.run(main())


def test_idle_tcp_connections_from_one_address_never_lock_out_another(tmp_path: Path) -> None:
    """One address opening many idle connections keeps only its newest few (its idlest are
    closed), and when the receiver is full, a connection from an address with none gets in by
    closing the idlest connection of the address with the most. Several loopback source addresses
    (127.0.0.x) stand for different hosts."""
    devices = provision(tmp_path, 1)
    card = Card(*next(iter(devices.items())))
    config = config_for(tmp_path, tcp=[Endpoint("127.0.0.1", 0)])
    config.tcp_settings.max_connections = 12
    config.tcp_settings.max_connections_per_address = 4
    with ReceiverThread(config) as rt:
        port = rt.receiver.tcp_ports[0]
        listener = rt.receiver.tcp[0]

        def connect_from(host: str) -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(20)  # only a wait: a closed connection reads as closed at once
            sock.bind((host, 0))
            sock.connect(("127.0.0.1", port))
            return sock

        def closed_by_receiver(sock: socket.socket) -> bool:
            try:
                return sock.recv(1) == b""
            except ConnectionResetError:
                return True

        def wait_open(count: int) -> None:
            deadline = time.monotonic() + 20
            while rt.call(lambda: len(listener.connections)) != count and time.monotonic() < deadline:
                time.sleep(0.01)
            assert rt.call(lambda: len(listener.connections)) == count

        flood = [connect_from("127.0.0.2") for _ in range(10)]
        assert all(closed_by_receiver(sock) for sock in flood[:6])  # the idlest six, oldest first
        wait_open(4)
        others = [connect_from(f"127.0.0.{host}") for host in (3, 4) for _ in range(4)]
        wait_open(12)  # full
        active = others[0]
        active.sendall(encode_stream_frame(card.frame()))
        assert len(read_stream_acks(active, 1)) == 1
        with connect_from("127.0.0.9") as gateway:  # an address with no connection gets in
            gateway.sendall(encode_stream_frame(card.frame()))
            (ack,) = read_stream_acks(gateway, 1)
            assert card.ack(ack)["acked"] == card.counter
            assert closed_by_receiver(flood[6])  # the idlest of the busiest addresses made room
            wait_open(12)
            active.sendall(encode_stream_frame(card.frame()))  # the active connection stayed
            assert len(read_stream_acks(active, 1)) == 1
        for sock in flood + others:
            sock.close()
        evicted = rt.receiver.metrics.tcp_evicted
    assert evicted == 7


def damage_oldest_frames_page(data_dir: Path) -> int:
    """Overwrite the b-tree page of the oldest frames with noise (a failing disk, a bad copy);
    the newest frames, which the receiver reads first, stay readable. Returns the page number."""
    path = ingest_db_path(data_dir)
    with sqlite3.connect(path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        page = conn.execute("SELECT MIN(pageno) FROM dbstat WHERE name = 'event_log' "
                            "AND pagetype = 'leaf'").fetchone()[0]
    conn.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    with open(path, "r+b") as file:
        file.seek((page - 1) * page_size)
        file.write(bytes([0x5A, 0xA5]) * (page_size // 4))
    return page


def test_damaged_database_pages_are_refused_at_start_and_found_by_check(tmp_path: Path) -> None:
    from receiver_helpers import Harness

    devices = provision(tmp_path, 1)
    card = Card(*next(iter(devices.items())))
    h = Harness(tmp_path, devices)
    for _ in range(300):
        h.feed(card.frame())
    h.commit()
    h.store.close()
    healthy = run_cli("check", "--data", str(tmp_path))
    assert healthy.returncode == 0, healthy.stderr
    assert "carecard.sqlite: ok" in healthy.stdout
    damage_oldest_frames_page(tmp_path)
    full = run_cli("check", "--data", str(tmp_path))
    assert full.returncode == 1
    assert "carecard.sqlite: damaged" in full.stdout and "table event_log: " in full.stdout
    assert "backup" in full.stderr
    start = run_cli("receive", "--data", str(tmp_path), "--udp", "127.0.0.1:0", timeout=60)
    assert start.returncode == 1
    (line,) = start.stderr.strip().splitlines()
    assert "carecard.sqlite is damaged" in line and "carecard check" in line and "backup" in line


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_lost_replay_history_beside_kept_keys_is_refused_unless_accepted(tmp_path: Path, loss: str) -> None:
    """keys.json kept, carecard.sqlite deleted or emptied: the receiver refuses to start (recorded
    frames would be stored as new, downlink counters reused). With --accept-lost-history it starts
    and every downlink counter jumps past any value used before."""
    devices = provision(tmp_path, 1)
    card = Card(*next(iter(devices.items())))
    recorded = card.frame()
    receiver = ReceiverProcess(tmp_path)
    client = udp_client()
    used = [card.ack(exchange(client, receiver.udp_port, frame))["counter"]
            for frame in (recorded, card.frame(), card.frame())]
    assert receiver.terminate()[0] == 0
    db = ingest_db_path(tmp_path)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if loss == "deleted":
        db.unlink()
    else:
        db.write_bytes(b"")
    refused = run_cli("receive", "--data", str(tmp_path), "--udp", "127.0.0.1:0", timeout=60)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "no replay and counter history" in line and str(card.device) in line
    assert "--accept-lost-history" in line and "backup" in line
    from carecard.host.receiver.service import DOWNLINK_JUMP

    receiver = ReceiverProcess(tmp_path, "--accept-lost-history")
    ack = card.ack(exchange(client, receiver.udp_port, card.frame()))
    assert ack["counter"] > DOWNLINK_JUMP > max(used)
    assert any("--accept-lost-history" in r.get("msg", "") for r in receiver.log)
    assert receiver.terminate()[0] == 0
    receiver = ReceiverProcess(tmp_path)  # the history is there again: no flag needed
    assert card.ack(exchange(client, receiver.udp_port, card.frame()))["counter"] > ack["counter"]
    assert receiver.terminate()[0] == 0


def test_a_damaged_database_without_a_backup_is_salvaged_and_the_receiver_goes_on(tmp_path: Path) -> None:
    """No backup: `carecard check --salvage` copies every readable row into a new file; moved in
    place it checks ok, and the receiver starts on it with --accept-lost-history: the frames that
    survived are still known (their replays rejected or acked as duplicates), counters go on."""
    import shutil

    from receiver_helpers import Harness

    devices = provision(tmp_path, 1)
    card = Card(*next(iter(devices.items())))
    h = Harness(tmp_path, devices)
    frames = [card.frame() for _ in range(300)]
    for frame in frames:
        h.feed(frame)
    h.commit()
    h.store.close()
    damage_oldest_frames_page(tmp_path)
    salvage = run_cli("check", "--data", str(tmp_path), "--salvage")
    assert salvage.returncode == 1, salvage.stderr  # the original is still damaged
    salvaged = tmp_path / "carecard.salvaged.sqlite"
    assert "event_log:" in salvage.stdout and "damaged part skipped" in salvage.stdout
    assert "--accept-lost-history" in salvage.stderr
    with sqlite3.connect(salvaged) as conn:
        kept = [row[0] for row in conn.execute("SELECT counter FROM frames ORDER BY counter")]
        assert conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0] == 1
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'event_log'").fetchall() == [(300,)]
    conn.close()
    assert 200 < len(kept) < 300 and kept[-1] == 300 and kept == sorted(set(kept))
    db = ingest_db_path(tmp_path)
    shutil.move(db, tmp_path / "damaged.sqlite")
    shutil.move(salvaged, db)
    assert run_cli("check", "--data", str(tmp_path)).returncode == 0
    receiver = ReceiverProcess(tmp_path, "--accept-lost-history")
    client = udp_client()
    assert card.ack(exchange(client, receiver.udp_port, frames[-1]))["acked"] == 300  # a duplicate
    # lost and below the window: not stored; answered as a card that lost its counter would be
    resync = decode_frame(exchange(client, receiver.udp_port, frames[0]), card.key)
    assert resync["type"] == "resync" and resync["rejected"] == 1 and resync["next_counter"] == 301
    assert card.ack(exchange(client, receiver.udp_port, card.frame()))["acked"] == 301
    assert receiver.terminate()[0] == 0
    assert stored(tmp_path)[-1] == (card.device, 301, "udp")
