"""`carecard bench NAME`: benchmarks that print figures (never timed assertions).

Each benchmark is a module with `add_arguments(parser)` and `run(args) -> int`; it prints its
figures, including the in-run baseline and the ratio to it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
from typing import Any

BENCHMARKS = {
    "protocol": "carecard.tools.bench.protocol",
    "at": "carecard.tools.bench.at",
    "nmea": "carecard.tools.bench.nmea",
    "receive": "carecard.tools.bench.receive",
    "engine": "carecard.tools.bench.engine",
    "day": "carecard.tools.bench.day",
    "scale": "carecard.tools.bench.scale",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="run a benchmark and print its figures",
        description="Benchmarks: " + ", ".join(sorted(BENCHMARKS)) + ". "
                    "`carecard bench NAME --help` shows a benchmark's options.")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object: each figure line's name, text and numbers")
    parser.add_argument("bench", metavar="NAME", nargs="?", help="one of " + ", ".join(sorted(BENCHMARKS)))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carecard.host.commands.errors import CommandError, OneLineParser

    names = ", ".join(sorted(BENCHMARKS))
    if args.bench is None:
        raise CommandError(f"give a benchmark name: {names} (`carecard bench NAME --help` shows "
                           "its options)")
    if args.bench not in BENCHMARKS:
        raise CommandError(f"no benchmark named {args.bench!r}: the benchmarks are {names}")
    options = list(args.options)
    as_json = args.json or "--json" in options
    options = [option for option in options if option != "--json"]
    # Imported only when run, so one benchmark's dependencies never break the rest of the CLI.
    module = importlib.import_module(BENCHMARKS[args.bench])
    parser = OneLineParser(prog=f"carecard bench {args.bench}", description=module.__doc__)
    module.add_arguments(parser)
    parsed = parser.parse_args(options)
    if not as_json:
        return int(module.run(parsed) or 0)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        status = int(module.run(parsed) or 0)
    print(json.dumps({"bench": args.bench, "options": options, "status": status,
                      "figures": [figure(line) for line in captured.getvalue().splitlines()
                                  if line.strip()]}, ensure_ascii=False))
    return status


_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def figure(line: str) -> dict[str, Any]:
    """One printed figure line as data: `name: text` (name None when the line has no colon) and
    the numbers in the text, in order (thousands separators dropped)."""
    text = line.strip()
    name, sep, rest = text.partition(": ")
    if not sep:
        name, rest = "", text
    numbers = [float(n.replace(",", "")) for n in _NUMBER.findall(rest)]
    return {"name": name or None, "text": rest,
            "numbers": [int(n) if n.is_integer() else n for n in numbers]}
