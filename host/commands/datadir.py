"""The data-folder options every command that reads or writes the receiver's data shares:
`--data DIR` and `--config FILE` (carecard.host.paths.resolve_data_dir says which wins), and the
lookup of a card by IMEI or by the elder's name."""

from __future__ import annotations

import argparse
import sqlite3

from carecard.host.commands.errors import CommandError, CommandFailed
from carecard.host.files import connect_readonly
from carecard.host.paths import (
    DATA_DIR_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_DATA_DIR,
    DataDir,
    DataDirError,
    check_data_dir,
    ingest_db_path,
    resolve_data_dir,
)

DATA_HELP = (f"data folder (default: ${DATA_DIR_ENV}, else data_dir of the config file, "
             f"else ./{DEFAULT_DATA_DIR})")
CONFIG_HELP = (f"the receiver's TOML configuration, read for its data_dir (default "
               f"./{DEFAULT_CONFIG_PATH} when it exists)")


def add_data_options(parser: argparse.ArgumentParser, *, top: bool = True) -> None:
    """--data and --config. On a sub-action's parser (`top=False`) they default to what the
    parent parser set, so `carecard devices --data D add ...` and `... add --data D` both work."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--data", metavar="DIR", default=default, help=DATA_HELP)
    parser.add_argument("--config", metavar="FILE", default=default, help=CONFIG_HELP)


def data_dir_of(args: argparse.Namespace, *, write: bool = False, must_exist: bool = True) -> DataDir:
    """The data folder the options name, checked (paths.check_data_dir); one-line errors."""
    from carecard.host.receiver.config import ConfigError

    try:
        data = resolve_data_dir(getattr(args, "data", None), getattr(args, "config", None))
        check_data_dir(data, write=write, must_exist=must_exist)
    except (ConfigError, DataDirError) as exc:
        raise CommandError(str(exc), status=1) from None
    return data


def open_ingest_readonly(data: DataDir) -> sqlite3.Connection:
    """The ingest database (devices, commands, frames) opened for reading only."""
    path = ingest_db_path(data.path)
    try:
        exists = path.exists()
    except OSError as exc:
        raise CommandError(f"{path} cannot be reached: {exc.strerror}", status=1) from None
    if not exists:
        raise CommandError(f"no database in {data.path} ({data.source}; {path.name} missing): add "
                           "a device first or pass the right --data", status=1)
    return connect_readonly(path, CommandFailed, where=f"database {path}")


def resolve_device(conn: sqlite3.Connection, text: str) -> int:
    """An IMEI, or the exact name of one registered device (the ingest database's devices)."""
    from carecard.host.storage.sqlite.store import load_devices

    try:
        devices = load_devices(conn)
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):  # no registry tables yet: no names either
            raise CommandError(f"cannot read the device registry: {exc}", status=1) from None
        devices = {}
    except sqlite3.Error as exc:
        raise CommandError(f"cannot read the device registry: {exc}", status=1) from None
    value = text.strip()
    if value.isdigit() and value.isascii():
        device = int(value)
        if device not in devices or not devices[device].name:
            raise CommandError(f"device {value} is not registered (carecard devices add)", status=1)
        return device
    matches = [d for d, record in devices.items() if record.name == value]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CommandError(f"{len(matches)} devices are named {value!r}: give the IMEI", status=1)
    raise CommandError(f"no device named {value!r}: give the IMEI or a registered name", status=1)
