"""Benchmarks behind `carecard bench NAME`; each prints figures with an in-run baseline.

Heap figures are measured on both MicroPython unix ports and printed side by side: the PyPI port
(64-bit) and the 32-bit build like the card's (carecard.tools.port32), whose figures are the
card's (half-size objects, 31-bit small ints)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

from carecard.host.commands.errors import CommandError
from carecard.tools import micropython, port32

T = TypeVar("T")


def on_both_ports(measure: Callable[[], T]) -> Iterator[tuple[micropython.Interpreter, T]]:
    """(port, measure() run on it) for the 64-bit port, then the card's 32-bit port (built first
    when needed: its progress goes to stderr)."""
    try:
        ports = micropython.interpreters(progress=lambda line: print(line, file=sys.stderr, flush=True))
    except port32.Port32Error as exc:
        raise CommandError(f"the 32-bit MicroPython port cannot be built: {exc}") from None
    for port in ports:
        with micropython.using(port):
            yield port, measure()


def heap_rows(title: str, rows: list[tuple[str, list[int]]], ports: list[micropython.Interpreter]) -> str:
    """A table of heap figures in bytes, one column per port."""
    width = max(len(label) for label, _ in rows) + 2
    head = "".join(f"{port.name + (' (card)' if port.bits == 32 else ''):>16}" for port in ports)
    lines = [title, f"  {'':<{width}}{head}"]
    for label, values in rows:
        lines.append(f"  {label:<{width}}" + "".join(f"{v:>16,}" for v in values))
    return "\n".join(lines)
