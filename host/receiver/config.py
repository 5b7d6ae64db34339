"""Receiver configuration: a TOML file (docs/receiver.md, docs/receiver.sample.toml) plus flags.

Every key is checked: an unknown key is an error (a typo must not silently change behaviour), a
value of the wrong type or out of range is an error naming the file, the table and the key.
Command-line flags override the file. With no file and no flags the receiver listens on UDP
127.0.0.1:61700 and keeps everything in ./data.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from carecard.host.files import read_input_file
from carecard.host.paths import DEFAULT_DATA_DIR
from carecard.host.storage import check_store_setting

# IANA's dynamic range (49152-65535) is never assigned to a service, and 61000+ is above Linux's
# default ephemeral range (32768-60999), so outgoing connections never take it either.
DEFAULT_PORT = 61700
DEFAULT_HOST = "127.0.0.1"
DEFAULT_BAUD = 115200


class ConfigError(ValueError):
    """The configuration file or a flag is unusable; the message names where and why."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SerialPort:
    device: str
    baud: int = DEFAULT_BAUD

    def __str__(self) -> str:
        return f"{self.device}:{self.baud}"


@dataclass
class IngestSettings:
    batch_max_frames: int = 256
    batch_max_delay_ms: float = 2.0
    durability: str = "full"  # full: fsync every commit (power-loss safe); normal: crash safe only
    replay_window: int = 256
    udp_receive_buffer: int = 4 * 1024 * 1024
    registry_poll_s: float = 0.5
    device_stats_interval_s: float = 1.0


@dataclass
class BudgetSettings:
    rejects_per_second: float = 20.0
    burst: float = 100.0
    max_sources: int = 65536


@dataclass
class DownlinkSettings:
    max_attempts: int = 20
    expire_after_s: float = 86400.0
    max_commands_per_ack: int = 8


@dataclass
class TcpSettings:
    max_connections: int = 1024
    max_connections_per_address: int = 32
    idle_timeout_s: float = 900.0


@dataclass
class EngineSettings:
    """[engine]: the alert engine (docs/receiver.md), a process of its own reading the store."""

    enabled: bool = True
    # child: `carecard receive` starts it as its child process, restarts it if it dies, stops it
    # with itself; separately: run `carecard engine` yourself (the receiver serves the inbound
    # acknowledgement paths only)
    run: str = "child"
    # the devices split into this many partitions (IMEI modulo it), each stepped by one engine
    # worker at a time under a lease; several workers (`carecard engine`) share them. Choose once:
    # another count starts new engines from the end of the log
    partitions: int = 1
    settings: Path | None = None  # the alert engine's settings file (docs/events.md); None: defaults
    poll_s: float = 1.0  # timers and acknowledgement requests are looked at at least this often
    # PostgreSQL: a worker's lease on a partition lasts this long from its last renewal (a hung
    # worker's partitions move after it; a dead one's at once); at least 3 x poll_s
    lease_s: float = 10.0
    http: Endpoint | None = None  # POST /v1/alert-actions, signed as the webhook sink signs
    http_secret: str | None = None
    mqtt_sink: str | None = None  # name of the mqtt sink on whose broker requests come in
    metrics: Endpoint | None = None  # `carecard engine` run alone: Prometheus /metrics here


