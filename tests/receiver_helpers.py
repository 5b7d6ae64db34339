"""Helpers for the receiver tests: provisioned data folders, simulated cards, receiver processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from carecard.host.paths import ingest_db_path
from carecard.host.receiver.config import BudgetSettings, DownlinkSettings, IngestSettings
from carecard.host.receiver.ingest import Ingest
from carecard.host.receiver.metrics import Metrics
from carecard.host.receiver.registry import DeviceSpec, add_devices, make_imei
from carecard.host.storage import CommitBatch, IngestStore
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.storage.sqlite.store import SQLiteStore
from carecard.protocol import KeyRing, decode_frame, encode_frame

BASE_TIME = 1764374400
POSITION = {"lat_e7": 249012345, "lon_e7": 1184567890, "alt_m": 30, "hdop_x10": 9, "sats": 8,
            "fix": "3d", "fix_age_s": 3, "speed_cms": 120, "course_x10": 900, "source": "fresh"}
STATUS = {"battery_mv": 3950, "battery_pct": 81, "charging": "discharging", "rssi_dbm": -71,
          "motion_count": 4, "outbox_depth": 0}


def key_for(device: int) -> bytes:
    return hashlib.sha256(f"test:{device}".encode()).digest()[:16]


def provision(data_dir: Path, count: int = 1, first: int = 1) -> dict[int, bytes]:
    """Register `count` devices with deterministic keys; returns {device: key}."""
    devices = {make_imei(86123456000000 + first + i): b"" for i in range(count)}
    for device in devices:
        devices[device] = key_for(device)
    store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
    try:
        add_devices(store, data_dir, [DeviceSpec(d, f"Elder {i}", k) for i, (d, k) in enumerate(devices.items())])
    finally:
        store.close()
    return devices


class Card:
    """Makes a device's uplink frames (host codec) and reads its acks."""

    def __init__(self, device: int, key: bytes, counter: int = 0):
        self.device = device
        self.key = key
        self.counter = counter

    def frame(self, mtype: str = "position", counter: int | None = None, **fields: Any) -> bytes:
        if counter is None:
            self.counter += 1
            counter = self.counter
        values = dict(POSITION if mtype == "position" else STATUS if mtype == "status" else {})
        values.update(fields)
        message = {"type": mtype, "device": self.device, "counter": counter,
                   "time": BASE_TIME + counter, **values}
        return encode_frame(message, self.key)

    def ack(self, data: bytes) -> dict[str, Any]:
        message = decode_frame(data, self.key)
        assert message["type"] == "ack" and message["device"] == self.device
        return message


def commit_batch(store: IngestStore, batch: CommitBatch) -> int:
    """Make a batch durable as the receiver does (prepare, then finish); the log's last seq."""
    last_seq = store.prepare(batch)
    store.finish()
    return last_seq


class Harness:
    """An Ingest on a real SQLite store, with a fake 'network' collecting sent acks."""

    def __init__(self, data_dir: Path, devices: dict[int, bytes], window: int = 256,
                 budget: BudgetSettings | None = None, downlinks: DownlinkSettings | None = None):
        self.data_dir = data_dir
        self.devices = devices
        self.window = window
        self.budget = budget
        self.downlinks = downlinks
        self.sent: list[tuple[object, bytes]] = []
        self.open()

    def open(self) -> None:
        self.store = SQLiteStore(ingest_db_path(self.data_dir))
        self.metrics = Metrics()
        self.ingest = Ingest(self.store, KeyRing(self.devices), self.metrics,
                             settings=IngestSettings(replay_window=self.window), budget=self.budget,
                             downlinks=self.downlinks)
        self.ingest.load_registry(self.store.load_devices(), self.store.open_commands())

    def reopen(self) -> None:
        self.store.close()
        self.open()

    def send(self, ack: bytes, address: object) -> None:
        self.sent.append((address, ack))

    def feed(self, frame: bytes, source: str = "10.0.0.1", address: object = ("10.0.0.1", 5000)) -> str | None:
        return self.ingest.handle(frame, self.send, address, source, "udp", time.time())

    def commit(self) -> list[bytes]:
        batch = self.ingest.take_batch(time.time())
        if batch is None:
            return []
        last_seq = commit_batch(self.store, batch.commit)
        acks = self.ingest.committed(batch, last_seq, 0.0)
        for send, address, ack in acks:
            send(ack, address)
        return [ack for _s, _a, ack in acks]

    def frames(self) -> list[tuple[int, int]]:
        with sqlite3.connect(ingest_db_path(self.data_dir)) as conn:
            return conn.execute("SELECT device, counter FROM frames ORDER BY device, counter").fetchall()

    def events(self) -> list[str]:
        """The ids of the events in the log, in order (as the sinks read them)."""
        log = SQLiteEventLog(ingest_db_path(self.data_dir))
        try:
            return [event["id"] for _seq, event in log.events_after(0, 1_000_000)]
        finally:
            log.close()


def udp_client(timeout: float = 2.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.bind(("127.0.0.1", 0))
    return sock


def exchange(sock: socket.socket, port: int, frame: bytes, timeout: float = 2.0) -> bytes | None:
    """Send one frame, wait for one datagram back (None on timeout)."""
    sock.settimeout(timeout)
    sock.sendto(frame, ("127.0.0.1", port))
    try:
        data, _ = sock.recvfrom(2048)
    except socket.timeout:
        return None
    return data


class ReceiverProcess:
    """`carecard receive` as a real subprocess with JSON logs; ports read from its log."""

    def __init__(self, data_dir: Path, *args: str, udp: bool = True, tcp: bool = False,
                 metrics: bool = False, env: dict[str, str] | None = None):
        argv = [sys.executable, "-m", "carecard.host.cli", "receive", "--data", str(data_dir),
                "--log-format", "json"]
        if udp:
            argv += ["--udp", "127.0.0.1:0"]
        if tcp:
            argv += ["--tcp", "127.0.0.1:0"]
        if metrics:
            argv += ["--metrics", "127.0.0.1:0"]
        argv += list(args)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.udp_port = self.tcp_port = self.metrics_port = None
        self.log: list[dict[str, Any]] = []
        self._wait_started()

    def _wait_started(self, timeout: float = 20.0) -> None:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"receiver exited with {self.proc.wait()}: {self.log}")
            try:
                record = json.loads(line)
            except ValueError:
                self.log.append({"msg": line})
                continue
            self.log.append(record)
            if record.get("transport") == "udp":
                self.udp_port = int(record["address"].rsplit(":", 1)[1])
            if record.get("transport") == "tcp":
                self.tcp_port = int(record["address"].rsplit(":", 1)[1])
            if record.get("msg", "").startswith("receiver started"):
                self.metrics_port = record.get("metrics_port")
                return
        raise RuntimeError("receiver did not start in time")

    def terminate(self, timeout: float = 20.0) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=10)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "carecard.host.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)
