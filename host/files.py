"""Reading an operator's input file (config, provisioning records) or a database, with one clear
error.

Every failure becomes the caller's error type with a one-line message that names the file;
the caller says how the file is called (`where`) and what else a message should carry.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def read_input_file(path: Path, error: type[Exception], *, where: str,
                    directory_note: str = "", missing_note: str = "",
                    max_bytes: int | None = None) -> bytes:
    """The file's bytes, or `error(...)`: missing, a directory, unreadable or too large. The
    notes are added to those two messages (what to do instead)."""
    try:
        if max_bytes is not None:
            size = path.stat().st_size
            if size > max_bytes:
                raise error(f"{where}: {size} bytes is larger than {max_bytes}: split it")
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{where} does not exist{missing_note}") from None
    except IsADirectoryError:
        raise error(f"{where} is a directory{directory_note}") from None
    except OSError as exc:
        raise error(f"{where} cannot be read: {exc.strerror}") from None


def connect_readonly(path: Path, error: type[Exception], *, where: str) -> sqlite3.Connection:
    """A read-only connection to the SQLite database at `path` that works in a read-only folder
    too, or `error(...)` naming `where`. A WAL database needs its -shm file: where that cannot be
    created (a read-only folder or a read-only copy) it is opened as immutable, which is safe
    because nothing can be writing there."""
    try:
        if not path.is_file():
            raise error(f"{where} does not exist" if not path.exists() else f"{where} is not a file")
        if not os.access(path, os.R_OK):
            raise error(f"{where} cannot be read: permission denied")
    except OSError as exc:
        raise error(f"{where} cannot be reached: {exc.strerror}") from None
    uri = path.absolute().as_uri()
    conn = None
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=5.0)
        conn.execute("SELECT COUNT(*) FROM sqlite_schema").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        if conn is not None:
            conn.close()
        if os.access(path.parent, os.W_OK) and "readonly" not in str(exc) and "unable to open" not in str(exc):
            raise error(f"{where} cannot be read: {exc}") from None
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        raise error(f"{where} is not a usable SQLite database: {exc}") from None
    try:
        conn = sqlite3.connect(f"{uri}?immutable=1", uri=True)
        conn.execute("SELECT COUNT(*) FROM sqlite_schema").fetchone()
    except sqlite3.DatabaseError as exc:
        raise error(f"{where} cannot be read: {exc}") from None
    return conn
