"""Alert engine: memory per followed device and events per second on one core.

Memory (measured first, in a fresh process): the engine follows N cards (default 1,000,000), each fed a status and a position event
(a stay, a battery state, one wake-up in the heap); the process's resident memory grows by the
figure printed, divided by N (the events themselves are made one at a time and dropped).
Target: 1M devices in under 1 GB.

Speed: a log of schema-1 events (positions with jitter, statuses with and without motion,
occasional SOS, power events) over D devices in received order, fed as `carecard replay` does
(the clock advanced to each event's received_at, wake-ups firing between events: check-in
prompts, escalations, offline), timed over the whole run; the median of the rounds.
Target: >= 100,000 events/s. Baseline in the same run: the loop that only looks at each
event's kind and device (the floor of any consumer of the log).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time
from typing import Any

from carecard.host.commands.errors import CommandError
from carecard.host.engine import Engine, Settings
from carecard.host.events import event_from_message
from carecard.host.timefmt import parse_iso_utc

T0 = 1762185600  # 2025-11-04 00:00 +08:00
BASE = 860000000000000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _position(device: int, counter: int, t: int, rng: random.Random) -> dict[str, Any]:
    return event_from_message({
        "type": "position", "direction": "uplink", "device": device, "counter": counter, "time": t,
        "clock_synced": True, "lat_e7": 247000000 + rng.randint(-300, 300),
        "lon_e7": 1184000000 + rng.randint(-300, 300), "alt_m": 30, "hdop_x10": rng.randint(8, 40),
        "sats": 8, "fix": "3d", "fix_age_s": 2, "speed_cms": 0, "course_x10": 0, "source": "fresh"}, t + 1.0)


def _status(device: int, counter: int, t: int, motion: int, pct: int = 80,
            charging: str = "discharging") -> dict[str, Any]:
    return event_from_message({
        "type": "status", "direction": "uplink", "device": device, "counter": counter, "time": t,
        "clock_synced": True, "battery_mv": 3900, "battery_pct": pct, "charging": charging,
        "rssi_dbm": -70, "motion_count": motion, "outbox_depth": 0}, t + 1.5)


def memory(devices: int) -> dict[str, float]:
    rng = random.Random(1)
    settings = Settings({"motion_sensor": True})
    gc.collect()
    before = _rss_bytes()
    engine = Engine(settings)
    feed = engine.feed
    for i in range(devices):
        device = BASE + i
        t = T0 + 8 * 3600 + (i % 900)
        feed(_status(device, 1, t, 3))
        feed(_position(device, 2, t + 10, rng))
    gc.collect()
    after = _rss_bytes()
    assert len(engine.devices) == devices
    return {"devices": devices, "bytes": after - before, "per_device": (after - before) / devices,
            "heap_entries": len(engine._heap)}


def make_log(devices: int, events: int, seed: int = 2) -> list[dict[str, Any]]:
    """`events` events over `devices` cards, 15-minute reports, in received order."""
    rng = random.Random(seed)
    counters = [0] * devices
    out: list[dict[str, Any]] = []
    t = T0 + 6 * 3600
    per_tick = max(1, devices)
    while len(out) < events:
        for i in range(per_tick):
            device = BASE + i
            counters[i] += 1
            ts = t + (i * 900) // per_tick
            r = rng.random()
            if r < 0.45:
                out.append(_position(device, counters[i], ts, rng))
            elif r < 0.9:
                out.append(_status(device, counters[i], ts, rng.choice((0, 0, 0, 2, 7))))
            elif r < 0.97:
                out.append(_status(device, counters[i], ts, 0, pct=rng.randint(5, 100),
                                   charging=rng.choice(("discharging", "charging"))))
            elif r < 0.995:
                out.append(event_from_message({
                    "type": "power", "direction": "uplink", "device": device, "counter": counters[i],
                    "time": ts, "clock_synced": True, "event": rng.choice(("low", "charger_connected",
                                                                            "charger_removed")),
                    "battery_mv": 3600, "battery_pct": 15}, ts + 1.0))
            else:
                out.append(event_from_message({
                    "type": "sos", "direction": "uplink", "device": device, "counter": counters[i],
                    "time": ts, "clock_synced": True, "trigger": "long_press", "lat_e7": 0, "lon_e7": 0,
                    "fix": "none", "fix_age_s": 65535, "battery_pct": 50}, ts + 1.0))
            if len(out) >= events:
                break
        t += 900
    return out


def speed(log: list[dict[str, Any]], rounds: int) -> dict[str, float]:
    received = [parse_iso_utc(e["received_at"]) for e in log]
    pairs = list(zip(received, log))
    engine_times, base_times, actions = [], [], 0
    for _ in range(rounds):
        engine = Engine(Settings({"motion_sensor": True}))
        advance, feed = engine.advance, engine.feed
        start = time.perf_counter()
        count = 0
        for rx, event in pairs:
            count += len(advance(rx))
            count += len(feed(event))
        engine_times.append(time.perf_counter() - start)
        actions = count
        start = time.perf_counter()
        seen: dict[str, int] = {}
        for _rx, event in pairs:
            if event["kind"] != "alert":
                seen[event["device"]] = seen.get(event["device"], 0) + 1
        base_times.append(time.perf_counter() - start)
    n = len(log)
    engine_rate = n / statistics.median(engine_times)
    base_rate = n / statistics.median(base_times)
    return {"events": n, "rate": engine_rate, "baseline": base_rate, "ratio": base_rate / engine_rate,
            "actions": actions}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1_000_000, help="devices for the memory figure")
    parser.add_argument("--speed-devices", type=int, default=10_000, help="devices in the speed log")
    parser.add_argument("--events", type=int, default=300_000, help="events in the speed log")
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds (median)")


def run(args: argparse.Namespace) -> int:
    if min(args.devices, args.speed_devices, args.events, args.rounds) < 1:
        raise CommandError("--devices, --speed-devices, --events and --rounds must be positive")
    m = memory(args.devices)
    print(f"memory: {m['devices']:,} devices followed, resident memory +{m['bytes'] / 2**20:,.0f} MiB, "
          f"{m['per_device']:,.0f} bytes per device (target: 1M devices < 1 GB, i.e. < 1,000 bytes each); "
          f"{m['heap_entries']:,} heap entries")
    log = make_log(args.speed_devices, args.events)
    s = speed(log, args.rounds)
    print(f"speed: {s['events']:,} events over {args.speed_devices:,} devices (15-min reports, "
          f"{s['actions']:,} actions), fed with the clock advanced per event, median of {args.rounds} rounds")
    print(f"engine:   {s['rate']:12,.0f} events/s  (target >= 100,000 on one core)")
    print(f"baseline: {s['baseline']:12,.0f} events/s  (only kind and device looked at)")
    print(f"ratio: the engine takes {s['ratio']:.1f}x the time of the baseline loop")
    return 0
