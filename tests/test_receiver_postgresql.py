"""`carecard receive --store postgresql://...`: the receiver on a real PostgreSQL server (a
throwaway cluster of the session, tests/pg_cluster.py), and the `store` setting."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from carecard.host.receiver.config import ConfigError, config_from_mapping
from carecard.host.receiver.downlinks import queue_command
from carecard.host.receiver.registry import DeviceSpec, add_devices, make_imei
from carecard.host.storage.postgresql import PostgreSQLStore

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
