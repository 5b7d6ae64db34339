"""A lock file held by one process at a time (flock), with the holder's pid written in it for
the messages of those who find it taken: the receiver's data folder and an engine's lease on
SQLite use it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def try_lock(path: Path) -> int | None:
    """Take `path`'s lock: the descriptor that holds it (our pid written in the file), or None
    when another process holds it. Raises OSError when the file cannot be opened or created."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def holder(path: Path) -> str:
    """The pid written in a lock file ("" when unreadable or empty)."""
    try:
        return path.read_text(errors="replace").strip()[:32]
    except OSError:
        return ""


def release(fd: int) -> None:
    """Let go of a lock try_lock took."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
