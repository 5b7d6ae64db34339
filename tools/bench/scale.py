"""Scaling out: frames/s stored by 1, 2 and 3 receivers on one PostgreSQL against the single
receiver on SQLite, and the alert engine's events/s per worker reading the PostgreSQL log.

Every receiver is a real `carecard receive` process (no sinks, no engine: the figure is the
ingest path, decode -> authenticate -> de-duplicate -> commit -> ack); the load generator of
`bench receive` (a second process, frames pre-encoded) sprays the frames over the receivers'
UDP ports in turn, as a load balancer in front of them would, keeping `--window` frames
unacknowledged. A frame counts once it is acked, i.e. committed (persist before ack); after each
run the stored frames are counted in the database and must equal the acked ones. The receivers
share the machine's cores with the generator and the database server: on a small machine the
figures show what the database and the cores allow, not the receivers' own limit; each line
says how much CPU each process used per frame, which is what the sizing in docs/operations.md
builds on.

PostgreSQL: a throwaway server (Debian's binaries, fsync on, as in production) in a temp folder,
or `--store URL` for a server of your own (a database the benchmark may fill; each run uses
devices of its own). Engine: after the runs, one `carecard engine` worker reads the log the last
PostgreSQL run wrote, from its start, and its events/s is the time until its saved cursor
reached the log's head; then two workers with two partitions do the same, each figure per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from carecard.host.storage import is_postgresql_url
from carecard.tools.bench.receive import Generator, device_ids, device_key, process_cpu

START_TIMEOUT_S = 30.0


def tree_cpu(pid: int) -> float:
    """CPU seconds of a server process and its children: its own, its children's that exited
    (it waited for them), and those of the children running now (PostgreSQL's backends)."""
    def fields(of: int) -> list[str]:
        try:
            return Path(f"/proc/{of}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return []

    tick = os.sysconf("SC_CLK_TCK")
    own = fields(pid)
    if not own:
        return 0.0
    total = sum(int(own[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            child = fields(int(entry.name))
            if child and int(child[1]) == pid:
                total += int(child[11]) + int(child[12])
    return total / tick


class Receiver:
    """`carecard receive` as a process, with its log in a file (ports read from it)."""

    def __init__(self, data_dir: Path, store: str, batch: int):
        self.data_dir = data_dir
        config = data_dir / "carecard.toml"
        config.write_text(f'sinks = []\n\n[receive]\nstore = "{store}"\nudp = ["127.0.0.1:0"]\n\n'
                          f"[ingest]\nbatch_max_frames = {batch}\n\n[engine]\nenabled = false\n")
        self.log_path = data_dir / "receiver.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "carecard.host.cli", "receive", "--data", str(data_dir),
                 "--config", str(config), "--log-format", "json", "--log-level", "info"],
                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
        self.port = self._wait_started()

    def _wait_started(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        port = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited ({self.proc.returncode}): "
                                   f"{self.log_path.read_text(errors='replace')[-1500:]}")
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("transport") == "udp":
                    port = int(record["address"].rsplit(":", 1)[1])
                if str(record.get("msg", "")).startswith("receiver started") and port is not None:
                    return port
            time.sleep(0.05)
        raise RuntimeError(f"receiver did not start in {START_TIMEOUT_S:g} s (log {self.log_path})")

    def cpu(self) -> float:
        return process_cpu(self.proc.pid)

    def failed_commits(self) -> tuple[int, int]:
        """(commits that failed, blocks of downlink counters reserved above another receiver's
        because it had reserved the claimed one first), from the log's last line."""
        failed = moved = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "commit failed" in line:
                failed += 1
            elif "receiver stopped" in line:
                try:
                    moved = int(json.loads(line).get("downlink_blocks_moved", 0))
                except (ValueError, AttributeError):
                    pass
        return failed, moved

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _register(store_setting: str, folders: list[Path], devices: list[int], seed: str) -> None:
    """Register the devices in the store; every receiver's folder gets the key file."""
    from carecard.host.receiver.registry import DeviceSpec, add_devices
    from carecard.host.storage import ingest_store_for

    store = ingest_store_for(store_setting, folders[0], "full")
    try:
        add_devices(store, folders[0], [DeviceSpec(d, f"bench {i}", device_key(seed, d))
                                        for i, d in enumerate(devices)])
    finally:
        store.close()
    for folder in folders[1:]:
        shutil.copy2(folders[0] / "keys.json", folder / "keys.json")


def _count_frames(store_setting: str, data_dir: Path, devices: list[int]) -> int:
    low, high = min(devices), max(devices)
    if store_setting == "sqlite":
        from carecard.host.paths import ingest_db_path

        with sqlite3.connect(ingest_db_path(data_dir)) as conn:
            return conn.execute("SELECT COUNT(*) FROM frames WHERE device BETWEEN ? AND ?",
                                (low, high)).fetchone()[0]
    import psycopg

    with psycopg.connect(store_setting) as conn:
        return conn.execute("SELECT COUNT(*) FROM event_log WHERE device BETWEEN %s AND %s",
                            (low, high)).fetchone()[0]


def run_receivers(args: argparse.Namespace, store: str, count: int, first: int,
                  workdir: Path, db_pid: int | None = None) -> dict[str, Any]:
    """`count` receivers on `store`, one generator run; the figures."""
    folders = [workdir / f"receiver-{first}-{i}" for i in range(count)]
    for folder in folders:
        folder.mkdir(parents=True)
    devices = device_ids(args.devices, first)
    _register(store, folders, devices, args.seed)
    receivers: list[Receiver] = []
    try:
        for folder in folders:
            receivers.append(Receiver(folder, store, args.batch))
        generator = Generator([r.port for r in receivers], args, first, None)
        cpu = [r.cpu() for r in receivers]
        db_cpu = tree_cpu(db_pid) if db_pid else 0.0
        result = generator.run()
        cpu = [r.cpu() - before for r, before in zip(receivers, cpu)]
        db_cpu = tree_cpu(db_pid) - db_cpu if db_pid else 0.0
    finally:
        for receiver in receivers:
            receiver.stop()
    failures = [receiver.failed_commits() for receiver in receivers]
    seconds = result["finished"] - result["started"]
    stored = _count_frames(store, folders[0], devices)
    return {"receivers": count, "acked": result["acked"], "unacked": result["unacked"],
            "retransmits": result["retransmits"], "seconds": seconds, "stored": stored,
            "rate": result["acked"] / seconds if seconds > 0 else 0.0,
            "cpu_us": [1e6 * c / max(1, stored) for c in cpu],
            "db_cpu_us": 1e6 * db_cpu / max(1, stored) if db_pid else None,
            "generator_us": 1e6 * result.get("cpu_s", 0.0) / max(1, result["acked"]),
            "failed_commits": sum(f for f, _ in failures), "blocks_moved": sum(m for _, m in failures)}


def engine_speed(args: argparse.Namespace, store: str, workdir: Path, workers: int = 1) -> dict[str, Any] | None:
    """`workers` `carecard engine` workers (as many partitions, one each) over the whole log of
    `store`: each worker's events/s until its partition's saved cursor reaches the head (every
    partition reads every event and judges its own devices'). None when the store's log is empty."""
    import psycopg

    from carecard.host.engine.process import partition_names
    from carecard.host.storage import EngineCommit, ingest_store_for

    folder = workdir / f"engine-{workers}"
    folder.mkdir()
    with psycopg.connect(store) as conn:
        head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM event_log").fetchone()[0]
    if not head:
        return None
    names = partition_names(workers)
    # a first engine starts at the log's head; these are told they have handled nothing yet
    checkpoint = ingest_store_for(store, folder, "full")
    try:
        for name in names:
            checkpoint.commit_engine(name, EngineCommit(cursor=0, now=time.time()))
    finally:
        checkpoint.close()
    config = folder / "carecard.toml"
    config.write_text(f'[receive]\nstore = "{store}"\n\n[engine]\nrun = "separately"\npartitions = {workers}\n')
    log_path = folder / "engine.log"
    started = time.time()
    procs = []
    with open(log_path, "wb") as log:
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "carecard.host.cli", "engine", "--data", str(folder), "--config",
                 str(config), "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL))
    cursors = dict.fromkeys(names, 0)
    first: dict[str, tuple[float, int]] = {}  # when each partition's first commit was seen, how far
    done: dict[str, float] = {}
    try:
        deadline = started + args.timeout
        with psycopg.connect(store, autocommit=True) as conn:
            while time.time() < deadline and len(done) < len(names):
                for proc in procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"carecard engine exited ({proc.returncode}): "
                                           f"{log_path.read_text(errors='replace')[-1500:]}")
                rows = conn.execute("SELECT name, cursor FROM engine_checkpoint WHERE name = ANY(%s)",
                                    (names,)).fetchall()
                now = time.time()
                for name, cursor in rows:
                    cursors[name] = cursor
                    if cursor and name not in first:
                        first[name] = (now, cursor)
                    if cursor >= head and name not in done:
                        done[name] = now
                time.sleep(0.05)
        cpu = [process_cpu(proc.pid) for proc in procs]
        if len(done) < len(names):
            raise RuntimeError(f"carecard engine reached seqs {cursors} of {head} in {args.timeout:g} s: "
                               f"{log_path.read_text(errors='replace')[-1500:]}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    per_worker = []
    for name in names:
        seconds = done[name] - started
        at, from_seq = first.get(name, (done[name], head))
        # steady rate: from its first commit to the head (start-up and the first step left out)
        steady = (head - from_seq) / (done[name] - at) if done[name] > at and head > from_seq else 0.0
        per_worker.append({"seconds": seconds, "rate": head / seconds if seconds > 0 else 0.0, "steady": steady})
    seconds = max(p["seconds"] for p in per_worker)
    return {"workers": workers, "events": head, "head": head, "seconds": seconds,
            "steady": min(p["steady"] for p in per_worker), "rate": head / seconds if seconds > 0 else 0.0,
            "per_worker": per_worker, "cpu_us": [1e6 * c / head for c in cpu]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices per run (default 1000)")
    parser.add_argument("--frames", type=int, default=30_000, help="frames per run (default 30000)")
    parser.add_argument("--window", type=int, default=1024,
                        help="frames in flight, like that many cards waiting for their ack (default 1024)")
    parser.add_argument("--batch", type=int, default=256, help="receivers' batch_max_frames (default 256)")
    parser.add_argument("--receivers", default="1,2,3",
                        help="receiver counts to run on PostgreSQL, comma-separated (default 1,2,3)")
    parser.add_argument("--store", metavar="URL",
                        help="a PostgreSQL database to use (default: a throwaway server, fsync on)")
    parser.add_argument("--no-engine", action="store_true", help="skip the engine worker's run")
    parser.add_argument("--timeout", type=float, default=60.0, help="give up a run after this many seconds")
    parser.add_argument("--seed", default="carecard-bench", help="key derivation seed")


def run(args: argparse.Namespace) -> int:
    from carecard.host.commands.errors import CommandError

    try:
        counts = [int(n) for n in args.receivers.split(",") if n.strip()]
    except ValueError:
        raise CommandError(f"--receivers {args.receivers!r}: give counts like 1,2,3") from None
    if not counts or any(not 1 <= n <= 16 for n in counts):
        raise CommandError("--receivers: counts from 1 to 16")
    if args.devices < 1 or args.frames < args.devices or args.window < 1:
        raise CommandError("--devices >= 1, --frames >= --devices and --window >= 1 required")
    if args.store and not is_postgresql_url(args.store):
        raise CommandError(f"--store {args.store!r}: give a postgresql://USER@HOST:PORT/DATABASE URL")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"carecard bench scale: {args.devices} devices, {args.frames} frames per run, window "
          f"{args.window}, receivers with no sinks and no engine (ingest only); {os.cpu_count()} CPUs, "
          f"load average {load}", flush=True)
    cluster = None
    results: list[tuple[str, dict[str, Any]]] = []
    status = 0
    with tempfile.TemporaryDirectory(prefix="carecard-scale-") as tmp:
        workdir = Path(tmp)
        try:
            sqlite = run_receivers(args, "sqlite", 1, 700_000, workdir)
            results.append(("SQLite, 1 receiver", sqlite))
            _print("SQLite, 1 receiver", sqlite, None)
            if args.store:
                store = args.store
            else:
                from carecard.tools.pgcluster import PgCluster

                cluster = PgCluster(fsync=True).start()
                store = cluster.new_database()
            for index, count in enumerate(counts):
                label = f"PostgreSQL, {count} receiver{'s' if count > 1 else ''}"
                figures = run_receivers(args, store, count, 710_000 + 10_000 * index, workdir,
                                        cluster.process.pid if cluster and cluster.process else None)
                results.append((label, figures))
                _print(label, figures, sqlite["rate"])
            size = _bytes_per_frame(store)
            if size:
                print(f"  PostgreSQL storage: {size:,.0f} bytes per stored frame (the event log table "
                      f"with its indexes and TOAST, over {_frames(store):,} frames)")
            if not args.no_engine:
                for workers in (1, 2):
                    engine = engine_speed(args, store, workdir, workers)
                    if engine is None:
                        break
                    _print_engine(engine)
        finally:
            if cluster is not None:
                cluster.stop()
    for label, figures in results:
        if figures["stored"] != figures["acked"] or figures["unacked"] or figures["failed_commits"]:
            print(f"  WARNING: {label}: {figures['acked']} acked, {figures['stored']} stored, "
                  f"{figures['unacked']} never acked, {figures['failed_commits']} commits failed")
            status = 1
    return status


def _print_engine(engine: dict[str, Any]) -> None:
    if engine["workers"] == 1:
        steady = f"{engine['steady']:,.0f} events/s after its first commit, " if engine["steady"] else ""
        print(f"  engine, 1 worker on PostgreSQL: {engine['rate']:,.0f} events/s "
              f"({steady}{engine['events']} events of the log in {engine['seconds']:.2f} s "
              f"from its start; {engine['cpu_us'][0]:.1f} us CPU per event)", flush=True)
        return
    each = "; ".join(f"worker {i + 1}: {w['rate']:,.0f} events/s ({w['steady']:,.0f} after its first commit), "
                     f"{cpu:.1f} us CPU per event"
                     for i, (w, cpu) in enumerate(zip(engine["per_worker"], engine["cpu_us"])))
    print(f"  engine, {engine['workers']} workers on PostgreSQL: {engine['rate']:,.0f} events/s by the "
          f"slower worker ({each}; {engine['workers']} partitions, one each: every partition reads all "
          f"{engine['events']} events of the log and judges its own devices')", flush=True)


def _frames(store: str) -> int:
    import psycopg

    with psycopg.connect(store) as conn:
        return conn.execute("SELECT COUNT(*) FROM event_log").fetchone()[0]


def _bytes_per_frame(store: str) -> float:
    import psycopg

    with psycopg.connect(store) as conn:
        size = conn.execute("SELECT pg_total_relation_size('event_log')").fetchone()[0]
    frames = _frames(store)
    return size / frames if frames else 0.0


def _print(label: str, figures: dict[str, Any], sqlite_rate: float | None) -> None:
    cpu = " + ".join(f"{us:.1f}" for us in figures["cpu_us"])
    if figures.get("db_cpu_us") is not None:
        cpu += f" us, PostgreSQL server {figures['db_cpu_us']:.1f}"
    versus = f", {figures['rate'] / sqlite_rate:.2f} x SQLite" if sqlite_rate else ""
    print(f"  {label}: {figures['rate']:,.0f} frames/s stored{versus} ({figures['acked']} acked in "
          f"{figures['seconds']:.2f} s, {figures['stored']} in the store, {figures['retransmits']} "
          f"resent, {figures['failed_commits']} commits failed, {figures['blocks_moved']} blocks of downlink "
          f"counters moved above another receiver's); receiver CPU {cpu} us per frame, generator "
          f"{figures['generator_us']:.1f} us)",
          flush=True)
