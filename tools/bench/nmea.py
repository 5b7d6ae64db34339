"""NMEA parser speed and heap on the MicroPython unix port (firmware/lib/nmea.py).

Speed: NMEA sentences per second fully parsed into fix epochs by the card's parser, over the
largest capture in ../shared/data/nmea/ (the L76K's 5 Hz multi-GNSS output) held in memory and
fed in UART-sized chunks; in the same interpreter and run, a baseline that only frames lines and
checks their checksums (readline + XOR loop, no fields, no epochs); the ratio of the two rates.
Target: >= 50,000 sentences/s here. Alternating rounds; the median is reported.

Heap: the smallest `-X heapsize` at which the parser streams that capture from a file in 64-byte
reads (a card's UART buffer) with every fix drained. Target: 16 KB. Measured three times: with
nmea.mpy (and civil.mpy, which it imports) precompiled by mpy-cross in simulated flash (a ROMFS
image, run in place: how a card ships its libraries), the same .mpy files loaded into RAM (from a
read-write filesystem), and nmea.py imported from source (the on-device compiler alone needs
several times the parser's heap).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from carecard.host.commands.errors import CommandError
from carecard.tools import micropython
from carecard.tools.bench import heap_rows, on_both_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_NMEA = REPO_ROOT.parent / "shared" / "data" / "nmea"

_SPEED = """
import time
from nmea import NMEAParser
with open(%(path)r, "rb") as fh:
    data = fh.read()
