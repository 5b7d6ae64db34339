"""The one way the stores list rows for a reader: filtered, oldest first, and with a limit the
newest rows (what `carecard alerts` and `carecard devices --all` show), still oldest first."""

from __future__ import annotations

from typing import Any, Callable, Sequence


def oldest_first(read: Callable[[str, list[Any]], list[Any]], select: str, where: Sequence[str],
                 params: list[Any], order: Sequence[str], limit: int | None) -> list[Any]:
    """Rows of `select` matching every clause of `where` (with `params`), ordered by the `order`
    columns; with `limit`, only the newest `limit` rows. `read(sql, params)` runs the query in the
    store's own dialect and returns its rows."""
    sql = select
    if where:
        sql += " WHERE " + " AND ".join(where)
    if not limit:
        return read(sql + " ORDER BY " + ", ".join(order), params)
    newest = read(sql + " ORDER BY " + ", ".join(f"{column} DESC" for column in order)
                  + f" LIMIT {int(limit)}", params)
    newest.reverse()
    return newest
