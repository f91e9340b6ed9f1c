"""The PostgreSQL schema: versioned migrations, applied once whichever replica starts first.

The job row keeps the forms `bot.store.rows` decides (fixed-width UTC ISO text for times, JSON
text for structures), so both engines share one mapping. Text columns that are ordered or
ranged over use the "C" collation: byte order, which for UTF-8 is code-point order, as in SQLite
(id prefixes, and the time strings' order). Lease, leader and replica times are `timestamptz`
set from the database's clock (`now()`), never a replica's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from bot.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from asyncpg import Record
    from asyncpg.pool import PoolConnectionProxy

    # Every connection the store uses comes from its pool.
    Connection = PoolConnectionProxy[Record]

log = logging.getLogger("bot.store")

# Taken (inside the migration's transaction) so that replicas starting together migrate once.
_MIGRATION_LOCK: Final = 0x5DB07_0001

# Each entry takes the schema from version N to N + 1 (entry 0 makes version 1) in one
# transaction. Append new migrations; never edit one that has shipped.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the schema of SQLite's version 5 (`bot.store.schema`), in one step.
    (
        """
        CREATE TABLE jobs (
            id TEXT COLLATE "C" PRIMARY KEY,
            platform TEXT NOT NULL,
            server TEXT COLLATE "C" NOT NULL,
            user_id TEXT COLLATE "C" NOT NULL,
            user_name TEXT NOT NULL,
            channel TEXT COLLATE "C" NOT NULL,
            thread TEXT,
            is_admin INTEGER NOT NULL,
            roles TEXT NOT NULL,
            command TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at TEXT COLLATE "C" NOT NULL,
            started_at TEXT COLLATE "C",
            finished_at TEXT COLLATE "C",
            options TEXT NOT NULL,
            params TEXT,
            interrogate TEXT,
            backend_id TEXT,
            endpoint TEXT,
            model TEXT,
            attachments TEXT NOT NULL,
            status_message TEXT,
            job_channel TEXT,
            job_thread TEXT,
            error TEXT COLLATE "C",
            caption TEXT,
            infotext TEXT,
            notes TEXT NOT NULL,
            delivery TEXT NOT NULL,
            parent_id TEXT,
            result_count BIGINT NOT NULL,
            results_expired INTEGER NOT NULL,
            result_messages TEXT NOT NULL,
            version BIGINT NOT NULL DEFAULT 0,
            fence BIGINT NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until TIMESTAMPTZ
        )
        """,
        "CREATE INDEX jobs_by_user ON jobs (platform, server, user_id, created_at, id)",
        "CREATE INDEX jobs_by_server ON jobs (platform, server, created_at, id)",
        "CREATE INDEX jobs_by_state ON jobs (platform, server, state, created_at, id)",
        """
        CREATE INDEX jobs_by_thread
        ON jobs (platform, server, job_channel, job_thread, created_at, id)
        """,
        """
        CREATE INDEX jobs_unfinished ON jobs (created_at, id)
        WHERE state IN ('created', 'inprogress') OR delivery <> 'done'
        """,
        # The global cap counts these (`Admission.max_in_flight`) in every insert.
        "CREATE INDEX jobs_running ON jobs (state) WHERE state IN ('created', 'inprogress')",
        """
        CREATE INDEX jobs_succeeded_by_endpoint ON jobs (endpoint, finished_at)
        WHERE state = 'succeed'
        """,
        "CREATE INDEX jobs_by_age ON jobs (created_at)",
        # Inputs and results, apart from the job rows (an object store can replace this table
        # later without touching them).
        """
        CREATE TABLE images (
            job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            slot TEXT COLLATE "C" NOT NULL,
            idx INTEGER NOT NULL,
            name TEXT NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (job_id, slot, idx)
        )
        """,
        """
        CREATE TABLE messages (
            platform TEXT NOT NULL,
            server TEXT NOT NULL,
            message_id TEXT NOT NULL,
            job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            PRIMARY KEY (platform, server, message_id, job_id)
        )
        """,
        "CREATE INDEX messages_by_job ON messages (job_id)",
        """
        CREATE TABLE settings (
            platform TEXT NOT NULL,
            server TEXT NOT NULL,
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (platform, server, scope, key)
        )
        """,
        # Platform events acted on: the primary key makes a claim unique across replicas.
        "CREATE TABLE claims (key TEXT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL)",
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            until TIMESTAMPTZ NOT NULL,
            fence BIGINT NOT NULL
        )
        """,
        """
        CREATE TABLE replicas (
            id TEXT PRIMARY KEY,
            started_at TIMESTAMPTZ NOT NULL,
            seen_at TIMESTAMPTZ NOT NULL,
            stale_writes BIGINT NOT NULL
        )
        """,
    ),
    # 2: reads one replica makes for all (`bot.ports.SharedReads`: the ESD list scan).
    (
        """
        CREATE TABLE shared_reads (
            topic TEXT NOT NULL,
            key TEXT NOT NULL,
            asked_at TIMESTAMPTZ NOT NULL,
            value TEXT,
            read_at TIMESTAMPTZ,
            PRIMARY KEY (topic, key)
        )
        """,
    ),
    # 3: what a claim reads. Jobs whose lease is held stay in `jobs_unfinished`, so a claim
    # walking it from the oldest skipped every held job first: each claim read more rows than
    # the last (20,000 jobs claimed 50 at a time: some 4 million rows read). Free jobs (never
    # leased, or let go) and leased ones, by expiry, each get an index of their own.
    (
        """
        CREATE INDEX jobs_free ON jobs (created_at, id)
        WHERE (state IN ('created', 'inprogress') OR delivery <> 'done') AND lease_owner IS NULL
        """,
        """
        CREATE INDEX jobs_leased ON jobs (lease_until)
        WHERE (state IN ('created', 'inprogress') OR delivery <> 'done')
        AND lease_owner IS NOT NULL
        """,
    ),
    # 4: `SharedReads.recent`: what was posted lately, without reading every key of a topic
    # (a replica looks a few times a second for completion events handed to it).
    ("CREATE INDEX shared_reads_recent ON shared_reads (topic, read_at)",),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)


async def migrate(conn: Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the schema up to `len(migrations)` in one transaction; returns the old version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS sdbot_schema (version INTEGER NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM sdbot_schema") or 0
        if version > len(migrations):
            raise ConfigError(
                f"the job database has schema version {version}, newer than this sdbot "
                f"understands ({len(migrations)}); upgrade sdbot or use another database"
            )
        for number, statements in enumerate(migrations[version:], start=version + 1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO sdbot_schema (version) VALUES ($1)", number)
    if version != len(migrations):
        log.info("job database: schema version %d -> %d", version, len(migrations))
    return int(version)


async def schema_version(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT max(version) FROM sdbot_schema") or 0)
