"""`carecard bench NAME`: benchmarks that print figures (never timed assertions).

Each benchmark is a module with `add_arguments(parser)` and `run(args) -> int`; it prints its
figures, including the in-run baseline and the ratio to it.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "protocol": "carecard.tools.bench.protocol",
    "at": "carecard.tools.bench.at",
    "nmea": "carecard.tools.bench.nmea",
    "receive": "carecard.tools.bench.receive",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="run a benchmark and print its figures",
        description="Benchmarks: " + ", ".join(sorted(BENCHMARKS)) + ". "
                    "`carecard bench NAME --help` shows a benchmark's options.")
    parser.add_argument("bench", metavar="NAME", nargs="?", help="one of " + ", ".join(sorted(BENCHMARKS)))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carecard.host.cli import CommandError, OneLineParser

    names = ", ".join(sorted(BENCHMARKS))
    if args.bench is None:
        raise CommandError(f"give a benchmark name: {names} (`carecard bench NAME --help` shows "
                           "its options)")
    if args.bench not in BENCHMARKS:
        raise CommandError(f"no benchmark named {args.bench!r}: the benchmarks are {names}")
    # Imported only when run, so one benchmark's dependencies never break the rest of the CLI.
    module = importlib.import_module(BENCHMARKS[args.bench])
    parser = OneLineParser(prog=f"carecard bench {args.bench}", description=module.__doc__)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.options)) or 0)
