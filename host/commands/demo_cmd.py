"""`carecard demo` (what `make demo` runs): a receiver and a virtual card, end to end, in seconds.

It starts the receiver on a free loopback UDP port with its own data folder, provisions a demo
card, queues a `locate_now` command, then runs a card script ON MICROPYTHON (the card's own codec,
firmware/lib/ccproto.py, over the unix port's `socket`) that sends hello, status, a short walk
of positions and a track, a key call and an SOS, retransmits one frame (stored once, acked
twice), tries a forged frame (rejected, never acked), reads every ack, applies the queued
`locate_now` and confirms it with `command_result`. Then it prints what the receiver stored:
frames, duplicates, rejections, the SQLite rows, and the track as GeoJSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from carecard.host.commands.errors import CommandError, CommandFailed

DEMO_MARKER = ".carecard-demo"
DEMO_IMEI_BODY = 86123456789012  # the demo card's IMEI without its check digit
DEMO_NAME = "Grandma Li (demo)"
DEMO_CONTACTS = ("1:+8613800000001:Son Wei", "2:+8613800000002:Son Jun", "3:+8613800000003:Son Ming",
                 "4:+8613900000004:Grid worker Chen")

CARD_SCRIPT = r"""
import socket, binascii, ccproto

DEVICE = %(device)d
KEY = binascii.unhexlify("%(key)s")
T0 = %(t0)d
ADDR = socket.getaddrinfo("127.0.0.1", %(port)d)[0][-1]

enc = ccproto.Encoder(DEVICE, KEY)
dec = ccproto.Decoder(DEVICE, KEY)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
state = {"counter": 0, "applied": [], "todo": []}

def ack_for(frame):
    sock.sendto(frame, ADDR)
    try:
        data, _ = sock.recvfrom(600)
    except OSError:
        return None
    msg = dec.decode(data)
    dec.accept(msg["counter"])
    return msg

def describe(msg):
    if msg is None:
        return "no ack"
    cmds = ", ".join("%%s seq %%d" %% (c["cmd"], c["seq"]) for c in msg["commands"])
    return "ack %%d for #%%d%%s" %% (msg["counter"], msg["acked"], (" carrying " + cmds) if cmds else "")

def send(mtype, fields, note="", offset=0):
    state["counter"] += 1
    n = state["counter"]
    frame = bytes(enc.encode(mtype, fields, n, T0 + n * 30 + offset))
    msg = ack_for(frame)
    print("card: %%-15s #%%-2d %%s-> %%s" %% (mtype, n, note, describe(msg)))
    if msg is not None:
        for cmd in msg["commands"]:
            if cmd["seq"] not in state["applied"] and cmd["seq"] not in [c["seq"] for c in state["todo"]]:
                state["todo"].append(cmd)
    return frame, msg

def position(i, note=""):
    return send("position", {"lat_e7": 249612000 + i * 95, "lon_e7": 1183918000 + i * 140, "alt_m": 42,
                             "hdop_x10": 9, "sats": 9, "fix": "3d", "fix_age_s": 2,
                             "speed_cms": 110, "course_x10": 540, "source": "fresh"}, note)

def apply_commands():
    while state["todo"]:
        cmd = state["todo"].pop(0)
        print("card: applying %%s (seq %%d)" %% (cmd["cmd"], cmd["seq"]))
        state["applied"].append(cmd["seq"])  # applied once, even if later acks repeat it
        if cmd["cmd"] == "locate_now":
            position(0, "(fresh fix for locate_now) ")
            result = "done"
        else:
            result = "unsupported"
        send("command_result", {"seq": cmd["seq"], "result": result}, "(%%s) " %% result)

send("hello", {"fw_major": 0, "fw_minor": 1, "fw_patch": 0, "reset_cause": "power_on",
               "config_version": 1, "modem": "a7670", "downlink_min": 0,
               "motion_sensor": "lis2dh12"})
apply_commands()
status, first = send("status", {"battery_mv": 4020, "battery_pct": 88, "charging": "discharging",
                                "rssi_dbm": -79, "motion_count": 12, "outbox_depth": 0})
again = ack_for(status)
print("card: status again    #%%-2d (retransmission, same bytes) -> %%s" %% (state["counter"], describe(again)))
for i in range(1, 6):
    position(i, "(walk) ")
# the track holds the last minute's points, all before the time of the frame that carries them
track_time = T0 + (state["counter"] + 1) * 30
points = [{"time": track_time - 60 + 10 * k, "lat_e7": 249612600 + 180 * k, "lon_e7": 1183918800 + 210 * k}
          for k in range(6)]