CHUNK = %(chunk)d
mv = memoryview(data)
chunks = [bytes(mv[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]

def parse():
    p = NMEAParser(0)
    nxt = p.next_event
    fixes = 0
    for c in chunks:
        p.receive_data(c)
        while nxt() is not None:
            fixes += 1
    p.flush()
    while nxt() is not None:
        fixes += 1
    return p.sentences, fixes

def baseline():
    # bare line framing + checksum: find '$' and '\\n', XOR the body, compare with the hex
    n = 0
    pending = b""
    for c in chunks:
        if pending:
            c = pending + c
            pending = b""
        i = 0
        ln = len(c)
        while i < ln:
            nl = c.find(b"\\n", i)
            if nl < 0:
                pending = c[i:]
                break
            d = c.find(b"$", i, nl)
            if d >= 0:
                e = nl
                while e > d and c[e - 1] <= 32:
                    e -= 1
                star = e - 3
                if star > d and c[star] == 42:
                    x = 0
                    k = d + 1
                    while k < star:
                        x ^= c[k]
                        k += 1
                    if x == int(c[star + 1:e], 16):
                        n += 1
            i = nl + 1
    return n

for r in range(%(rounds)d):
    for name, fn in (("parser", parse), ("baseline", baseline)):
        t0 = time.ticks_us()
        res = fn()
        dt = time.ticks_diff(time.ticks_us(), t0)
        print(name, dt, res[0] if isinstance(res, tuple) else res,
              res[1] if isinstance(res, tuple) else 0)
"""

_HEAP = """
from nmea import NMEAParser
p = NMEAParser(0)
buf = bytearray(64)
fixes = 0
with open(%(path)r, "rb") as fh:
    while True:
        n = fh.readinto(buf)
        if not n:
            break
        p.receive_data(buf if n == 64 else bytes(buf[:n]))
        while p.next_event() is not None:
            fixes += 1
p.flush()
while p.next_event() is not None:
    fixes += 1
assert fixes == p.epochs and fixes > 0
print(p.sentences, fixes)
"""


def largest_capture() -> Path:
    logs = [p for p in SHARED_NMEA.glob("*") if p.suffix in (".log", ".nmea", ".txt")]
    if not logs:
        raise CommandError(f"no NMEA captures found in {SHARED_NMEA} (the shared data folder "
                           "must sit beside the project checkout)")
    return max(logs, key=lambda p: p.stat().st_size)


def speed(path: Path, rounds: int = 5, chunk: int = 256) -> dict[str, float]:
    out = micropython.run(_SPEED % {"path": str(path), "rounds": rounds, "chunk": chunk},
                          timeout=600)
    times: dict[str, list[int]] = {"parser": [], "baseline": []}
    counts: dict[str, int] = {}
    fixes = 0
    for line in out.splitlines():
        name, dt, n, f = line.split()
        times[name].append(int(dt))
        counts[name] = int(n)
        if name == "parser":
            fixes = int(f)
    parser_rate = counts["parser"] * 1e6 / statistics.median(times["parser"])
    baseline_rate = counts["baseline"] * 1e6 / statistics.median(times["baseline"])
    return {
        "sentences": counts["parser"],
        "baseline_sentences": counts["baseline"],
        "fixes": fixes,
        "parser_rate": parser_rate,
        "baseline_rate": baseline_rate,
        "ratio": baseline_rate / parser_rate,
    }


# the modules of the heap workload, as they would sit in a card's ROMFS
_ROM_MODULES = ("nmea", "civil")


def heap(path: Path, *, precompiled: bool, rom: Path | None = None) -> int:
    """Smallest heap for the streaming workload, robustly: every size from the figure to 1 KB
    above it (in 128-byte steps) completes (see `smallest_heap(settle=...)`).

    precompiled=False imports nmea.py from source (the MicroPython compiler then needs most of
    the heap); True imports nmea.mpy built by mpy-cross, as a card should carry its libraries:
    from a read-write filesystem into RAM, or with `rom` (a scratch folder) from simulated flash,
    run in place."""
    code = _HEAP % {"path": str(path)}
    if not precompiled:
        return _robust(code)
    image = micropython.card_image(compiled=True)
    if rom is not None:
        micropython.flash_folder(image, _ROM_MODULES, rom)
    expected = "/rom/nmea.mpy" if rom is not None else ".mpy"
    micropython.run(f"import nmea\nassert nmea.__file__.endswith({expected!r}), nmea.__file__\n",
                    image=image, rom=rom)
    return _robust(code, image, rom)


def _robust(code: str, image: Path | None = None, rom: Path | None = None) -> int:
    return micropython.smallest_heap(code, low=2048, high=256 * 1024, step=128, image=image,
                                     settle=1024, rom=rom)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--chunk", type=int, default=256, help="bytes per receive_data() call")
    parser.add_argument("--capture", type=Path, default=None,
                        help="capture to use (default: the largest in shared/data/nmea)")


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.chunk < 1:
        raise CommandError("--rounds and --chunk must be positive")
    path = args.capture or largest_capture()
    if not path.is_file():
        raise CommandError(f"{path}: {'is a directory, not a' if path.is_dir() else 'no such'} "
                           "capture file", status=1)
    s = speed(path, args.rounds, args.chunk)
    print(f"capture: {path.name} ({path.stat().st_size} bytes), {s['sentences']} checksum-valid "
          f"sentences, {s['fixes']} fix epochs per pass, {args.chunk}-byte chunks, "
          f"median of {args.rounds} rounds, MicroPython unix port ({micropython.current().name})")
    print(f"parser (sentences -> fixes):  {s['parser_rate']:10,.0f} sentences/s  "
          f"(target >= 50,000)")
    print(f"baseline (line + checksum):   {s['baseline_rate']:10,.0f} sentences/s")
    print(f"ratio: the parser takes {s['ratio']:.2f}x the time of the bare checksum loop")

    def heaps() -> list[int]:
        with tempfile.TemporaryDirectory(prefix="carecard-bench-nmea-") as tmp:
            h_rom = heap(path, precompiled=True, rom=Path(tmp) / "rom")
        return [h_rom, heap(path, precompiled=True), heap(path, precompiled=False)]

    measured = list(on_both_ports(heaps))
    ports = [port for port, _ in measured]
    labels = ["nmea.mpy in flash (ROMFS, run in place: as a card ships it)",
              "nmea.mpy loaded into RAM (read-write filesystem)",
              "nmea.py from source (compiled on the device: the parse tree)"]
    print(heap_rows(f"smallest heap in bytes streaming {path.name} (64-byte reads, every fix "
                    "drained; target 16 KB on the card, whose figures are the 32-bit port's):",
                    [(label, [figures[i] for _, figures in measured]) for i, label in enumerate(labels)],
                    ports))
    card = measured[-1][1][0]
    print(f"  target (16384 bytes) {'met' if card <= 16384 else 'NOT met'} on the card's 32-bit port "
          f"as a card ships the parser ({card} bytes, {card / 1024:.2f} KB)")
    return 0
