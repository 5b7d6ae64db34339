"""The `carecard` command. Each subcommand lives in its own module with a `register(subparsers)`.

Only this entry point (and the modules' `run` functions it dispatches to) prints or exits; library
code raises typed errors, converted here into one line on stderr and a non-zero exit status
(EXIT_STATUS_HELP: 0 done, 1 failed, 2 usage).
"""

from __future__ import annotations

import argparse
import importlib
import sqlite3
import sys

from carecard.host.commands.errors import (
    EXIT_FAILED,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    CommandError,
    OneLineParser,
)

# Each module defines `register(subparsers)`, which adds its subcommand(s) and sets `func` on the
# parser to a callable taking the parsed args and returning an exit status.
COMMAND_MODULES = [
    "carecard.host.commands.protocol_cmds",
    "carecard.host.commands.bench_cmds",
    "carecard.host.commands.nmea_cmd",
    "carecard.host.commands.query_cmds",
    "carecard.host.commands.receive_cmd",
    "carecard.host.commands.devices_cmds",
    "carecard.host.commands.send_cmd",
    "carecard.host.commands.demo_cmd",
    "carecard.host.commands.check_cmd",
    "carecard.host.commands.replay_cmd",
    "carecard.host.commands.flash_cmd",
    "carecard.host.commands.provision_cmd",
    "carecard.host.commands.serve_cmd",
    "carecard.host.commands.alerts_cmd",
    "carecard.host.commands.power_cmd",
    "carecard.host.commands.engine_cmd",
    "carecard.host.commands.sim_cmd",
]


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as package_version

    try:
        return package_version("carecard")
    except PackageNotFoundError:
        return "unknown (not installed: run `make setup`)"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="carecard",
        description="CareCard host suite: the receiver, the device registry and downlink commands,\n"
                    "track and event queries, frame and NMEA tools, a demo with a virtual card,\n"
                    "benchmarks.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"carecard {version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"carecard {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        # A file-system failure no command turned into its own message yet: still one line,
        # naming the file.
        where = f" {exc.filename}" if exc.filename else ""
        print(f"carecard {args.command}:{where} {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except sqlite3.Error as exc:
        print(f"carecard {args.command}: database error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    # Run through the package module, so `python -m` and the console script share one
    # CommandError class (a `__main__` copy would not match the one the commands raise).
    from carecard.host.cli import main as package_main

    sys.exit(package_main())
