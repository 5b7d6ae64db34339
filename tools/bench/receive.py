"""Receiver throughput: frames/s stored with the SQLite sink running, against a minimal baseline.

A load generator in a second process sends authenticated position and status frames from many
simulated devices over loopback UDP (frames pre-encoded, so the generator is not the bottleneck),
keeping at most `--window` frames unacknowledged (so the kernel never has to drop one; a frame
not acked within a second is sent again and counted). It runs twice, against:

- a minimal baseline receiver: a blocking loop that receives, verifies and decodes each frame
  (decode_frame), answers with an ack and discards it: the ceiling;
- the real receiver (carecard.host.receiver, on its event loop, SQLite WAL with synchronous=FULL,
  group commit, event log, the default SQLite sink, and the alert engine in its own process as
  shipped, at a lower CPU priority; `--no-engine` leaves it out). The engine's lag when the sink
  has stored the burst and the time it then takes to catch up are printed: the price of its
  lower priority.

It prints frames/s for both and the ratio, and the p50/p99 time from datagram to sink (from the
receiver's clock reading for the wake that read the datagram, one per wake, to the moment the
SQLite sink's transaction holding its event returned). The receiver side is pinned to one CPU
and the generator to another when the machine has two. Targets: at least 50 % of the baseline
and 20,000 frames/s.

Nothing may be dropped: the generator counts the frames it had to send again (no ack within a
second) and those never acked, and each run reports the kernel's UDP receive-buffer drops on the
machine during the run (/proc/net/snmp RcvbufErrors). `--runs N` repeats the pair N times (the
machine is shared: one run is noisy) and prints the median of each figure; the load average is
printed before and after.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import hashlib
import json
import os
import select
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

STATUS_EVERY = 5  # every fifth frame of a device is a status report, the others positions
BASE_TIME = 1764374400


# --- shared by both processes -------------------------------------------------------------------

def device_ids(count: int, first: int) -> list[int]:
    from carecard.host.receiver.registry import make_imei

    return [make_imei(86000000000000 + first + i) for i in range(count)]


def device_key(seed: str, device: int) -> bytes:
    return hashlib.sha256(f"{seed}:{device}".encode()).digest()[:16]


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by a process (this one by default)."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the load generator (second process) --------------------------------------------------------

def _encode_all(devices: list[int], seed: str, total: int) -> list[tuple[int, int, bytes]]:
    """Pre-encoded frames, round robin over the devices: (device, counter, frame)."""
    from carecard.protocol import decode_frame, spec
    from carecard.protocol.codec import HEADER_STRUCT, MESSAGE_TYPES
    from carecard.protocol.crypto import FrameKeys

    keys = {d: FrameKeys(device_key(seed, d)) for d in devices}
    position = MESSAGE_TYPES["position"]
    status = MESSAGE_TYPES["status"]

    def packer(mtype: Any, values: dict[str, Any]) -> Any:
        packed = mtype.packed
        codes = {i: table for i, _labels, table in packed.enums}
        ordered = [codes[i][values[name]] if i in codes else values[name] for i, name in enumerate(packed.names)]
        return packed.packer, ordered

    pos_packer, pos_values = packer(position, {
        "lat_e7": 249012345, "lon_e7": 1184567890, "alt_m": 30, "hdop_x10": 9, "sats": 8, "fix": "3d",
        "fix_age_s": 3, "speed_cms": 120, "course_x10": 900, "source": "fresh"})
    st_packer, st_values = packer(status, {
        "battery_mv": 3950, "battery_pct": 81, "charging": "discharging", "rssi_dbm": -71,
        "motion_count": 4, "outbox_depth": 0})
    pack_header = HEADER_STRUCT.pack
    frames = []
    n = len(devices)
    for i in range(total):
        device = devices[i % n]
        counter = i // n + 1
        k = keys[device]
        if counter % STATUS_EVERY == 0:
            code, payload = status.code, st_packer.pack(*st_values)
        else:
            pos_values[0] = 249012345 + (i % 1000) * 10
            code, payload = position.code, pos_packer.pack(*pos_values)
        body = pack_header(spec.VERSION, code, 0, device, counter, BASE_TIME + counter) + \
            k.crypt(device, counter, spec.DIR_UPLINK, payload)
        frames.append((device, counter, body + k.tag(body)))
    for device, counter, frame in frames[:50]:  # the fast path must make real frames
        message = decode_frame(frame, keys[device])
        assert message["counter"] == counter and message["device"] == device
    return frames


def generator_main(argv: list[str]) -> int:
    params = json.loads(argv[0])
    if params.get("cpu") is not None:
        try:
            os.sched_setaffinity(0, {params["cpu"]})
        except OSError:
            pass
    from carecard.protocol.crypto import FrameKeys
    from carecard.protocol import spec

    devices = device_ids(params["devices"], params["first"])
    seed = params["seed"]
    frames = _encode_all(devices, seed, params["frames"])
    keys = {d: FrameKeys(device_key(seed, d)) for d in devices}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    ports = params.get("ports") or [params["port"]]
    if len(ports) == 1:
        sock.connect(("127.0.0.1", ports[0]))
        send = sock.send
    else:  # several receivers behind "one address": frame i goes to receiver i mod n
        addresses = [("127.0.0.1", port) for port in ports]
        sendto = sock.sendto
        turn = [0]

        def send(frame: bytes) -> int:
            turn[0] += 1
            return sendto(frame, addresses[turn[0] % len(addresses)])
    window = params["window"]
    deadline_s = params["timeout"]
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_started = time.process_time()

    recv = sock.recv
    header_len = spec.HEADER_LEN
    down = spec.DIR_DOWNLINK
    unpack_ack = struct.Struct(">QI").unpack_from  # the ack's device and downlink counter
    # lean bookkeeping (the generator shares a CPU with the sinks): a frame is known by one
    # integer, device << 32 | counter, and sends are remembered per burst, not per frame
    key_of = [device << 32 | counter for device, counter, _frame in frames]
    outstanding: dict[int, int] = {}  # key -> frame index, until acked
    sent_at: collections.deque[tuple[float, int, int]] = collections.deque()  # (when, first, count)
    total = len(frames)
    next_index = acked = retransmits = bad_acks = 0
    started = time.time()
    deadline = started + deadline_s
    last_check = started
    sock.setblocking(False)
    wait = select.poll()
    wait.register(sock, select.POLLIN)
    while acked < total:
        now = time.time()
        first = next_index
        while len(outstanding) < window and next_index < total:
            send(frames[next_index][2])
            outstanding[key_of[next_index]] = next_index
            next_index += 1
        if next_index > first:
            sent_at.append((now, first, next_index - first))
        got = 0
        while True:
            try:
                data = recv(1024)
            except (BlockingIOError, InterruptedError):
                break
            got += 1
            try:
                device, dl_counter = unpack_ack(data, 3)
                uplink = int.from_bytes(keys[device].crypt(device, dl_counter, down,
                                                           data[header_len:header_len + 4]), "big")
                if outstanding.pop(device << 32 | uplink, None) is not None:
                    acked += 1
            except (KeyError, ValueError, IndexError, struct.error):
                bad_acks += 1
        if not got:
            wait.poll(50)
        if now - last_check >= 0.1:
            last_check = now
            while sent_at and now - sent_at[0][0] > 1.0:  # not acked within a second: again
                _when, first, count = sent_at.popleft()
                for index in range(first, first + count):
                    if key_of[index] in outstanding:
                        send(frames[index][2])
                        retransmits += 1
                        sent_at.append((now, index, 1))
            if now > deadline:
                break
    finished = time.time()
    print(json.dumps({"sent": next_index, "acked": acked, "retransmits": retransmits,
                      "bad_acks": bad_acks, "started": started, "finished": finished,
                      "unacked": total - acked, "cpu_s": time.process_time() - cpu_started}), flush=True)
    return 0


class Generator:
    """The generator subprocess: encodes its frames, waits for `go`, reports JSON."""

    def __init__(self, port: int | list[int], args: argparse.Namespace, first: int, cpu: int | None):
        ports = port if isinstance(port, list) else [port]
        params = {"port": ports[0], "ports": ports, "devices": args.devices, "first": first,
                  "seed": args.seed, "frames": args.frames, "window": args.window,
                  "timeout": args.timeout, "cpu": cpu}
        self.proc = subprocess.Popen([sys.executable, "-m", "carecard.tools.bench.receive", "--generator",
                                      json.dumps(params)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"load generator failed to start: {line!r}")

    def run(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        self.proc.wait(timeout=30)
        if not line:
            raise RuntimeError("load generator died")
        return json.loads(line)


# --- the baseline receiver ----------------------------------------------------------------------

def run_baseline(args: argparse.Namespace, cpu_gen: int | None) -> dict[str, Any]:
    from carecard.protocol.ack import AckEncoder
    from carecard.protocol import KeyRing, ProtocolError, decode_frame

    devices = device_ids(args.devices, 0)
    ring = KeyRing({d: device_key(args.seed, d) for d in devices})
    encoder = AckEncoder(ring)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()
    counts = {"frames": 0, "rejected": 0}

    def serve() -> None:
        downlink: dict[int, int] = {}
        recvfrom, sendto = sock.recvfrom, sock.sendto
        while not stop.is_set():
            try:
                data, address = recvfrom(513)
            except socket.timeout:
                continue
            try:
                message = decode_frame(data, ring)
            except ProtocolError:
                counts["rejected"] += 1
                continue
            device = message["device"]
            counter = downlink.get(device, 0) + 1
            downlink[device] = counter
            sendto(encoder.encode(device, counter, int(time.time()), message["counter"]), address)
            counts["frames"] += 1

    generator = Generator(sock.getsockname()[1], args, 0, cpu_gen)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cpu = process_cpu()
    try:
        result = generator.run()
        cpu = process_cpu() - cpu
    finally:
        stop.set()
        thread.join()
        sock.close()
    result["cpu_us"] = 1e6 * cpu / max(1, counts["frames"])
    seconds = result["finished"] - result["started"]
    result.update(seconds=seconds, rate=result["acked"] / seconds if seconds > 0 else 0.0,
                  received=counts["frames"])
    return result


# --- the real receiver --------------------------------------------------------------------------

def run_receiver(args: argparse.Namespace, cpu_gen: int | None, data_dir: Path) -> dict[str, Any]:
    from carecard.host.paths import events_db_path, ingest_db_path
    from carecard.host.receiver.config import Endpoint, ReceiverConfig
    from carecard.host.receiver.registry import DeviceSpec, add_devices
    from carecard.host.receiver.service import ReceiverThread
    from carecard.host.storage.sqlite.store import SQLiteStore

    first = 500_000  # other IMEIs than the baseline's: a fresh replay history
    devices = device_ids(args.devices, first)
    store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
    add_devices(store, data_dir, [DeviceSpec(d, f"bench {i}", device_key(args.seed, d))
                                  for i, d in enumerate(devices)])
    store.close()
    config = ReceiverConfig(udp=[Endpoint("127.0.0.1", 0)], data_dir=data_dir, log_level="warning")
    config.ingest.batch_max_frames = args.batch
    config.ingest.durability = args.durability
    config.sinks_in = args.sinks_in
    if args.sink_batch:
        config.sinks = [{"type": "sqlite", "batch_size": args.sink_batch}]
    if args.no_sink:
        config.sinks = []
    config.engine.enabled = not args.no_engine  # on by default, as shipped: its own process
    receiver_thread = ReceiverThread(config)
    receiver = receiver_thread.start()
    trace: list[tuple[int, list[float]]] = []
    if args.no_sink:
        return _run_ingest_only(args, receiver_thread, cpu_gen, first, data_dir)
    # When did the SQLite sink's cursor pass each seq? (the sink process reports every change)
    delivered_at: list[tuple[int, float]] = []

    def on_stats(stats: dict[str, dict[str, Any]], at: float) -> None:
        cursor = stats.get("sqlite", {}).get("cursor")
        if isinstance(cursor, int) and (not delivered_at or cursor > delivered_at[-1][0]):
            delivered_at.append((cursor, at))

    poller: threading.Thread | None = None
    polling = threading.Event()
    engine_pid = receiver.engine.pid if receiver.engine is not None else None
    engine_nice = _niceness(engine_pid) if engine_pid else None
    if cpu_gen is not None and engine_pid is not None:
        os.sched_setaffinity(engine_pid, {cpu_gen})  # off the ingest's core, as the sinks
    if args.sinks_in == "process":
        receiver.sinks.on_stats = on_stats
        if cpu_gen is not None and receiver.sinks.pid is not None:
            os.sched_setaffinity(receiver.sinks.pid, {cpu_gen})  # the sinks' own core
    else:  # sinks in the receiver's process: poll their cursor
        def poll() -> None:
            while not polling.is_set():
                on_stats(receiver_thread.call(receiver.sinks.stats), time.time())
                time.sleep(0.002)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
    assert receiver.ingest is not None

    def observe(last_seq: int, frames: list[tuple]) -> None:
        trace.append((last_seq, [row[5] for row in frames]))

    receiver_thread.call(lambda: setattr(receiver.ingest, "commit_observer", observe))
    generator = Generator(receiver.udp_ports[0], args, first, cpu_gen)
    sink_pid = getattr(receiver.sinks, "pid", None)
    cpu, sink_cpu = process_cpu(), process_cpu(sink_pid) if sink_pid else 0.0
    engine_cpu = process_cpu(engine_pid) if engine_pid else 0.0
    try:
        result = generator.run()
        deadline = time.time() + 60
        stored = receiver.metrics.stored_total
        while time.time() < deadline and receiver_thread.call(receiver.sink_delivered).get("sqlite", 0) < stored:
            time.sleep(0.002)
            stored = receiver.metrics.stored_total
        sink_done = delivered_at[-1][1] if delivered_at else time.time()
        cpu = process_cpu() - cpu
        sink_cpu = (process_cpu(sink_pid) - sink_cpu) if sink_pid else 0.0
        engine_lag = engine_catch_up = None
        if engine_pid:  # the engine is a reader of the log too: how far behind the burst left it
            last_frame = delivered_at[-1][0] if delivered_at else 0
            engine_lag = max(0, last_frame - _engine_cursor(receiver_thread, receiver))
            while time.time() < deadline and _engine_cursor(receiver_thread, receiver) < last_frame:
                time.sleep(0.01)
            engine_catch_up = max(0.0, time.time() - sink_done)
            if _engine_cursor(receiver_thread, receiver) < last_frame:
                engine_catch_up = None  # not caught up within the run's deadline
        engine_cpu = (process_cpu(engine_pid) - engine_cpu) if engine_pid else 0.0
        snapshot = receiver.metrics.snapshot()
        commits, commit_s = receiver.metrics.commits, receiver.metrics.commit_seconds
        batch_frames = receiver.metrics.batch_frames
        sink_stats = receiver_thread.call(receiver.sinks.stats)
    finally:
        polling.set()
        if poller is not None:
            poller.join()
        receiver_thread.stop()
    with sqlite3.connect(ingest_db_path(data_dir)) as conn:
        frames_in_store = conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    with sqlite3.connect(events_db_path(data_dir)) as conn:
        events_in_sink = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    latencies = _latencies(trace, delivered_at)
    result["cpu_us"] = 1e6 * cpu / max(1, frames_in_store)
    result["sink_cpu_us"] = 1e6 * sink_cpu / max(1, frames_in_store)
    result["engine_cpu_us"] = 1e6 * engine_cpu / max(1, frames_in_store)
    result["engine_lag"], result["engine_catch_up"] = engine_lag, engine_catch_up
    result["engine_nice"] = engine_nice
    seconds = result["finished"] - result["started"]
    sink_seconds = sink_done - result["started"]
    result.update(
        seconds=seconds, rate=result["acked"] / seconds if seconds > 0 else 0.0,
        sink_seconds=sink_seconds,
        sink_rate=events_in_sink / sink_seconds if sink_seconds > 0 else 0.0,
        frames_in_store=frames_in_store, events_in_sink=events_in_sink, latencies=latencies,
        duplicates=snapshot["duplicates"], rejected=sum(snapshot["rejected"].values()),
        commits=commits, commit_seconds=commit_s, batch_frames=batch_frames, sink_stats=sink_stats)
    return result


def _engine_cursor(receiver_thread: Any, receiver: Any) -> int:
    """The engine child's cursor in the event log, as it last reported it."""
    cursor = receiver_thread.call(receiver.engine.stats).get("cursor")
    return cursor if isinstance(cursor, int) else 0