@dataclass
class ReceiverConfig:
    udp: list[Endpoint] = field(default_factory=list)
    tcp: list[Endpoint] = field(default_factory=list)
    serial: list[SerialPort] = field(default_factory=list)
    metrics: Endpoint | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    log_format: str = "text"
    log_level: str = "info"
    log_file: Path | None = None  # None: stderr
    drain_timeout_s: float = 5.0
    sinks_in: str = "process"  # process: a child process runs the sinks; thread: this process
    # where frames, the event log, the registry and commands are: "sqlite", the embedded SQLite
    # database in data_dir, or a PostgreSQL URL (several receivers on one database)
    store: str = "sqlite"
    ingest: IngestSettings = field(default_factory=IngestSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    downlinks: DownlinkSettings = field(default_factory=DownlinkSettings)
    tcp_settings: TcpSettings = field(default_factory=TcpSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    sinks: list[dict[str, Any]] | None = None  # None: the sinks' default (SQLite only)
    # start although devices with keys have no replay and counter history in the database (it was
    # lost or restored from a backup): a flag only (--accept-lost-history), never a file key
    accept_lost_history: bool = False
    # simulation only (carecard demo): the receiver's and its engine's clocks are the virtual
    # times in this file (host/simclock.py); a flag only, never a file key
    simulation_clock: Path | None = None
    source: str = "defaults"  # where this came from, for the start-up log

    def ensure_listener(self) -> None:
        """With no listener at all, the default UDP one."""
        if not (self.udp or self.tcp or self.serial):
            self.udp.append(Endpoint(DEFAULT_HOST, DEFAULT_PORT))


LOG_FORMATS = ("text", "json")
SINKS_IN = ("process", "thread")
ENGINE_RUN = ("child", "separately")
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_endpoint(text: str, where: str, default_port: int | None = DEFAULT_PORT) -> Endpoint:
    """HOST:PORT, [IPv6]:PORT, :PORT (all interfaces), or HOST alone (the default port)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: expected HOST:PORT, got {text!r}")
    value = text.strip()
    host, port_text = value, None
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise ConfigError(f"{where}: {value!r}: missing ']' after the IPv6 address")
        host = value[1:close]
        rest = value[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{where}: {value!r}: expected [ADDRESS]:PORT")
            port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        host = host or "0.0.0.0"
    elif value.count(":") > 1:
        raise ConfigError(f"{where}: {value!r}: write IPv6 addresses as [ADDRESS]:PORT")
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"{where}: {value!r}: a port is required (HOST:PORT)")
        port = default_port
    else:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(f"{where}: {value!r}: port must be a number 0-65535")
        port = int(port_text)
    if not host:
        raise ConfigError(f"{where}: {value!r}: empty host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(part and len(part) < 64 and part.replace("-", "").isalnum()
                   for part in host.split(".")):
            raise ConfigError(f"{where}: {value!r}: {host!r} is not an IP address or host name") from None
    return Endpoint(host, port)


def parse_serial(text: str, where: str) -> SerialPort:
    """DEVICE or DEVICE:BAUD (e.g. /dev/ttyUSB0:115200)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: expected DEVICE[:BAUD], got {text!r}")
    value = text.strip()
    device, baud = value, DEFAULT_BAUD
    head, sep, tail = value.rpartition(":")
    if sep and tail.isdigit():
        device, baud = head, int(tail)
        if not 50 <= baud <= 4_000_000:
            raise ConfigError(f"{where}: {value!r}: baud rate {baud} is out of range 50-4000000")
    elif sep and "/" not in tail and not Path(value).exists():
        # A device path may hold colons (/dev/serial/by-path/...:1.0-port0); such a path exists.
        raise ConfigError(f"{where}: {value!r}: baud rate {tail!r} is not a number "
                          "(DEVICE[:BAUD], e.g. /dev/ttyUSB0:115200)")
    if not device:
        raise ConfigError(f"{where}: {value!r}: empty device name")
    return SerialPort(device, baud)


class _Table:
    """Typed reads from one TOML table, with unknown-key detection."""

    def __init__(self, raw: Any, where: str):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
        self.raw = raw
        self.where = where
        self.used: set[str] = set()

    def get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def number(self, key: str, default: float, low: float, high: float, integer: bool = False) -> Any:
        value = self.get(key, default)
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not math.isfinite(value) or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"{self.where}: {key} must be {kind} in {low:g}..{high:g}, got {value!r}")
        return value

    def text(self, key: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.where}: {key} must be text, got {value!r}")
        if choices and value not in choices:
            raise ConfigError(f"{self.where}: {key} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def strings(self, key: str) -> list[str] | None:
        value = self.get(key, None)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.where}: {key} must be text or a list of text, got {value!r}")
        return list(value)

    def check(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key {unknown[0]!r} "
                              f"(known: {', '.join(sorted(self.used))})")


def load_config(path: Path) -> ReceiverConfig:
    """Read and check a TOML configuration file. Raises ConfigError with a one-line reason."""
    raw_text = read_input_file(path, ConfigError, where=f"config file {path}")
    try:
        document = tomllib.loads(raw_text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    return config_from_mapping(document, str(path), base_dir=path.resolve().parent)


def config_from_mapping(document: Mapping[str, Any], where: str, base_dir: Path | None = None) -> ReceiverConfig:
    config = ReceiverConfig(source=where)
    top = _Table(document, where)
    receive = _Table(top.get("receive", {}), f"{where} [receive]")
    for text in receive.strings("udp") or []:
        config.udp.append(parse_endpoint(text, f"{receive.where} udp"))
    for text in receive.strings("tcp") or []:
        config.tcp.append(parse_endpoint(text, f"{receive.where} tcp"))
    for text in receive.strings("serial") or []:
        config.serial.append(parse_serial(text, f"{receive.where} serial"))
    metrics = receive.get("metrics", None)
    if metrics is not None:
        config.metrics = parse_endpoint(metrics, f"{receive.where} metrics", default_port=None)
    data_dir = receive.get("data_dir", None)
    if data_dir is not None:
        if not isinstance(data_dir, str) or not data_dir:
            raise ConfigError(f"{receive.where}: data_dir must be a folder path, got {data_dir!r}")
        path = Path(data_dir).expanduser()
        config.data_dir = path if path.is_absolute() or base_dir is None else base_dir / path
    config.log_format = receive.text("log_format", config.log_format, LOG_FORMATS)
    config.log_level = receive.text("log_level", config.log_level, LOG_LEVELS)
    log_file = receive.get("log_file", None)
    if log_file is not None:
        if not isinstance(log_file, str) or not log_file:
            raise ConfigError(f"{receive.where}: log_file must be a file path, got {log_file!r}")
        path = Path(log_file).expanduser()
        config.log_file = path if path.is_absolute() or base_dir is None else base_dir / path
    config.drain_timeout_s = receive.number("drain_timeout_s", config.drain_timeout_s, 0, 600)
    config.sinks_in = receive.text("sinks_in", config.sinks_in, SINKS_IN)
    try:
        config.store = check_store_setting(receive.get("store", config.store), receive.where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    receive.check()

    ingest = _Table(top.get("ingest", {}), f"{where} [ingest]")
    s = config.ingest
    s.batch_max_frames = ingest.number("batch_max_frames", s.batch_max_frames, 1, 10_000, integer=True)
    s.batch_max_delay_ms = ingest.number("batch_max_delay_ms", s.batch_max_delay_ms, 0, 1000)
    s.durability = ingest.text("durability", s.durability, ("full", "normal"))
    s.replay_window = ingest.number("replay_window", s.replay_window, 16, 65536, integer=True)
    s.udp_receive_buffer = ingest.number("udp_receive_buffer", s.udp_receive_buffer, 65536,
                                         1 << 30, integer=True)
    s.registry_poll_s = ingest.number("registry_poll_s", s.registry_poll_s, 0.05, 60)
    s.device_stats_interval_s = ingest.number("device_stats_interval_s", s.device_stats_interval_s, 0.1, 3600)
    ingest.check()

    budget = _Table(top.get("budget", {}), f"{where} [budget]")
    b = config.budget
    b.rejects_per_second = budget.number("rejects_per_second", b.rejects_per_second, 0.01, 1e6)
    b.burst = budget.number("burst", b.burst, 1, 1e7)
    b.max_sources = budget.number("max_sources", b.max_sources, 16, 10_000_000, integer=True)
    budget.check()

    downlinks = _Table(top.get("downlinks", {}), f"{where} [downlinks]")
    d = config.downlinks
    d.max_attempts = downlinks.number("max_attempts", d.max_attempts, 1, 10_000, integer=True)
    d.expire_after_s = downlinks.number("expire_after_s", d.expire_after_s, 1, 365 * 86400)
    d.max_commands_per_ack = downlinks.number("max_commands_per_ack", d.max_commands_per_ack, 1,
                                              _max_commands(), integer=True)
    downlinks.check()

    tcp = _Table(top.get("tcp", {}), f"{where} [tcp]")
    t = config.tcp_settings
    t.max_connections = tcp.number("max_connections", t.max_connections, 1, 1_000_000, integer=True)
    t.max_connections_per_address = tcp.number("max_connections_per_address", t.max_connections_per_address,
                                               1, 1_000_000, integer=True)
    t.idle_timeout_s = tcp.number("idle_timeout_s", t.idle_timeout_s, 1, 7 * 86400)
    tcp.check()

    engine = _Table(top.get("engine", {}), f"{where} [engine]")
    e = config.engine
    enabled = engine.get("enabled", e.enabled)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{engine.where}: enabled must be true or false, got {enabled!r}")
    e.enabled = enabled
    e.run = engine.text("run", e.run, ENGINE_RUN)
    e.partitions = int(engine.number("partitions", e.partitions, 1, 1024, integer=True))
    settings_file = engine.get("settings", None)
    if settings_file is not None:
        if not isinstance(settings_file, str) or not settings_file:
            raise ConfigError(f"{engine.where}: settings must be a file path, got {settings_file!r}")
        path = Path(settings_file).expanduser()
        e.settings = path if path.is_absolute() or base_dir is None else base_dir / path
    e.poll_s = engine.number("poll_s", e.poll_s, 0.01, 60)
    e.lease_s = engine.number("lease_s", max(e.lease_s, 3 * e.poll_s), 1, 600)
    if e.lease_s < 3 * e.poll_s:
        raise ConfigError(f"{engine.where}: lease_s ({e.lease_s:g}) must be at least 3 x poll_s "
                          f"({e.poll_s:g}): the lease is renewed between steps")
    http = engine.get("http", None)
    if http is not None:
        e.http = parse_endpoint(http, f"{engine.where} http", default_port=None)
    secret = engine.get("http_secret", None)
    if secret is not None and (not isinstance(secret, str) or len(secret) < 16):
        raise ConfigError(f"{engine.where}: http_secret must be text of at least 16 characters, shared "
                          "with the backend that signs the requests")
    e.http_secret = secret
    if e.http is not None and e.http_secret is None:
        raise ConfigError(f"{engine.where}: http needs http_secret (requests are signed as the webhook "
                          "sink signs its events)")
    engine_metrics = engine.get("metrics", None)
    if engine_metrics is not None:
        e.metrics = parse_endpoint(engine_metrics, f"{engine.where} metrics", default_port=None)
    mqtt_sink = engine.get("mqtt_sink", None)
    if mqtt_sink is not None and (not isinstance(mqtt_sink, str) or not mqtt_sink):
        raise ConfigError(f"{engine.where}: mqtt_sink must be the name of an mqtt sink, got {mqtt_sink!r}")
    e.mqtt_sink = mqtt_sink
    engine.check()

    sinks = top.get("sinks", None)
    if sinks is not None:
        if not isinstance(sinks, list):
            raise ConfigError(f"{where}: sinks must be a list of [[sinks]] tables")
        config.sinks = [dict(table) if isinstance(table, Mapping) else table for table in sinks]
    if e.mqtt_sink is not None:
        mqtt_sink_table(config)
    top.check()
    return config


def mqtt_sink_table(config: ReceiverConfig) -> dict[str, Any]:
    """The [[sinks]] table named by [engine] mqtt_sink (an mqtt sink). Raises ConfigError."""
    name = config.engine.mqtt_sink
    for table in config.sinks or []:
        if isinstance(table, Mapping) and table.get("type") == "mqtt" and (table.get("name") or "mqtt") == name:
            return dict(table)
    raise ConfigError(f"{config.source} [engine]: mqtt_sink {name!r} names no [[sinks]] table of type "
                      "\"mqtt\" (its `name`, or \"mqtt\" when it has none)")


def _max_commands() -> int:
    from carecard.protocol import spec

    return spec.MAX_COMMANDS