send("track", {"points": points, "hdop_x10": 9, "sats": 9}, "(6 points) ")
send("call", {"key": 1, "number": "+8613800000001", "outcome": "confirmed", "ring_s": 9, "talk_s": 74},
     "(key 1) ")
send("sos", {"trigger": "long_press", "lat_e7": 249614000, "lon_e7": 1183921000, "fix": "3d",
             "fix_age_s": 20, "battery_pct": 86}, "(long press) ")
apply_commands()
forger = ccproto.Encoder(DEVICE, b"\x00" * 16)
sock.settimeout(0.5)
forged = ack_for(bytes(forger.encode("sos", {"trigger": "long_press", "lat_e7": 0, "lon_e7": 0, "fix": "none",
                                             "fix_age_s": 65535, "battery_pct": 255}, 9999, T0)))
print("card: forged sos      (wrong key) -> %%s" %% ("REJECTED, no ack" if forged is None else describe(forged)))
print("card: done, %%d frames, downlink counter %%d" %% (state["counter"], dec.last_counter))
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a receiver and a virtual card (MicroPython) end to end, print what was stored")
    parser.add_argument("--data", metavar="DIR", default="data/demo",
                        help="the demo's data folder, emptied first (default ./data/demo)")
    parser.set_defaults(func=run)


def _prepare(data_dir: Path) -> None:
    """An empty demo folder at `data_dir`: created, or emptied when an earlier demo made it."""
    from carecard.host.paths import DataDir, DataDirError, check_data_dir

    data = DataDir(data_dir, "--data")
    try:
        check_data_dir(data, must_exist=False)
        if data_dir.exists() and any(data_dir.iterdir()):
            if not (data_dir / DEMO_MARKER).exists():
                raise CommandFailed(f"{data_dir} is not empty and is not a demo folder: pass another --data")
            check_data_dir(data, write=True)
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (data_dir / DEMO_MARKER).write_text("created by `carecard demo`; emptied by the next demo run\n")
    except DataDirError as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        raise CommandFailed(f"cannot prepare the demo folder {data_dir}: {exc.strerror}") from None


def carecard_command() -> str:
    """The `carecard` command as a fresh shell finds it: the bare name when PATH reaches this
    installation through a link outside its environment (as `pipx install .` makes); else the
    script beside this interpreter (a venv's bin/, on PATH only while it is activated)."""
    beside = Path(sys.executable).parent / "carecard"
    found = shutil.which("carecard")
    if (found and beside.exists() and Path(found).resolve() == beside.resolve()
            and Path(found).parent.resolve() != beside.parent.resolve()):
        return "carecard"
    return str(beside) if beside.exists() else "carecard"


def run(args: argparse.Namespace) -> int:
    from carecard.host.paths import events_db_path, ingest_db_path
    from carecard.host.receiver.config import Endpoint, ReceiverConfig
    from carecard.host.receiver.downlinks import queue_command
    from carecard.host.receiver.registry import DeviceSpec, add_devices, generate_key, make_imei, parse_contact
    from carecard.host.receiver.service import ReceiverThread
    from carecard.host.storage.sqlite.store import SQLiteStore
    from carecard.tools import micropython

    started = time.monotonic()
    data_dir = Path(args.data)
    _prepare(data_dir)
    device = make_imei(DEMO_IMEI_BODY)
    key = generate_key()
    store = SQLiteStore(ingest_db_path(data_dir), readonly_lookups=False)
    try:
        add_devices(store, data_dir, [DeviceSpec(device, DEMO_NAME, key,
                                                 [parse_contact(c) for c in DEMO_CONTACTS])])
        queue_command(store, device, "locate_now", {})
    finally:
        store.close()
    print(f"demo data folder: {data_dir.resolve()}")
    print(f"provisioned card {device} ({DEMO_NAME}), 4 contacts, key in {data_dir / 'keys.json'}; "
          "queued: locate_now")

    log_file = data_dir / "receiver.log"
    handler = logging.FileHandler(log_file)
    from carecard.host.receiver.logs import LogfmtFormatter

    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    config = ReceiverConfig(udp=[Endpoint("127.0.0.1", 0)], data_dir=data_dir, log_file=log_file)
    try:
        with ReceiverThread(config) as rt:
            receiver = rt.receiver
            assert receiver is not None
            port = receiver.udp_ports[0]
            print(f"receiver listening on UDP 127.0.0.1:{port} (log: {log_file})\n")
            script = CARD_SCRIPT % {"device": device, "key": key.hex(), "port": port, "t0": int(time.time()) - 600}
            try:
                output = micropython.run(script, timeout=40)
            except micropython.MicroPythonError as exc:
                raise CommandError(f"the virtual card failed on MicroPython: {exc}", status=1) from None
            print(output.rstrip())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                delivered = rt.call(receiver.sink_delivered).get("sqlite", 0)
                if delivered >= receiver.metrics.stored_total:
                    break
                time.sleep(0.02)
            snapshot = receiver.metrics.snapshot()
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)

    _summary(data_dir, device, snapshot, ingest_db_path(data_dir), events_db_path(data_dir))
    # Absolute paths, so the hints work pasted into any shell, .venv activated or not.
    carecard = shlex.quote(carecard_command())
    folder = shlex.quote(str(data_dir.resolve()))
    print(f"\ndemo finished in {time.monotonic() - started:.1f} s. Look around:")
    print(f"  {carecard} devices --data {folder}")
    print(f"  {carecard} events --data {folder}")
    print(f"  {carecard} track {device} --data {folder} --format gpx")
    return 0


