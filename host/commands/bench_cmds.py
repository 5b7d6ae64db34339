"""`carecard bench NAME`: benchmarks that print figures (never timed assertions).

Each benchmark is a module with `add_arguments(parser)` and `run(args) -> int`; it prints its
figures, including the in-run baseline and the ratio to it.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "protocol": "carecard.tools.bench.protocol",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print its figures")
    benches = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        sub = benches.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
