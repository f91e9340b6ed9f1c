"""The SQLite schema: its versioned migrations, transactions, and the open connection.

The schema version is SQLite's `PRAGMA user_version`; `migrate` brings a database up to
`SCHEMA_VERSION` in one transaction when the store starts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bot.errors import ConfigError, StorageLostError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

log = logging.getLogger("bot.store")

# How long a writer waits for another connection's lock (another process on the same file)
# before SQLite gives up with "database is locked".
BUSY_TIMEOUT_MS: Final = 5_000

# Each entry takes the schema from version N to N + 1 (entry 0 makes version 1) inside one
# transaction. Append new migrations; never edit one that has shipped, since databases in the
# field have already run it.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the initial schema.
    (
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            platform TEXT NOT NULL,
            server TEXT NOT NULL,
            user_id TEXT NOT NULL,
            user_name TEXT NOT NULL,
            channel TEXT NOT NULL,      -- where the request was made
            thread TEXT,
            is_admin INTEGER NOT NULL,
            roles TEXT NOT NULL,        -- JSON array of role ids
            command TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at TEXT NOT NULL,   -- UTC ISO 8601, fixed width: text order = time order
            started_at TEXT,
            finished_at TEXT,
            options TEXT NOT NULL,      -- JSON object
            params TEXT,                -- JSON of GenerationParams
            interrogate TEXT,           -- JSON of InterrogateParams
            backend_id TEXT,
            endpoint TEXT,
            model TEXT,
            attachments TEXT NOT NULL,  -- JSON array of AttachmentRef
            status_message TEXT,
            job_channel TEXT,           -- where the job's messages go (NULL: not yet posted)
            job_thread TEXT,
            error TEXT,
            caption TEXT,
            infotext TEXT,
            notes TEXT NOT NULL,        -- JSON array of strings
            delivery TEXT NOT NULL,
            parent_id TEXT,
            result_count INTEGER NOT NULL,
            results_expired INTEGER NOT NULL,
            result_messages TEXT NOT NULL  -- JSON array of message ids
        ) STRICT
        """,
        # `id` ends every index so that `ORDER BY created_at DESC, id DESC` is read straight
        # off the index, without a sort.
        "CREATE INDEX jobs_by_user ON jobs (platform, server, user_id, created_at, id)",
        "CREATE INDEX jobs_by_server ON jobs (platform, server, created_at, id)",
        "CREATE INDEX jobs_by_state ON jobs (platform, server, state, created_at, id)",
        """
        CREATE INDEX jobs_by_thread
        ON jobs (platform, server, job_channel, job_thread, created_at, id)
        """,
        # Partial indexes stay as small as the set they serve: the jobs to resume on start, and
        # the succeeded jobs whose run times feed the progress estimate. A query only uses them
        # when its WHERE clause repeats the index's condition, so the SQL below spells it the
        # same way.
        """
        CREATE INDEX jobs_unfinished ON jobs (created_at, id)
        WHERE state IN ('created', 'inprogress') OR delivery <> 'done'
        """,
        """
        CREATE INDEX jobs_succeeded_by_endpoint ON jobs (endpoint, finished_at)
        WHERE state = 'succeed'
        """,
        """
        CREATE TABLE images (
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            slot TEXT NOT NULL,         -- image | mask | sketch | result
            idx INTEGER NOT NULL,       -- order within the slot, from 0
            name TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (job_id, slot, idx)
        ) STRICT
        """,
        # One row per message a job posted (status and results), so that button presses and
        # replies find their job through an index. A message id is expected to belong to one
        # job; the job id is part of the key so that a collision cannot make a save fail.
        """
        CREATE TABLE messages (
            platform TEXT NOT NULL,
            server TEXT NOT NULL,
            message_id TEXT NOT NULL,
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            PRIMARY KEY (platform, server, message_id, job_id)
        ) STRICT, WITHOUT ROWID
        """,
        "CREATE INDEX messages_by_job ON messages (job_id)",
    ),
    # 2: channel / server settings (`settings` command), and an index for retention.
    (
        """
        CREATE TABLE settings (
            platform TEXT NOT NULL,
            server TEXT NOT NULL,
            scope TEXT NOT NULL,        -- '' = the whole server, else a channel id
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (platform, server, scope, key)
        ) STRICT, WITHOUT ROWID
        """,
        "CREATE INDEX jobs_by_age ON jobs (created_at)",
    ),
    # 3: platform events already acted on (Slack retries an event for minutes; one that comes
    # back after a restart must not make a second job).
    (
        """
        CREATE TABLE claims (
            key TEXT PRIMARY KEY,
            created_at TEXT NOT NULL
        ) STRICT, WITHOUT ROWID
        """,
    ),  # 4: a version per job row, for compare-and-set writes (`save` never overwrites a change
    # it has not seen).
    ("ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0",),
    # 5: ownership (`bot.ports.JobLeases`, `LeaderLeases`, `Replicas`): a lease per job (its
    # owner, expiry and fence, and the takeovers counted in `attempts`), named leases for the
    # periodic work that runs once, and the replicas that reported.
    (
        "ALTER TABLE jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN lease_owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_until TEXT",
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            until TEXT NOT NULL,
            fence INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID
        """,
        """
        CREATE TABLE replicas (
            id TEXT PRIMARY KEY,
            started_at TEXT NOT NULL,
            seen_at TEXT NOT NULL,
            stale_writes INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID
        """,
    ),
    # 6: reads one replica makes for all (`bot.ports.SharedReads`: the ESD list scan): the keys
    # replicas ask about, and what the replica holding the scan's leader lease posted for them.
    (
        """
        CREATE TABLE shared_reads (
            topic TEXT NOT NULL,
            key TEXT NOT NULL,
            asked_at TEXT NOT NULL,
            value TEXT,
            read_at TEXT,
            PRIMARY KEY (topic, key)
        ) STRICT, WITHOUT ROWID
        """,
    ),
    # 7: the global cap (`Admission.max_in_flight`) counts the running jobs in every insert.
    ("CREATE INDEX jobs_running ON jobs (state) WHERE state IN ('created', 'inprogress')",),
    # 8: `SharedReads.recent`: what was posted lately, without reading every key of a topic.
    ("CREATE INDEX shared_reads_recent ON shared_reads (topic, read_at)",),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction; IMMEDIATE takes the write lock up front so it cannot deadlock.

    Inside a group commit (`_Worker`) it is a savepoint: its work is undone alone on failure
    and made durable with the group.
    """
    if conn.in_transaction:
        conn.execute("SAVEPOINT one")
        try:
            yield
            conn.execute("RELEASE one")
        except BaseException:
            conn.execute("ROLLBACK TO one")
            conn.execute("RELEASE one")
            raise
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the schema up to `len(migrations)` in one transaction; returns the old version.

    The version is read inside the transaction, so two processes starting on the same file do
    not both run a migration.
    """
    with transaction(conn):
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(migrations):
            raise ConfigError(
                f"the job database has schema version {version}, newer than this sdbot "
                f"understands ({len(migrations)}); upgrade sdbot or use another data_dir"
            )
        for number, statements in enumerate(migrations[version:], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number:d}")
    return version


# -- The open database ---------------------------------------------------------------


class Database:
    """One SQLite connection, used only on the store's worker thread (`bot.store.worker`)."""

    def __init__(self, conn: sqlite3.Connection, path: str = ":memory:") -> None:
        self.conn = conn
        self.path = path
        self._identity = identity(path)

    def check_file(self) -> None:
        """Refuse to write when the database file is no longer the one opened: SQLite would
        go on writing into a deleted file (lost at the next start) or beside a new one."""
        if self._identity is not None and identity(self.path) != self._identity:
            raise StorageLostError(
                f"the job database {self.path} was deleted or replaced while the bot was "
                "running; check the data folder and start the bot again"
            )

    @classmethod
    def open(cls, path: str) -> Database:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (`transaction`), never implied by the
        # driver. `check_same_thread` stays on, so use from any other thread fails loudly.
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL loses no commit when the process dies; only a power cut may
            # roll back the last transactions.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            old = migrate(conn)
        except BaseException:
            conn.close()
            raise
        if old != SCHEMA_VERSION:
            log.info("job database %s: schema version %d -> %d", path, old, SCHEMA_VERSION)
        return cls(conn, path)

    def close(self) -> None:
        try:
            # SQLite's advice for long-lived connections: refresh planner statistics on close.
            self.conn.execute("PRAGMA optimize")
        except sqlite3.Error:
            log.warning("PRAGMA optimize failed on the job database", exc_info=True)
        finally:
            self.conn.close()


def identity(path: str) -> tuple[int, int] | None:
    """The file's device and inode (None for an in-memory database or a missing file)."""
    if path == ":memory:":
        return None
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return (-1, -1)
    return (found.st_dev, found.st_ino)


def storage_failure(exc: BaseException) -> bool:
    """A full or failing disk (SQLITE_FULL, SQLITE_IOERR*, ENOSPC, EIO), not a bug."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
        text = str(exc)
        return "disk is full" in text or "disk I/O error" in text
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT)