def _summary(data_dir: Path, device: int, snapshot: dict, ingest_db: Path, events_db: Path) -> None:
    stored = snapshot["stored"]
    print("\nreceiver:")
    print(f"  frames stored: {sum(stored.values())} ({', '.join(f'{k} {v}' for k, v in sorted(stored.items()))})")
    print(f"  duplicates acked again, not stored: {snapshot['duplicates']}")
    print(f"  rejected: {sum(snapshot['rejected'].values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(snapshot['rejected'].items())) or 'none'})")
    print(f"  acks sent: {snapshot['acks_sent']}; commands finished: "
          f"{', '.join(f'{k} {v}' for k, v in snapshot['commands_finished'].items()) or 'none'}")
    with sqlite3.connect(ingest_db) as conn:
        rows = conn.execute("SELECT counter, type, device_time, received_at, length(frame) FROM frames "
                            "WHERE device = ? ORDER BY counter", (device,)).fetchall()
        commands = conn.execute("SELECT seq, cmd, state, attempts, result FROM commands WHERE device = ?",
                                (device,)).fetchall()
        framed, others = conn.execute("SELECT COUNT(device), COUNT(*) - COUNT(device) FROM event_log "
                                      "WHERE seq > 0").fetchone()
    print(f"\nSQLite {ingest_db} view frames ({len(rows)} rows):")
    print("  counter  type            device time           bytes")
    for counter, mtype, device_time, _received, size in rows:
        print(f"  {counter:7d}  {mtype:<14}  {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(device_time))}  {size:5d}")
    print("table commands: " + "; ".join(f"#{seq} {cmd} {state} after {attempts} acks (card: {result})"
                                         for seq, cmd, state, attempts, result in commands))
    sink_rows = {}
    if events_db.exists():
        with sqlite3.connect(events_db) as conn:
            for table in ("events", "positions", "alerts"):
                sink_rows[table] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    from carecard.host.storage.sqlite.eventlog import SQLiteEventLog

    reader = SQLiteEventLog(ingest_db)
    try:
        appended = reader.last_seq()
    finally:
        reader.close()
    print(f"event log: {appended} events appended: {framed} frames' (kept: each is also the frame's "
          f"archive), {others} other events still held, {appended - framed - others} pruned once every "
          f"sink had them; SQLite sink {events_db}: "
          + ", ".join(f"{table} {count}" for table, count in sink_rows.items()))
    try:
        from carecard.host.export import export_track
    except ImportError:
        print("(track export not available in this checkout)")
        return
    text, count = export_track(data_dir, str(device), "geojson")
    path = data_dir / "track.geojson"
    path.write_text(text)
    document = json.loads(text)
    line = next((f for f in document.get("features", []) if f["geometry"]["type"] == "LineString"), None)
    print(f"\ntrack of {device} as GeoJSON ({count} positions, written to {path}):")
    if line is not None:
        coords = line["geometry"]["coordinates"]
        shown = json.dumps({"type": "LineString", "coordinates": coords[:3] + (["..."] if len(coords) > 4 else [])
                            + coords[-1:]}, ensure_ascii=False)
        print(f"  {shown}")
        print(f"  properties: {json.dumps(line.get('properties', {}), ensure_ascii=False)}")
