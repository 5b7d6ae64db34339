"""Reading an operator's input file (config, provisioning records) with one clear error.

Every failure becomes the caller's error type with a one-line message that names the file;
the caller says how the file is called (`where`) and what else a message should carry.
"""

from __future__ import annotations

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
