"""A simulated day of the card, and the smallest heap it runs in.

The card's firmware image as it ships (firmware/main.py: cardloop.CardLoop driving
cardapp.CardApp) runs on the virtual card (carecard.tools.vcard.runner: the board the virtual
card runs, tools/vcard/mpy/simboard.py, with the simulated A7670 and the simulated L76K) for 24
hours of virtual time, against a receiver on 127.0.0.1 that acks every frame
(carecard.tools.vcard.loopback). The day: at home indoors (held positions while the card lies
still), two half-hour walks to the market with motion interrupts (moving mode, tracks), a call
to the eldest son every two hours in the daytime (he confirms with a key), a check-in prompt
answered, a "定位" SMS from the second son, an SOS long press (the cascade reaches the eldest
son), a call in from the grid worker (answered by itself), a status an hour. The world's script
lives in the runner, not on the card: the card's heap holds the firmware only.

Printed: the day's counts (board requests, frames by kind, resets) and the wall time, then the
smallest `-X heapsize` that completes the day (bisection of whole days): on the 64-bit and the
32-bit port with the image's .mpy files loaded into RAM, on the 32-bit port with them in a ROMFS
partition (simulated flash at /rom: the bytecode runs in place), and on a 32-bit port with the card's
modules frozen into the firmware (built once from ../shared/vendor with carecard.tools.port32,
cached): the way a card ships them, and the figure to hold against the 64 KB target.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from carecard.host.commands.errors import CommandError
from carecard.tools import micropython, port32
from carecard.tools.cardimage import build_card_image
from carecard.tools.vcard.gnss_sim import GnssSim, Track, TrackPoint
from carecard.tools.vcard.loopback import LoopbackReceiver
from carecard.tools.vcard.modem_sim import ANSWERS, CONFIRMS, NO_ANSWER, Callee, ModemSim
from carecard.tools.vcard.runner import RunnerError, VirtualCard, World

TARGET = 64 * 1024
HOUR = 3_600_000
MINUTE = 60_000
DEVICE = 861234567890123
KEY = bytes(range(16))
HOME = (24.905321, 118.587112)
MARKET = (24.910870, 118.592410)   # about 800 m away
WALKS = (9, 16)                    # hours of the day: half an hour there and back
CONTACTS = {1: ("大儿子", "+8613911112222", Callee(CONFIRMS, ring_s=8)),
            2: ("二儿子", "+8613922223333", Callee(ANSWERS, ring_s=10)),
            3: ("小儿子", "+8613933334444", Callee(NO_ANSWER)),
            4: ("网格员", "+8613944445555", Callee(CONFIRMS, ring_s=6))}


@dataclass
class DayRun:
    hours: int
    completed: bool
    wall_s: float = 0.0
    requests: int = 0
    resets: list[str] = field(default_factory=list)
    frames: Counter[str] = field(default_factory=Counter)
    fresh_fixes: int = 0
    held: int = 0
    no_fix: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    decode_errors: int = 0
    failure: str = ""


def track(hours: int) -> Track:
    points = [TrackPoint(0, *HOME, "indoor")]
    for hour in WALKS:
        if hour >= hours:
            break
        t = hour * 3600
        points += [TrackPoint(t, *HOME, "outdoor"), TrackPoint(t + 900, *MARKET, "outdoor"),
                   TrackPoint(t + 1800, *HOME, "outdoor"), TrackPoint(t + 1801, *HOME, "indoor")]
    return Track(points)


def script(card: VirtualCard, receiver: LoopbackReceiver, modem: ModemSim, hours: int) -> None:
    """The world's events of the day, scheduled on the runner."""
    end = hours * HOUR
    for hour in WALKS:
        for ms in range(hour * HOUR, hour * HOUR + 30 * MINUTE, 10_000):
            if ms < end:
                card.motion(ms)
    for hour in range(8, 20, 2):
        if hour * HOUR < end:
            card.press(hour * HOUR + 10 * MINUTE, 0)          # calls the eldest son
    events = [
        (10 * HOUR, lambda: receiver.commands.append(
            {"seq": 1, "cmd": "checkin_prompt", "prompt_id": 1, "timeout_s": 900})),
        (12 * HOUR, lambda: modem.incoming_sms(CONTACTS[2][1], "定位", card.now)),
        (19 * HOUR, lambda: modem.incoming_call(CONTACTS[4][1], ring_for_s=30, talk_s=60,
                                                now_ms=card.now)),
    ]
    for when, action in events:
        if when < end:
            card.at(when, action)
    if 10 * HOUR + 15 * MINUTE < end:
        card.press(10 * HOUR + 15 * MINUTE, 3)               # answers the check-in prompt
    if 15 * HOUR + 30 * MINUTE < end:
        card.press(15 * HOUR + 30 * MINUTE, 1, hold_ms=3000)  # SOS


