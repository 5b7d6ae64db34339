"""The `carecard` command. Each subcommand lives in its own module with a `register(subparsers)`.

Only this entry point (and the modules' `run` functions it dispatches to) prints or exits; library
code raises typed errors, converted here into one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
]


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2 (or `status`)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carecard",
        description="CareCard host suite: protocol tools, receiver, provisioning, simulation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"carecard {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    # Run through the package module, so `python -m` and the console script share one
    # CommandError class (a `__main__` copy would not match the one the commands raise).
    from carecard.host.cli import main as package_main

    sys.exit(package_main())
