"""The PostgreSQL implementation of the storage interfaces (carecard.host.storage), for several
receivers on one database: `carecard receive --store postgresql://...`. The layout and its
migrations are schema.py; the store and the event log reader store.py. Needs psycopg 3 and
psycopg_pool (installed with carecard)."""

from carecard.host.storage.postgresql.store import (
    PostgreSQLEventLog,
    PostgreSQLStore,
    display_name,
    is_postgresql_url,
)

__all__ = ["PostgreSQLEventLog", "PostgreSQLStore", "display_name", "is_postgresql_url"]