def _niceness(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, ValueError, IndexError):
        return None


def _latencies(trace: list[tuple[int, list[float]]], delivered_at: list[tuple[int, float]]) -> list[float]:
    """Datagram-to-sink time of every event: from the frame's receive time to the first report of
    the sink's cursor at or past the event's seq (events of a commit have consecutive seqs)."""
    cursors = [cursor for cursor, _at in delivered_at]
    out = []
    for last_seq, received in trace:
        first = last_seq - len(received) + 1
        for offset, started in enumerate(received):
            i = bisect.bisect_left(cursors, first + offset)
            if i < len(cursors):
                out.append(delivered_at[i][1] - started)
    return out


def _run_ingest_only(args: argparse.Namespace, receiver_thread: Any, cpu_gen: int | None, first: int,
                     data_dir: Path) -> dict[str, Any]:
    from carecard.host.paths import ingest_db_path

    receiver = receiver_thread.receiver
    generator = Generator(receiver.udp_ports[0], args, first, cpu_gen)
    cpu = process_cpu()
    try:
        result = generator.run()
        cpu = process_cpu() - cpu
        snapshot = receiver.metrics.snapshot()
        commits, commit_s = receiver.metrics.commits, receiver.metrics.commit_seconds
        batch_frames = receiver.metrics.batch_frames
    finally:
        receiver_thread.stop()
    with sqlite3.connect(ingest_db_path(data_dir)) as conn:
        frames_in_store = conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    result["cpu_us"] = 1e6 * cpu / max(1, frames_in_store)
    result["sink_cpu_us"] = 0.0
    seconds = result["finished"] - result["started"]
    rate = result["acked"] / seconds if seconds > 0 else 0.0
    result.update(seconds=seconds, rate=rate, sink_seconds=seconds, sink_rate=rate,
                  frames_in_store=frames_in_store, events_in_sink=frames_in_store, latencies=[],
                  duplicates=snapshot["duplicates"], rejected=sum(snapshot["rejected"].values()),
                  commits=commits, commit_seconds=commit_s, batch_frames=batch_frames, sink_stats={})
    return result


