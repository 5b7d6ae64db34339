"""What every subcommand shares with the entry point: the exit-status convention, the typed
user-facing errors that `carecard.host.cli.main` turns into one line, and the one-line parser.
Subcommand modules import these from here, so no command module imports the entry point."""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STATUS_HELP = """\
exit status:
  0  done
  1  failed: a file or folder is missing, unreadable, read-only or damaged; input was rejected;
     nothing was found; the receiver could not start
  2  usage: an unknown command or option, a missing or malformed argument, a value out of its
     range

Errors are one line on stderr. `carecard COMMAND --help` describes a command.
"""


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2 (usage; or `status`)."""

    def __init__(self, message: str, status: int = EXIT_USAGE):
        super().__init__(message)
        self.status = status


class CommandFailed(CommandError):
    """A user-facing error of a command that ran and failed: exit status 1."""

    def __init__(self, message: str):
        super().__init__(message, EXIT_FAILED)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the command and where its help is, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")
