"""The PostgreSQL layout, as numbered migrations applied in order at start-up.

Every migration runs once, in a transaction of its own, recorded in `schema_migrations`; several
receivers starting at once take an advisory lock first, so one applies and the others find it
applied. A database migrated by a newer carecard (a version this one does not know) is refused.

Tables (the same facts as the SQLite layout, host/storage/sqlite/):

    meta(name, value)              registry_generation; event_log_seq, the log's last seq: the
                                   row every appender locks, so seqs are given in commit order
                                   and a reader following a cursor never skips a late commit
    devices, contacts, commands    the registry and the downlink command queue
    event_log(seq, ...)            every event; a frame's row is its archive, unique on
                                   (device, counter): a frame is stored once by the database
    frames                         a view of the log's frame rows
    sink_cursor(name, seq)         readers' durable cursors
    alerts, alert_actions, engine_checkpoint, engine_device
                                   the alert engine's
    engine_lease(name, holder, backend, expires_at), engine_worker(worker, expires_at)
                                   who steps each engine partition, until when; the live workers
"""

from __future__ import annotations

from carecard.host.storage import FRAME_COLUMNS

# An advisory lock key of carecard's schema migrations ("carecard" in ASCII, as an int64).
MIGRATION_LOCK = 0x6361726563617264

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "registry, command queue, event log, cursors, alerts", (
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        "INSERT INTO meta VALUES ('registry_generation', 0), ('event_log_seq', 0)",
        """CREATE TABLE devices (
            device BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            iccid TEXT,
            phone TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION,
            last_counter BIGINT,
            last_source TEXT,
            frames_stored BIGINT NOT NULL DEFAULT 0,
            downlink_reserved BIGINT NOT NULL DEFAULT 0,
            next_command_seq BIGINT NOT NULL DEFAULT 1
        )""",
        """CREATE TABLE contacts (
            device BIGINT NOT NULL,
            key INTEGER NOT NULL,
            number TEXT NOT NULL,
            name TEXT NOT NULL,
            PRIMARY KEY (device, key)
        )""",
        """CREATE TABLE commands (
            id BIGSERIAL PRIMARY KEY,
            device BIGINT NOT NULL,
            seq INTEGER NOT NULL,
            cmd TEXT NOT NULL,
            args TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            first_sent_at DOUBLE PRECISION,
            last_sent_at DOUBLE PRECISION,
            result TEXT,
            detail TEXT
        )""",
        "CREATE INDEX commands_by_state ON commands (state, device, id)",
        "CREATE INDEX commands_by_device ON commands (device, id)",
        """CREATE TABLE event_log (
            seq BIGINT PRIMARY KEY,
            event_id TEXT NOT NULL,
            appended_at DOUBLE PRECISION NOT NULL,
            body TEXT NOT NULL,
            opened BYTEA,
            received_at DOUBLE PRECISION,
            device BIGINT,
            counter BIGINT,
            tag BYTEA,
            type TEXT,
            device_time BIGINT,
            transport TEXT,
            frame BYTEA
        )""",
        "CREATE UNIQUE INDEX event_log_frame ON event_log (device, counter) WHERE device IS NOT NULL",
        "CREATE INDEX event_log_prunable ON event_log (seq) WHERE device IS NULL",
        f"CREATE VIEW frames AS SELECT {', '.join(FRAME_COLUMNS)} FROM event_log WHERE device IS NOT NULL",
        """CREATE TABLE sink_cursor (
            name TEXT PRIMARY KEY,
            seq BIGINT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE alerts (
            id TEXT PRIMARY KEY,
            device BIGINT NOT NULL,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            step TEXT NOT NULL,
            opened_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            notified TEXT NOT NULL,
            acknowledged_by TEXT,
            acknowledged_at DOUBLE PRECISION,
            closed_reason TEXT,
            closed_by TEXT,
            closed_at DOUBLE PRECISION,
            prompt_id BIGINT,
            details TEXT NOT NULL
        )""",
        "CREATE INDEX alerts_by_opened ON alerts (opened_at, id)",
        "CREATE INDEX alerts_by_device ON alerts (device, opened_at)",
        """CREATE TABLE alert_actions (
            id BIGSERIAL PRIMARY KEY,
            alert_id TEXT NOT NULL,
            device BIGINT NOT NULL,
            action TEXT NOT NULL,
            by_whom TEXT NOT NULL,
            reason TEXT,
            source TEXT NOT NULL,
            requested_at DOUBLE PRECISION NOT NULL,
            outcome TEXT,
            detail TEXT,
            handled_at DOUBLE PRECISION
        )""",
        "CREATE INDEX alert_actions_pending ON alert_actions (id) WHERE outcome IS NULL",
        "CREATE INDEX alert_actions_by_alert ON alert_actions (alert_id, id)",
        """CREATE TABLE engine_checkpoint (
            name TEXT PRIMARY KEY,
            cursor BIGINT NOT NULL,
            now DOUBLE PRECISION NOT NULL,
            saved_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE engine_device (
            name TEXT NOT NULL,
            device BIGINT NOT NULL,
            state TEXT NOT NULL,
            PRIMARY KEY (name, device)
        )""",
    )),
    (2, "the alert engine's settings in the registry", (
        """CREATE TABLE engine_settings (
            scope TEXT PRIMARY KEY,
            settings TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
    )),
    (3, "the village of each device", (
        "ALTER TABLE devices ADD COLUMN village TEXT",
    )),
    (4, "engine partitions under time leases, and the live engine workers", (
        """CREATE TABLE engine_lease (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            backend INTEGER NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE engine_worker (
            worker TEXT PRIMARY KEY,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
    )),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]