def udp_drops() -> int | None:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (whole machine)."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
                 if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


def _dropped(before: int | None) -> int | None:
    after = udp_drops()
    return None if before is None or after is None else after - before


def stage_costs(args: argparse.Namespace, count: int = 20_000) -> list[tuple[str, str, float]]:
    """CPU microseconds per frame of each stage of the receiver's hot path, one thread, on the
    benchmark's own frames: (stage, whose code, us)."""
    from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
    from carecard.host.events import event_record
    from carecard.protocol.ack import AckEncoder
    from carecard.protocol import KeyRing, decode_frame, parse_opened

    devices = device_ids(min(args.devices, 1000), 900_000)
    frames = _encode_all(devices, args.seed, count)
    ring = KeyRing({d: device_key(args.seed, d) for d in devices})
    encoder = AckEncoder(ring)
    out: list[tuple[str, str, float]] = []

    def timed(name: str, owner: str, fn: Any) -> Any:
        start = time.process_time()
        result = fn()
        out.append((name, owner, 1e6 * (time.process_time() - start) / count))
        return result

    opened: list[bytes] = []
    messages = timed("decode_frame (authenticate, decrypt, parse; keeps the opened frame)", "protocol",
                     lambda: [decode_frame(f, ring, opened) for _d, _c, f in frames])
    now = time.time()
    timed("ack encode (fresh counter, AES-CTR, HMAC)", "receiver",
          lambda: [encoder.encode(m["device"], i + 1, int(now), m["counter"]) for i, m in enumerate(messages)])
    rows = [(m["device"], m["counter"], f[-8:], m["type"], m["time"], now, "udp", f, o)
            for m, (_d, _c, f), o in zip(messages, frames, opened)]
    with tempfile.TemporaryDirectory(prefix="carecard-stages-") as tmp:
        from carecard.host.storage.sqlite.store import connect, ensure_schema

        path = Path(tmp) / "stages.sqlite"
        conn = connect(path, args.durability)
        ensure_schema(conn, path)
        batch = 500

        def run_batches(fn: Any) -> None:
            for i in range(0, count, batch):
                conn.execute("BEGIN IMMEDIATE")
                fn(i)
                conn.execute("COMMIT")

        timed("SQLiteEventLog.append_frames: one row per frame, its archive and event (+ BEGIN/COMMIT "
              "per 500)", "eventlog", lambda: run_batches(lambda i: SQLiteEventLog.append_frames(conn, rows[i:i + batch])))
        conn.close()
    # on the sinks' side (their process), for a sink that forwards JSON (MQTT, webhook, JSON lines)
    again = timed("parse_opened (a sink's reader: the message from the opened frame)", "sinks",
                  lambda: [parse_opened(o) for o in opened])
    timed("event_record (the event's JSON, made by a sink that forwards it)", "sinks",
          lambda: [event_record(m, now) for m in again])
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    parser.add_argument("--frames", type=int, default=120_000, help="frames per run (default 120000)")
    parser.add_argument("--window", type=int, default=2048,
                        help="frames in flight, like that many cards waiting for their ack (default 2048)")
    parser.add_argument("--batch", type=int, default=256, help="receiver batch_max_frames (default 256)")
    parser.add_argument("--durability", choices=("full", "normal"), default="full",
                        help="receiver durability (default full: fsync every commit)")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up a run after this many seconds")
    parser.add_argument("--seed", default="carecard-bench", help="key derivation seed")
    parser.add_argument("--sinks-in", choices=("process", "thread"), default="process",
                        help="sinks in their own process (the receiver's default) or in the receiver's")
    parser.add_argument("--sink-batch", type=int, default=0,
                        help="the SQLite sink's batch_size (default: the sink's own default)")
    parser.add_argument("--no-sink", action="store_true",
                        help="run the receiver without sinks (ingest, event log and acks only)")
    parser.add_argument("--no-engine", action="store_true",
                        help="run the receiver without the alert engine (default: on, in its own process, as shipped)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin receiver and generator to CPUs")
    parser.add_argument("--data", metavar="DIR", help="keep the receiver's data here (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat baseline and receiver this many times and report medians (default 1)")


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _one_run(args: argparse.Namespace, cpu_gen: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    from carecard.host.commands.errors import CommandError

    before = udp_drops()
    base = run_baseline(args, cpu_gen)
    base["drops"] = _dropped(before)
    before = udp_drops()
    if args.data:
        data_dir = Path(args.data)
        data_dir.mkdir(parents=True, exist_ok=True)
        if any(data_dir.iterdir()):
            raise CommandError(f"--data {data_dir} is not empty")
        full = run_receiver(args, cpu_gen, data_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="carecard-bench-") as tmp:
            full = run_receiver(args, cpu_gen, Path(tmp))
    full["drops"] = _dropped(before)
    lat = full["latencies"]
    full["p50"], full["p99"] = _percentile(lat, 0.50), _percentile(lat, 0.99)
    full["ratio"] = full["sink_rate"] / base["rate"] if base["rate"] else 0.0
    return base, full


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def run(args: argparse.Namespace) -> int:
    from carecard.host.commands.errors import CommandError
    from carecard.host.engine.process import ENGINE_CHILD_NICE
    from carecard.host.receiver.runtime import tune_gc

    if args.devices < 1 or args.frames < args.devices or args.window < 1 or args.runs < 1:
        raise CommandError("--devices >= 1, --frames >= --devices, --window >= 1 and --runs >= 1 required")
    tune_gc()  # as `carecard receive` runs; for the baseline too, so both run alike
    cpus = sorted(os.sched_getaffinity(0))
    cpu_receiver = cpu_gen = None
    if not args.no_pin and len(cpus) >= 2:
        cpu_receiver, cpu_gen = cpus[0], cpus[1]
        os.sched_setaffinity(0, {cpu_receiver})
    where_sinks = ("in the receiver's process" if args.sinks_in == "thread"
                   else f"in their process on CPU {cpu_gen}" if cpu_gen is not None else "in their process")
    where_sinks += (", alert engine off" if args.no_engine else f", alert engine in its process"
                    + (f" on CPU {cpu_gen}" if cpu_gen is not None else "")
                    + f" at niceness +{ENGINE_CHILD_NICE} (as `carecard receive` runs it)")
    pinning = (f"receiver pinned to CPU {cpu_receiver}, generator to CPU {cpu_gen}, sinks {where_sinks}"
               if cpu_receiver is not None else f"not pinned, sinks {where_sinks}")
    print(f"carecard bench receive: {args.devices} devices, {args.frames} frames per run "
          f"(positions, every {STATUS_EVERY}th a status), window {args.window}, {pinning}; "
          f"{os.cpu_count()} CPUs, {_load()}")
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        for number in range(1, args.runs + 1):
            base, full = _one_run(args, cpu_gen)
            runs.append((base, full))
            if args.runs > 1:
                print(f"  run {number}: baseline {base['rate']:,.0f}/s, stored {full['sink_rate']:,.0f}/s, "
                      f"ratio {full['ratio']:.2f}, acked {full['rate']:,.0f}/s, datagram to sink "
                      f"p50 {1000 * full['p50']:.0f} ms p99 {1000 * full['p99']:.0f} ms, CPU "
                      f"{full['cpu_us']:.1f} + {full['sink_cpu_us']:.1f} (+ engine {full.get('engine_cpu_us', 0.0):.1f}) us/frame, "
                      f"{full['retransmits']} resent, {_drops_text(full['drops'])}{_engine_text(full)}", flush=True)
    finally:
        if cpu_receiver is not None:
            os.sched_setaffinity(0, set(cpus))
    # the run with the median stored rate is shown in full; the headline figures are medians
    runs.sort(key=lambda pair: pair[1]["sink_rate"])
    base, full = runs[len(runs) // 2]
    med = statistics.median
    if args.runs > 1:
        print(f"  medians of {args.runs} runs; the median run in full ({_load()}):")
    print(f"  baseline (receive, verify+decode, ack, discard): {base['rate']:,.0f} frames/s "
          f"({base['acked']} acked in {base['seconds']:.2f} s, {base['retransmits']} retransmitted, "
          f"{_drops_text(base['drops'])}; {base['cpu_us']:.1f} us CPU per frame; "
          f"generator {1e6 * base.get('cpu_s', 0.0) / max(1, base['acked']):.1f} us, busy "
          f"{base.get('cpu_s', 0.0) / max(base['seconds'], 1e-9):.0%} of its CPU: near 100%, the "
          f"generator, not the baseline, set this ceiling)")
    print(f"  receiver (SQLite WAL synchronous={args.durability.upper()}, event log, "
          f"{'no sink' if args.no_sink else 'SQLite sink'}):")
    print(f"    acked:            {full['rate']:,.0f} frames/s ({full['acked']} in {full['seconds']:.2f} s, "
          f"{full['retransmits']} retransmitted, {full['unacked']} never acked, {_drops_text(full['drops'])})")
    print(f"    stored into sink: {full['sink_rate']:,.0f} frames/s ({full['events_in_sink']} events "
          f"in the SQLite sink {full['sink_seconds']:.2f} s after the first datagram)")
    print(f"    store check:      {full['frames_in_store']} frames stored, {full['duplicates']} duplicates "
          f"acked again, {full['rejected']} rejected")
    if full["commits"]:
        print(f"    commits:          {full['commits']}, mean {full['batch_frames'] / full['commits']:.0f} "
              f"frames and {1000 * full['commit_seconds'] / full['commits']:.2f} ms each")
    total_cpu = full["cpu_us"] + full["sink_cpu_us"]
    gen_us = 1e6 * full.get("cpu_s", 0.0) / max(1, full["acked"])
    print(f"    CPU per frame:    {full['cpu_us']:.1f} us receiver process"
          + (f" + {full['sink_cpu_us']:.1f} us sink process" if full["sink_cpu_us"] else "")
          + (f" (+ {full.get('engine_cpu_us', 0.0):.1f} us alert engine process)" if full.get("engine_cpu_us") else "")
          + f" = {total_cpu:.1f} us, i.e. {1e6 / total_cpu:,.0f} frames/s if it all ran on one core"
          f" (baseline {base['cpu_us']:.1f} us: {base['cpu_us'] / total_cpu:.2f}); the generator "
          f"{gen_us:.1f} us on the sinks' CPU")
    if full.get("engine_lag") is not None:
        print(f"    alert engine:    {_engine_text(full)[2:]} (its CPU above is until it caught up)")
    print(f"    datagram to sink: p50 {1000 * full['p50']:.1f} ms, "
          f"p99 {1000 * full['p99']:.1f} ms ({len(full['latencies'])} samples)")
    if args.no_sink:
        print("    (no sink: the figures below are for ingest only)")
    ratio = med([f["ratio"] for _b, f in runs])
    stored = med([f["sink_rate"] for _b, f in runs])
    label = "median " if args.runs > 1 else ""
    if args.runs > 1:
        print(f"  {label}figures: baseline {med([b['rate'] for b, _f in runs]):,.0f} frames/s, stored "
              f"{stored:,.0f} frames/s, acked {med([f['rate'] for _b, f in runs]):,.0f} frames/s, "
              f"datagram to sink p50 {1000 * med([f['p50'] for _b, f in runs]):.1f} ms, "
              f"p99 {1000 * med([f['p99'] for _b, f in runs]):.1f} ms")
    print(f"  {label}ratio to baseline: {ratio:.2f} (target >= 0.50: {'met' if ratio >= 0.5 else 'NOT met'}); "
          f"{stored:,.0f} frames/s (target >= 20,000: {'met' if stored >= 20_000 else 'NOT met'})")
    print("  per-frame CPU by stage (one thread, the same frames; the rest of the receiver's figure is "
          "sockets, the event loop and bookkeeping; [sinks] stages run in the sink process):")
    for name, owner, micros in stage_costs(args):
        print(f"    {micros:6.1f} us  {name}  [{owner}]")
    bad = [f for _b, f in runs
           if f["frames_in_store"] != f["acked"] or f["events_in_sink"] != f["frames_in_store"] or f["unacked"]]
    if bad:
        print("  WARNING: stored, acked and delivered counts differ")
        return 1
    return 0


def _engine_text(full: dict[str, Any]) -> str:
    """The engine child's lag when the sink had stored the burst, and how long it took to catch up."""
    if full.get("engine_lag") is None:
        return ""
    catch_up = full.get("engine_catch_up")
    return (f"; engine (nice {full.get('engine_nice')}) {full['engine_lag']:,} events behind at the end, "
            + ("not caught up within the run's timeout" if catch_up is None else f"caught up {catch_up:.2f} s later"))


def _drops_text(drops: int | None) -> str:
    return "kernel UDP drops unknown" if drops is None else f"{drops} dropped by the kernel"


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--generator":
        sys.exit(generator_main(sys.argv[2:]))
    print("run `carecard bench receive`", file=sys.stderr)
    sys.exit(2)