def flash_folder(folder: Path, port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"device_id": DEVICE, "device_key": KEY.hex(), "server_host": "127.0.0.1",
              "server_port": port, "owner_name": "王秀英",
              "contacts": [{"key": k, "name": n, "number": num} for k, (n, num, _) in CONTACTS.items()]}
    (folder / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return folder


def play(image: Path, hours: int, *, heapsize: int | None = None, rom: bool = False) -> DayRun:
    """One day on the selected interpreter (micropython.using). completed: the card ran to the
    end without a reset (a MemoryError ends the process: the run stops there). rom: the image's
    libraries in simulated flash (ROMFS), else loaded into RAM."""
    result = DayRun(hours, completed=False)
    with tempfile.TemporaryDirectory(prefix="carecard-day-") as tmp, \
            LoopbackReceiver(DEVICE, KEY) as receiver:
        modem = ModemSim(seed=11, callees={num: callee for _, num, callee in CONTACTS.values()})
        world = World(modem=modem, gnss=GnssSim(track(hours), seed=11))
        card = VirtualCard(image, flash_folder(Path(tmp) / "flash", receiver.port), world,
                           heapsize=heapsize, hang_s=60.0, reply_wait_s=0.2, rom=rom)
        card.max_crashes = 0
        started = time.perf_counter()
        try:
            with card:
                script(card, receiver, modem, hours)
                run = card.run(hours * HOUR)
        except RunnerError as exc:
            result.failure = str(exc)
            return result
        result.wall_s = time.perf_counter() - started
        result.requests = run.requests
        result.resets = [cause for _, cause in run.resets]
        result.completed = card.now >= hours * HOUR and result.resets == ["power_on"]
        result.decode_errors = len(receiver.errors)
        for frame in receiver.frames:
            result.frames[frame["type"]] += 1
            if frame["type"] == "position":
                if frame["fix"] == "none":
                    result.no_fix += 1
                elif frame["source"] == "held":
                    result.held += 1
                else:
                    result.fresh_fixes += 1
            elif frame["type"] == "call":
                result.calls[frame["outcome"]] += 1
    return result


def smallest_heap(image: Path, hours: int, *, low: int = 16 * 1024, high: int = 512 * 1024,
                  step: int = 1024, rom: bool = False) -> int:
    """The smallest -X heapsize (to `step` bytes) with which the day completes."""
    if not play(image, hours, heapsize=high, rom=rom).completed:
        raise CommandError(f"the simulated day does not complete even with a {high:,}-byte heap")
    while high - low > step:
        mid = (low + high) // 2
        if play(image, hours, heapsize=mid, rom=rom).completed:
            high = mid
        else:
            low = mid
    return high


def frozen_port(progress: port32.Progress) -> micropython.Interpreter:
    """The 32-bit port with the card image's modules frozen in (built once per state of the
    firmware; cached)."""
    with tempfile.TemporaryDirectory(prefix="carecard-freeze-") as tmp:
        source = build_card_image(Path(tmp) / "image", compiled=False)
        modules = Path(tmp) / "modules"
        shutil.copytree(source / "lib", modules, ignore=shutil.ignore_patterns("hwjson"))
        return micropython.Interpreter(32, str(port32.ensure_frozen(modules, progress)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hours", type=int, default=24, help="simulated hours (default 24)")


def summary(day: DayRun) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(day.frames.items()))
    calls = ", ".join(f"{n} {k}" for k, n in sorted(day.calls.items()))
    return (f"{day.hours} h in {day.wall_s:.1f} s wall time: {day.requests:,} board requests; "
            f"frames received: {kinds}; positions: {day.fresh_fixes} fresh, {day.held} held, "
            f"{day.no_fix} without a fix; calls: {calls}; resets: {', '.join(day.resets)}")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.hours <= 24 * 7:
        raise CommandError("--hours must be 1 to 168")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    progress(f"carecard bench day: {args.hours} simulated hours of the card's firmware on the "
             "virtual card, then the smallest heap (a bisection of whole days)")
    image = micropython.card_image(compiled=True)
    try:
        ports = micropython.interpreters(progress=progress)
        frozen = frozen_port(progress)
    except port32.Port32Error as exc:
        raise CommandError(f"the 32-bit MicroPython port cannot be built: {exc}") from None
    rows: list[tuple[str, int]] = []
    # (port, libraries in ROMFS): each port with .mpy files in RAM, the 32-bit port with them in
    # a ROMFS partition (run in place from flash), the 32-bit port with them frozen in
    runs = [(port, False) for port in ports] + [(p, True) for p in ports if p.bits == 32] + [(frozen, False)]
    for port, rom in runs:
        how = ("frozen into the firmware" if port is frozen else
               ".mpy files in a ROMFS partition (flash)" if rom else ".mpy files loaded into RAM")
        with micropython.using(port):
            day = play(image, args.hours, rom=rom)
            if not day.completed:
                raise CommandError(f"the simulated day failed on the {port.name} port ({how}): "
                                   f"{day.failure or day.resets}")
            print(f"simulated day, {port.name} port, {how}: {summary(day)}", flush=True)
            rows.append((f"{port.name} port, {how}", smallest_heap(image, args.hours, rom=rom)))
    print(f"card runtime smallest heap in bytes (a simulated day of {args.hours} h):")
    width = max(len(label) for label, _ in rows) + 2
    for label, size in rows:
        print(f"  {label:<{width}}{size:>10,}")
    card = rows[-1][1]
    verdict = "within" if card <= TARGET else "OVER"
    print(f"card heap (32-bit, modules frozen as a card ships them): {card:,} bytes, {verdict} "
          f"the {TARGET:,}-byte target")
    return 0
