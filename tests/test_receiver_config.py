"""Receiver configuration (TOML and flags), the sample config, the store's schema guard."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from carecard.host.paths import ingest_db_path
from carecard.host.receiver.config import (
    DEFAULT_PORT,
    ConfigError,
    Endpoint,
    ReceiverConfig,
    config_from_mapping,
    load_config,
    parse_endpoint,
    parse_serial,
)
from carecard.host.storage import StoreError
from carecard.host.storage.sqlite.store import SQLiteStore

REPO = Path(__file__).resolve().parent.parent


def test_defaults_listen_on_loopback_udp() -> None:
    config = ReceiverConfig()
    config.ensure_listener()
    assert config.udp == [Endpoint("127.0.0.1", DEFAULT_PORT)]
    assert str(config.data_dir) == "data"


def test_sample_config_is_valid_and_documented() -> None:
    sample = REPO / "docs" / "receiver.sample.toml"
    config = load_config(sample)
    assert config.udp and config.metrics is not None
    assert config.sinks and config.sinks[0]["type"] == "sqlite"
    assert config.data_dir.is_absolute()  # relative to the config file's folder
    text = (REPO / "docs" / "receiver.md").read_text()
    for key in ("batch_max_frames", "batch_max_delay_ms", "durability", "rejects_per_second",
                "max_attempts", "expire_after_s", "max_connections", "udp_receive_buffer"):
        assert key in text, key


@pytest.mark.parametrize("document, message", [
    ({"receive": {"udp": 5}}, "must be text"),
    ({"receive": {"udp": ["1.2.3.4:99999"]}}, "port must be"),
    ({"receive": {"colour": "blue"}}, "unknown key 'colour'"),
    ({"ingest": {"durability": "maybe"}}, "one of full, normal"),
    ({"ingest": {"batch_max_frames": 0}}, "batch_max_frames"),
    ({"budget": {"rejects_per_second": "many"}}, "rejects_per_second"),
    ({"downlinks": {"max_attempts": True}}, "max_attempts"),
    ({"sinks": {"type": "sqlite"}}, "list of [[sinks]]"),
    ({"surprise": 1}, "unknown key 'surprise'"),
    ({"engine": {"metrics": "127.0.0.1"}}, r"[engine] metrics"),
])
def test_bad_values_name_the_table_and_key(document: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_mapping(document, "test.toml")


def test_an_engine_run_alone_takes_its_metrics_address_from_the_engine_table() -> None:
    config = config_from_mapping({"engine": {"run": "separately", "metrics": "127.0.0.1:9302"}}, "test.toml")
    assert config.engine.metrics == Endpoint("127.0.0.1", 9302)
    assert config_from_mapping({}, "test.toml").engine.metrics is None


def test_endpoints_and_serial_ports() -> None:
    assert parse_endpoint("0.0.0.0:9000", "x") == Endpoint("0.0.0.0", 9000)
    assert parse_endpoint(":9000", "x") == Endpoint("0.0.0.0", 9000)
    assert parse_endpoint("[::1]:9000", "x") == Endpoint("::1", 9000)
    assert parse_endpoint("localhost", "x") == Endpoint("localhost", DEFAULT_PORT)
    assert parse_serial("/dev/ttyUSB0", "x").baud == 115200
    assert parse_serial("/dev/ttyUSB0:9600", "x").baud == 9600
    for bad in ("::1:80", "host:port", "a b:1", "", "[::1"):
        with pytest.raises(ConfigError):
            parse_endpoint(bad, "x")


@given(st.text(max_size=60))
def test_endpoint_parser_only_raises_config_errors(text: str) -> None:
    try:
        endpoint = parse_endpoint(text, "--udp")
    except ConfigError as exc:
        assert "--udp" in str(exc)
    else:
        assert 0 <= endpoint.port <= 65535 and endpoint.host


def test_newer_database_schema_is_refused(tmp_path: Path) -> None:
    SQLiteStore(ingest_db_path(tmp_path)).close()
    with sqlite3.connect(ingest_db_path(tmp_path)) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99"):
        SQLiteStore(ingest_db_path(tmp_path))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "carecard.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not usable|cannot open"):
        SQLiteStore(ingest_db_path(tmp_path / "junk"))


def test_the_sample_config_is_valid_with_every_commented_example_uncommented(tmp_path: Path) -> None:
    """The sample's commented keys and sink tables are examples to switch on: each must load."""
    import re
    import tomllib

    from carecard.host.storage.sqlite.eventlog import SQLiteEventLog as EventLog
    from carecard.host.paths import ingest_db_path
    from carecard.host.sinks import SinkSet

    text = (REPO / "docs" / "receiver.sample.toml").read_text()
    example = re.compile(r"^# (\[\[\w+\]\]|[a-z_]+ = .*)$", re.MULTILINE)
    uncommented, count = example.subn(r"\1", text)
    assert count >= 14  # tcp, serial, log_file and the jsonl, mqtt and webhook sinks' lines
    config = config_from_mapping(tomllib.loads(uncommented), "sample", base_dir=tmp_path)
    assert config.tcp and config.serial and config.log_file is not None
    assert [sink["type"] for sink in config.sinks or []] == ["sqlite", "jsonl", "mqtt", "webhook", "traccar",
                                                             "owntracks", "homeassistant"]
    EventLog.connect_writer(ingest_db_path(tmp_path)).close()
    log = EventLog(ingest_db_path(tmp_path))
    try:
        SinkSet.from_config(config.sinks, tmp_path, log)  # raises ConfigError naming a bad key
    finally:
        log.close()
