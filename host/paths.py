"""Where the host receiver keeps its files, and how every command finds them. One definition, used
by `carecard receive`, the sinks, the registry and the query commands.

    DATA/                      the data folder (see resolve_data_dir for how it is found)
      carecard.sqlite          the ingest database (frames, devices, downlinks) and the durable
                               event log with the sinks' cursors (carecard.host.storage.sqlite); WAL mode
      events.sqlite            the SQLite sink's query store (positions, events, alerts): a separate
                               file so queries and the sink never contend with the ingest writer
      webhook-NAME.deadletter.jsonl   events a webhook sink gave up on (see docs/events.md)

The data folder is, first found wins: `--data DIR`; the environment variable CARECARD_DATA; the
`data_dir` of the receiver's configuration file (`--config FILE`, else ./carecard.toml when it
exists); ./data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

DEFAULT_DATA_DIR = Path("data")
DATA_DIR_ENV = "CARECARD_DATA"
# The receiver's configuration file when --config is not given (relative to the working folder).
DEFAULT_CONFIG_PATH = Path("carecard.toml")

INGEST_DB_NAME = "carecard.sqlite"
EVENTS_DB_NAME = "events.sqlite"


class DataDirError(ValueError):
    """The data folder cannot be used as asked; the message names it, where it came from, why,
    and what to do."""


@dataclass(frozen=True)
class DataDir:
    path: Path
    source: str  # how it was found: "--data", "CARECARD_DATA", "config file X", "default"

    def __str__(self) -> str:
        return str(self.path)


def config_path(config: str | Path | None) -> Path | None:
    """The receiver's configuration file to read: `config` when given, else ./carecard.toml when
    it exists, else None (built-in defaults)."""
    if config is not None:
        return Path(config)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def resolve_data_dir(data: str | Path | None, config: str | Path | None = None,
                     environ: Mapping[str, str] | None = None, *,
                     loaded: Any = None) -> DataDir:
    """The data folder (module docstring). Reads the configuration file only when neither --data
    nor CARECARD_DATA decides (`loaded`: that file's ReceiverConfig, when the caller has read it);
    raises the receiver's ConfigError when the file is unusable."""
    if data is not None and str(data) != "":
        return DataDir(Path(data), "--data")
    env = os.environ if environ is None else environ
    if env.get(DATA_DIR_ENV):
        return DataDir(Path(env[DATA_DIR_ENV]), DATA_DIR_ENV)
    path = config_path(config)
    if path is not None:
        if loaded is None:
            from carecard.host.receiver.config import load_config

            loaded = load_config(path)
        # A data_dir from the file is made absolute (relative to the file), never the default.
        if loaded.data_dir != DEFAULT_DATA_DIR:
            return DataDir(loaded.data_dir, f"data_dir in {path}")
    return DataDir(DEFAULT_DATA_DIR, "the default")


def check_data_dir(data: DataDir, *, write: bool = False, must_exist: bool = True) -> None:
    """Raise DataDirError unless `data` is a folder this process can read (and write, if `write`).
    With `must_exist=False` a missing folder passes when its nearest existing parent is writable
    (the caller creates it)."""
    where = f"data folder {data.path} ({data.source})"
    path = data.path
    try:
        is_dir = path.is_dir()
        exists = is_dir or path.exists()
    except OSError as exc:
        raise DataDirError(f"{where} cannot be reached: {exc.strerror}") from None
    if exists and not is_dir:
        raise DataDirError(f"{where} is not a folder: give a folder with --data")
    if not exists:
        if must_exist:
            raise DataDirError(f"{where} does not exist: pass --data DIR (the receiver's data "
                               f"folder) or set {DATA_DIR_ENV}")
        parent = path.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise DataDirError(f"{where} cannot be created: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DataDirError(f"{where} cannot be created: {parent} is read-only for this user")
        return
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataDirError(f"{where} cannot be read: permission denied (run as the user that "
                           "owns it)")
    if write and not os.access(path, os.W_OK):
        raise DataDirError(f"{where} is read-only: this command writes there (run as the user "
                           "that owns it, or use a writable copy)")


def ingest_db_path(data_dir: Path | str) -> Path:
    """The ingest database, which also holds the event log and the sink cursors."""
    return Path(data_dir) / INGEST_DB_NAME


def events_db_path(data_dir: Path | str) -> Path:
    """The SQLite sink's query store, read by `carecard track` and `carecard events`."""
    return Path(data_dir) / EVENTS_DB_NAME


def dead_letter_path(data_dir: Path | str, sink_name: str) -> Path:
    """Default dead-letter file of a webhook sink."""
    return Path(data_dir) / f"{sink_name}.deadletter.jsonl"
