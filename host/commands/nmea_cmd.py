"""`carecard nmea FILE`: run the card's own NMEA parser (firmware/lib/nmea.py) on MicroPython.

The capture is fed to the parser on the MicroPython unix port in UART-sized chunks, exactly as the
card does; one JSON object per fix epoch goes to stdout, a summary line (sentences, bad
checksums, skipped bytes, ...) to stderr. For anyone bringing up a new GNSS module.

`decode_capture()` is the library entry point (used by the CLI, the cross-check tests and the
benchmark): it returns the parser's raw integer fixes and its counters.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carecard.tools import micropython

log = logging.getLogger(__name__)

# Fields of a raw Fix as the MicroPython driver prints them (the names of nmea.Fix attributes).
FIX_FIELDS = (
    "time", "ms", "valid", "fix", "lat_e7", "lon_e7", "alt", "hdop", "sats", "speed", "course",
    "quality", "status", "rollover", "sats_in_view",
)
COUNTERS = (
    "sentences", "bad_checksum", "truncated", "too_long", "unknown", "malformed",
    "skipped_bytes", "epochs",
)

# Runs on MicroPython. Feeds the file in `chunk`-byte pieces (a UART driver's read size), prints
# "F [fields]" per fix and "S [counters]" at the end.
_DRIVER = """
import json
from nmea import NMEAParser
p = NMEAParser(%(not_before)s)
FIELDS = %(fields)r
def drain():
    while True:
        e = p.next_event()
        if e is None:
            return
        print("F " + json.dumps([getattr(e, k) for k in FIELDS]))
with open(%(path)r, "rb") as fh:
    buf = bytearray(%(chunk)d)
    while True:
        n = fh.readinto(buf)
        if not n:
            break
        p.receive_data(buf if n == len(buf) else buf[:n])
        drain()
p.flush()
drain()
print("N " + str(p.not_before_days))
print("S " + json.dumps([getattr(p, k) for k in %(counters)r]))
"""


class CaptureError(Exception):
    """The capture cannot be read (missing, a directory, no permission)."""


@dataclass
class Decoded:
    fixes: list[dict[str, Any]]
    counters: dict[str, int]
    not_before_days: int = 0  # the parser's rollover floor (days since 1970-01-01)

    @property
    def not_before(self) -> dt.date:
        return dt.date(1970, 1, 1) + dt.timedelta(days=self.not_before_days)


def decode_capture(path: Path | str, *, not_before_days: int | None = None, chunk: int = 64,
                   heapsize: int | None = None) -> Decoded:
    """Run firmware/lib/nmea.py on MicroPython over the capture at `path`."""
    path = Path(path)
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such file (give the path of an NMEA capture)") from None
    except IsADirectoryError:
        raise CaptureError(f"{path}: is a directory, not an NMEA capture file") from None
    except OSError as exc:
        raise CaptureError(f"{path}: cannot be read ({exc.strerror}); check its permissions") \
            from None
    code = _DRIVER % {
        "not_before": "" if not_before_days is None else int(not_before_days),
        "fields": FIX_FIELDS,
        "counters": COUNTERS,
        "path": str(path.resolve()),
        "chunk": chunk,
    }
    out = micropython.run(code, heapsize=heapsize)
    fixes: list[dict[str, Any]] = []
    counters: dict[str, int] = {}
    not_before = 0
    for line in out.splitlines():
        if line.startswith("F "):
            fixes.append(dict(zip(FIX_FIELDS, json.loads(line[2:]))))
        elif line.startswith("N "):
            not_before = int(line[2:])
        elif line.startswith("S "):
            counters = dict(zip(COUNTERS, json.loads(line[2:])))
    if not counters:
        raise micropython.MicroPythonError(f"parser driver printed no summary:\n{out[-2000:]}")
    log.debug("decoded %s: %d fixes, %s", path, len(fixes), counters)
    return Decoded(fixes, counters, not_before)


def iso_time(fix: dict[str, Any]) -> str | None:
    """ISO 8601 UTC ('Z') of a raw fix; milliseconds shown when not zero."""
    if fix["time"] is None:
        return None
    stamp = dt.datetime.fromtimestamp(fix["time"], dt.timezone.utc)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    if fix["ms"]:
        text += f".{fix['ms']:03d}"
    return text + "Z"


def fix_record(fix: dict[str, Any]) -> dict[str, Any]:
    """The CLI's JSON object for one epoch (degrees, metres, m/s)."""
    valid = bool(fix["valid"])
    return {
        "time": iso_time(fix),
        "valid": valid,
        "lat": fix["lat_e7"] / 1e7 if valid and fix["lat_e7"] is not None else None,
        "lon": fix["lon_e7"] / 1e7 if valid and fix["lon_e7"] is not None else None,
        "alt": fix["alt"],
        "hdop": fix["hdop"] / 10 if fix["hdop"] is not None else None,
        "sats": fix["sats"],
        "fix": fix["fix"],
        "speed": fix["speed"] / 100 if fix["speed"] is not None else None,
        "course": fix["course"] / 10 if fix["course"] is not None else None,
    }


