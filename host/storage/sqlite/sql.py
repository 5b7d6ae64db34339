"""SQL helpers for the SQLite stores: multi-row INSERTs, a transaction that joins the caller's,
and the identity adapters that spare sqlite3 an adaptation lookup per parameter."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any, Iterator


def _null(_value: None) -> None:
    return None


# Identity adapters for the parameter types sqlite3 binds only after an adaptation lookup: every
# bytes, None or bool parameter otherwise makes CPython 3.11's sqlite3 look up `__adapt__` on its
# PrepareProtocol type, which raises and discards an AttributeError: about 0.4 us a parameter,
# three per stored frame. An adapter found in the registry is called instead (b.__bytes__() is
# b, int(True) is 1, and None stays NULL), so what is stored is unchanged (tests/test_eventlog.py).
# (bytes.__bytes__ rather than bytes: a method call, a third of the cost of calling the type.)
# Process-wide, like every sqlite3 adapter: the connection makers of the stores that write call
# this (idempotent) before they connect.
def register_identity_adapters() -> None:
    sqlite3.register_adapter(bytes, bytes.__bytes__)
    sqlite3.register_adapter(bool, int)
    sqlite3.register_adapter(type(None), _null)


# Rows per multi-row INSERT statement: the largest chunk, then powers of two for the rest, so a
# connection caches at most 8 statement texts per table. (128 rows of 9 columns = 1152 SQL
# variables, far below SQLite's limit of 32766.)
MULTI_ROW_CHUNK = 128
_CHUNKS = tuple(1 << i for i in range(MULTI_ROW_CHUNK.bit_length() - 1, -1, -1))
_statements: dict[tuple[str, int, int, str | None, int], str] = {}


def multi_row_chunks(rows: int) -> list[tuple[int, int]]:
    """(first row, row count) of each statement for `rows` rows: chunks of MULTI_ROW_CHUNK, then
    the rest in decreasing powers of two."""
    out = []
    start = 0
    for size in _CHUNKS:
        while rows - start >= size:
            out.append((start, size))
            start += size
    return out


def insert_statement(prefix: str, width: int, rows: int, group: str | None = None,
                     shared: int = 0) -> str:
    """`prefix` ("INSERT INTO t (a, b) VALUES ") followed by `rows` groups of `width` ?s; or, with
    `group`, by `rows` copies of that VALUES group, whose `{0}`..`{width-1}` become the row's own
    numbered parameters, after the `shared` ones (?1..?shared, which every group may name)."""
    key = (prefix, width, rows, group, shared)
    sql = _statements.get(key)
    if sql is None:
        if group is None:
            one = "(" + ",".join("?" * width) + ")"
            sql = prefix + ",".join([one] * rows)
        else:
            sql = prefix + ",".join(group.format(*[f"?{shared + row * width + i + 1}" for i in range(width)])
                                    for row in range(rows))
        _statements[key] = sql
    return sql


def insert_rows(conn: sqlite3.Connection, prefix: str, width: int, flat: list[Any],
                on_conflict: Any = None, *, group: str | None = None, shared: tuple[Any, ...] = ()) -> None:
    """Insert the rows laid end to end in `flat` (`width` values each, in order) with multi-row
    INSERT statements (`group` and `shared`: see insert_statement). A statement that fails with
    an IntegrityError is backed out by SQLite as a whole; `on_conflict(conn, rows)` then gets its
    rows (as tuples) to insert another way, or, without it, the error propagates."""
    execute = conn.execute
    for start, size in multi_row_chunks(len(flat) // width):
        values = flat[start * width:(start + size) * width]
        try:
            execute(insert_statement(prefix, width, size, group, len(shared)),
                    [*shared, *values] if shared else values)
        except sqlite3.IntegrityError:
            if on_conflict is None:
                raise
            on_conflict(conn, [tuple(values[i:i + width]) for i in range(0, len(values), width)])


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Inside the caller's open transaction (left open), or else in one of its own: committed at
    the end, rolled back on an error."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if own:
            conn.rollback()
        raise
    if own:
        conn.commit()
