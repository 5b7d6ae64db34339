"""Compiling code generated from the spec at import (the codec's message builders, the host's
event builders): its source is registered with linecache under its name, so a traceback through
it shows the generated line as it would for a file."""

from __future__ import annotations

import linecache
from types import CodeType


def compile_generated(source: str, name: str) -> CodeType:
    """`source` compiled as `<carecard NAME>`, its lines kept in linecache for tracebacks."""
    filename = f"<carecard {name}>"
    # (size, mtime None: never checked against a file, lines, name), as linecache keeps a file
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return compile(source, filename, "exec")