def _date_days(text: str) -> int:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2024-01-01") from None
    return (day - dt.date(1970, 1, 1)).days


# A UART driver's read buffer on the card is a few hundred bytes; 64 KB is already far more than
# a card's heap holds.
MAX_CHUNK = 65536


def _chunk_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes") from None
    if not 1 <= value <= MAX_CHUNK:
        raise argparse.ArgumentTypeError(f"{value} is out of range 1-{MAX_CHUNK} bytes")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "nmea",
        help="decode an NMEA capture with the card's own parser (on MicroPython)",
        description="Run firmware/lib/nmea.py on the MicroPython unix port over FILE; print one "
        "JSON object per fix epoch, then a summary line on stderr.",
    )
    parser.add_argument("file", metavar="FILE", help="NMEA capture (raw receiver output)")
    parser.add_argument(
        "--not-before", type=_date_days, default=None, metavar="YYYY-MM-DD",
        help="dates before this are GPS week rollovers and move forward by 1024 weeks "
        "(default: the card's own floor, 2024-01-01); give an old date to decode old logs",
    )
    parser.add_argument("--chunk", type=_chunk_size, default=64,
                        help=f"bytes per receive_data() call, like a UART read, 1-{MAX_CHUNK} "
                             "(default 64)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carecard.host.commands.errors import CommandFailed

    try:
        decoded = decode_capture(args.file, not_before_days=args.not_before, chunk=args.chunk)
    except (CaptureError, micropython.MicroPythonNotFound) as exc:
        raise CommandFailed(str(exc)) from None
    except micropython.MicroPythonError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("---")]
        reason = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "")
        raise CommandFailed(f"{args.file}: the parser failed on MicroPython: {reason.strip()}") from None
    c = decoded.counters
    if not c["sentences"] and not decoded.fixes:
        raise CommandFailed(f"{args.file}: no NMEA sentence found ({c['skipped_bytes']} bytes "
                            f"skipped, {c['bad_checksum']} bad checksums, {c['truncated']} "
                            "truncated): is it a GNSS receiver's raw output?")
    out = sys.stdout
    for fix in decoded.fixes:
        out.write(json.dumps(fix_record(fix)) + "\n")
    out.flush()
    rollovers = sum(1 for f in decoded.fixes if f["rollover"])
    print(
        f"{args.file}: {c['epochs']} epochs, {c['sentences']} sentences, "
        f"{c['bad_checksum']} bad checksums, {c['skipped_bytes']} skipped bytes, "
        f"{c['truncated']} truncated, {c['too_long']} too long, {c['malformed']} malformed, "
        f"{c['unknown']} not decoded, {rollovers} week-rollover dates corrected",
        file=sys.stderr,
    )
    if rollovers and args.not_before is None:
        print(f"{args.file}: note: {rollovers} fix dates before the card's floor "
              f"({decoded.not_before.isoformat()}) were taken as GPS week rollovers and moved forward by 1024 "
              "weeks (about 19.6 years); for an older capture give --not-before with a date before "
              "it was recorded", file=sys.stderr)
    return 0
