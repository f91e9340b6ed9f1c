"""The SQLite job store: `SqliteJobStore`, the durable `bot.ports.JobStore`.

It owns the database file: the schema and its migrations (`PRAGMA user_version`), the mapping
between a `Job` and its row, the jobs' stored images, and a side table of message ids so that a
button press or a reply finds its job without scanning JSON. Every database call runs on one
worker thread owned by the store, so the event loop never waits on disk and the connection is only
ever used by the thread that opened it.

Stored forms: timestamps are fixed-width ISO 8601 text in UTC (`2026-11-25T12:01:33.000000+00:00`),
so text order is time order and rows stay readable in the sqlite3 shell; naive datetimes are
refused with `ValueError`. Options, parameters, attachments, notes, roles and message ids are JSON
text. Option values of type str, int, float, bool and None round-trip exactly; a datetime option
value is written as its UTC ISO string and read back as that string.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Self, TypeVar

from bot import records
from bot.errors import ConfigError, StorageError, StorageLostError
from bot.model import (
    AttachmentRef,
    Caller,
    Conversation,
    Delivery,
    Job,
    JobState,
    Platform,
)
from bot.ports import Admission, AdmissionRefused, JobChanged, JobQuery, StoredImage

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from types import TracebackType

    from bot.ports import JobStore

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# How long a writer waits for another connection's lock (another process on the same file)
# before SQLite gives up with "database is locked".
BUSY_TIMEOUT_MS: Final = 5_000

# At most this many jobs answer an id prefix; more means the prefix is ambiguous anyway.
FIND_LIMIT: Final = 5

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
)

SCHEMA_VERSION: Final = len(MIGRATIONS)

# Every column of `jobs`, in one place for INSERT, UPDATE and SELECT. The SQL below is assembled
# from these constant names only (hence the S608 waivers); every value is a bound parameter.
_JOB_COLUMNS: Final = (
    "id",
    "platform",
    "server",
    "user_id",
    "user_name",
    "channel",
    "thread",
    "is_admin",
    "roles",
    "command",
    "state",
    "created_at",
    "started_at",
    "finished_at",
    "options",
    "params",
    "interrogate",
    "backend_id",
    "endpoint",
    "model",
    "attachments",
    "status_message",
    "job_channel",
    "job_thread",
    "error",
    "caption",
    "infotext",
    "notes",
    "delivery",
    "parent_id",
    "result_count",
    "results_expired",
    "result_messages",
    "version",
)
_JOB_FIELDS: Final = ", ".join(f"jobs.{name}" for name in _JOB_COLUMNS)
_SELECT_JOBS: Final = f"SELECT {_JOB_FIELDS} FROM jobs"  # noqa: S608
_INSERT_JOB: Final = (
    f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(':' + name for name in _JOB_COLUMNS)})"
)
# Compare-and-set: the row is written only if nobody wrote it since `job` was read.
_UPDATE_JOB: Final = (
    "UPDATE jobs SET "  # noqa: S608
    + ", ".join(f"{name} = :{name}" for name in _JOB_COLUMNS if name not in ("id", "version"))
    + ", version = version + 1 WHERE id = :id AND version = :version"
)
_NEWEST_FIRST: Final = " ORDER BY jobs.created_at DESC, jobs.id DESC"

SQL_GET: Final = f"{_SELECT_JOBS} WHERE id = ?"
# A range on the primary key rather than LIKE/GLOB, which SQLite would not run on the index. Ids
# are unique across servers, so the range holds a handful of rows; the unary `+` keeps the planner
# from walking a whole server's (platform, server, …) index instead.
SQL_FIND: Final = (
    f"{_SELECT_JOBS} WHERE id >= :low AND id < :high"
    " AND +platform = :platform AND +server = :server ORDER BY id LIMIT :limit"
)
# For a prefix with no upper bound (empty, or only U+10FFFF characters).
SQL_FIND_FROM: Final = (
    f"{_SELECT_JOBS} WHERE id >= :low"
    " AND +platform = :platform AND +server = :server ORDER BY id LIMIT :limit"
)
# The condition repeats the `jobs_unfinished` index's word for word (see MIGRATIONS).
SQL_UNFINISHED: Final = (
    f"{_SELECT_JOBS} WHERE state IN ('created', 'inprogress') OR delivery <> 'done'"
    " ORDER BY created_at, id"
)
SQL_LATEST_IN_THREAD: Final = (
    f"{_SELECT_JOBS} WHERE platform = ? AND server = ? AND job_channel = ? AND job_thread IS ?"
    f"{_NEWEST_FIRST} LIMIT 1"
)
SQL_BY_MESSAGE: Final = (
    f"SELECT {_JOB_FIELDS} FROM messages JOIN jobs ON jobs.id = messages.job_id"  # noqa: S608
    " WHERE messages.platform = ? AND messages.server = ? AND messages.message_id = ?"
    f"{_NEWEST_FIRST} LIMIT 1"
)
# `state = 'succeed'` is spelled as in the `jobs_succeeded_by_endpoint` index.
SQL_RECENT_DURATIONS: Final = (
    "SELECT started_at, finished_at FROM jobs"
    " WHERE endpoint = ? AND state = 'succeed'"
    " AND started_at IS NOT NULL AND finished_at IS NOT NULL"
    " ORDER BY finished_at DESC LIMIT ?"
)
SQL_COUNT_USER_SINCE: Final = (
    "SELECT COUNT(*) FROM jobs WHERE platform = ? AND server = ? AND user_id = ?"
    " AND created_at >= ?"
)
SQL_COUNT_USER_RUNNING: Final = (
    "SELECT COUNT(*) FROM jobs WHERE platform = ? AND server = ? AND user_id = ?"
    " AND state IN ('created', 'inprogress')"
)
# Jobs old enough for retention that still hold images: the age index bounds the scan to old
# jobs, and the images key (job_id first) answers EXISTS without reading blobs.
SQL_EXPIRABLE: Final = (
    "SELECT id FROM jobs WHERE created_at < ?"
    " AND EXISTS (SELECT 1 FROM images WHERE images.job_id = jobs.id) LIMIT ?"
)
SQL_IMAGES: Final = "SELECT slot, name, data FROM images WHERE job_id = ? ORDER BY slot, idx"
SQL_IMAGES_OF_SLOT: Final = (
    "SELECT slot, name, data FROM images WHERE job_id = ? AND slot = ? ORDER BY idx"
)

# Operators' queries (the admin page). Run time is the backend's: submitted → finished, to the
# millisecond (julianday arithmetic is exact to about 50 µs).
USAGE_LIMIT: Final = 50
_RUN_SECONDS: Final = (
    "ROUND(COALESCE(SUM(CASE WHEN started_at IS NOT NULL AND finished_at IS NOT NULL"
    " THEN (julianday(finished_at) - julianday(started_at)) * 86400.0 END), 0.0), 3)"
)
SQL_SERVERS: Final = (
    "SELECT platform, server FROM jobs GROUP BY platform, server ORDER BY MAX(created_at) DESC"
)
SQL_USAGE_BY_USER: Final = (
    # With MAX(), SQLite takes the bare `user_name` from the newest row: the current name.
    "SELECT user_id AS key, user_name AS name, MAX(created_at) AS newest, COUNT(*) AS jobs,"  # noqa: S608
    f" {_RUN_SECONDS} AS gpu"
    " FROM jobs WHERE platform = ? AND server = ? AND created_at >= ?"
    " GROUP BY user_id ORDER BY jobs DESC, key LIMIT ?"
)
SQL_USAGE_BY_CHANNEL: Final = (
    f"SELECT channel AS key, channel AS name, COUNT(*) AS jobs, {_RUN_SECONDS} AS gpu"  # noqa: S608
    " FROM jobs WHERE platform = ? AND server = ? AND created_at >= ?"
    " GROUP BY channel ORDER BY jobs DESC, key LIMIT ?"
)
SQL_FAILURES: Final = (
    "SELECT error, COUNT(*) AS jobs FROM jobs WHERE platform = ? AND server = ?"
    " AND state = 'failed' AND created_at >= ? GROUP BY error ORDER BY jobs DESC, error LIMIT ?"
)
SQL_DAILY: Final = (
    "SELECT substr(created_at, 1, 10) AS day, COUNT(*) AS jobs,"
    " SUM(state = 'failed') AS failed FROM jobs"
    " WHERE platform = ? AND server = ? AND created_at >= ? GROUP BY day ORDER BY day"
)
# Readiness writes this one claim row (replacing it) to prove the database takes commits.
PROBE_KEY: Final = "sdbot:ready-probe"
PROBE_BUSY_MS: Final = 200


@dataclasses.dataclass(frozen=True)
class Usage:
    """One user's (or channel's) jobs and backend run time over a period."""

    key: str  # user id or channel id
    name: str  # the user's display name (the channel id for channels)
    jobs: int
    gpu_seconds: float


@dataclasses.dataclass(frozen=True)
class DayCount:
    day: str  # YYYY-MM-DD (UTC)
    jobs: int
    failed: int


def query_sql(query: JobQuery) -> tuple[str, list[object]]:
    """The SQL and parameters of a `jobs` query (also used by the query-plan tests)."""
    if query.limit < 0 or query.offset < 0:
        raise ValueError(f"limit and offset must be >= 0, got {query.limit}, {query.offset}")
    where = ["platform = ?", "server = ?"]
    params: list[object] = [query.platform.value, query.server]
    if query.user is not None:
        where.append("user_id = ?")
        params.append(query.user)
    if query.states:
        states = tuple(dict.fromkeys(state.value for state in query.states))
        where.append(f"state IN ({', '.join('?' * len(states))})")
        params.extend(states)
    for column, value in (
        ("command", query.command),
        ("endpoint", query.endpoint),
        ("model", query.model),
        ("backend_id", query.backend_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        where.append("created_at >= ?")
        params.append(encode_time(query.since))
    if query.until is not None:
        where.append("created_at < ?")
        params.append(encode_time(query.until))
    params.extend((query.limit, query.offset))
    # Only fixed fragments are joined here; every value is a bound parameter.
    sql = f"{_SELECT_JOBS} WHERE {' AND '.join(where)}{_NEWEST_FIRST} LIMIT ? OFFSET ?"
    return sql, params


# -- Stored forms --------------------------------------------------------------------------


def encode_time(moment: datetime) -> str:
    """A timezone-aware datetime as fixed-width UTC ISO text (text order = time order)."""
    if moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: the job store keeps UTC times")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def decode_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return encode_time(value)
    raise TypeError(f"{type(value).__name__} value {value!r} cannot be stored as JSON")


def _dump(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _time_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else encode_time(moment)


def _job_row(job: Job) -> dict[str, object]:
    caller = job.caller
    return {
        "id": job.id,
        "platform": caller.platform.value,
        "server": caller.server,
        "user_id": caller.user,
        "user_name": caller.user_name,
        "channel": caller.conversation.channel,
        "thread": caller.conversation.thread,
        "is_admin": int(caller.is_admin),
        "roles": _dump(list(caller.roles)),
        "command": job.command,
        "state": job.state.value,
        "created_at": encode_time(job.created_at),
        "started_at": _time_or_none(job.started_at),
        "finished_at": _time_or_none(job.finished_at),
        "options": records.dump_options(job.options),
        "params": None if job.params is None else records.dump_params(job.params),
        "interrogate": (
            None if job.interrogate is None else records.dump_interrogate(job.interrogate)
        ),
        "backend_id": job.backend_id,
        "endpoint": job.endpoint,
        "model": job.model,
        # Field by field: `dataclasses.asdict` deep-copies and was a third of building a row.
        "attachments": _dump([vars(ref) for ref in job.attachments]),
        "status_message": job.status_message,
        "job_channel": None if job.thread is None else job.thread.channel,
        "job_thread": None if job.thread is None else job.thread.thread,
        "error": job.error,
        "caption": job.caption,
        "infotext": job.infotext,
        "notes": _dump(list(job.notes)),
        "delivery": job.delivery.value,
        "parent_id": job.parent_id,
        "result_count": job.result_count,
        "results_expired": int(job.results_expired),
        "result_messages": _dump(list(job.result_messages)),
        "version": job.version,
    }


def _job_from_row(row: sqlite3.Row) -> Job:
    params = row["params"]
    interrogate = row["interrogate"]
    started_at = row["started_at"]
    finished_at = row["finished_at"]
    job_channel = row["job_channel"]
    return Job(
        id=row["id"],
        command=row["command"],
        caller=Caller(
            platform=Platform(row["platform"]),
            server=row["server"],
            user=row["user_id"],
            conversation=Conversation(row["channel"], row["thread"]),
            is_admin=bool(row["is_admin"]),
            user_name=row["user_name"],
            roles=tuple(json.loads(row["roles"])),
        ),
        state=JobState(row["state"]),
        created_at=decode_time(row["created_at"]),
        options=records.load_options(row["command"], row["options"]),
        params=None if params is None else records.load_params(params),
        interrogate=None if interrogate is None else records.load_interrogate(interrogate),
        backend_id=row["backend_id"],
        endpoint=row["endpoint"],
        model=row["model"],
        attachments=tuple(AttachmentRef(**ref) for ref in json.loads(row["attachments"])),
        status_message=row["status_message"],
        thread=None if job_channel is None else Conversation(job_channel, row["job_thread"]),
        started_at=None if started_at is None else decode_time(started_at),
        finished_at=None if finished_at is None else decode_time(finished_at),
        error=row["error"],
        caption=row["caption"],
        infotext=row["infotext"],
        notes=tuple(json.loads(row["notes"])),
        delivery=Delivery(row["delivery"]),
        parent_id=row["parent_id"],
        result_count=row["result_count"],
        results_expired=bool(row["results_expired"]),
        result_messages=tuple(json.loads(row["result_messages"])),
        version=row["version"],
    )


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix`; None when there is none.

    SQLite compares TEXT as UTF-8 bytes, which orders like code points.
    """
    stem = prefix.rstrip(chr(sys.maxunicode))
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates cannot be encoded: skip to the next char
        following = 0xE000
    return stem[:-1] + chr(following)


# -- Schema --------------------------------------------------------------------------------


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
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
    with _transaction(conn):
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


# -- The database, on the worker thread ----------------------------------------------------


class _Database:
    """The store's synchronous half: one connection, called only on the store's worker thread."""

    def __init__(self, conn: sqlite3.Connection, path: str = ":memory:") -> None:
        self.conn = conn
        self.path = path
        self._identity = _identity(path)

    def check_file(self) -> None:
        """Refuse to write when the database file is no longer the one opened: SQLite would
        go on writing into a deleted file (lost at the next start) or beside a new one."""
        if self._identity is not None and _identity(self.path) != self._identity:
            raise StorageLostError(
                f"the job database {self.path} was deleted or replaced while the bot was "
                "running; stop the bot, check its data folder and start it again"
            )

    @classmethod
    def open(cls, path: str) -> _Database:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (`_transaction`), never implied by the
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

    def _jobs(self, sql: str, params: Sequence[object] | dict[str, object]) -> list[Job]:
        return [_job_from_row(row) for row in self.conn.execute(sql, params)]

    def _exists(self, job_id: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None
        )

    def _write_messages(self, job: Job) -> None:
        self.conn.execute("DELETE FROM messages WHERE job_id = ?", (job.id,))
        ids = dict.fromkeys(
            (*(() if job.status_message is None else (job.status_message,)), *job.result_messages)
        )
        caller = job.caller
        self.conn.executemany(
            "INSERT INTO messages (platform, server, message_id, job_id) VALUES (?, ?, ?, ?)",
            [(caller.platform.value, caller.server, message, job.id) for message in ids],
        )

    def _write_images(self, job_id: str, images: Sequence[StoredImage]) -> None:
        for slot in dict.fromkeys(image.slot for image in images):
            self.conn.execute("DELETE FROM images WHERE job_id = ? AND slot = ?", (job_id, slot))
        next_idx: dict[str, int] = {}
        rows = []
        for image in images:
            idx = next_idx.get(image.slot, 0)
            next_idx[image.slot] = idx + 1
            rows.append((job_id, image.slot, idx, image.name, image.data))
        self.conn.executemany(
            "INSERT INTO images (job_id, slot, idx, name, data) VALUES (?, ?, ?, ?, ?)", rows
        )

    def insert(
        self, job: Job, inputs: Sequence[StoredImage], admission: Admission | None = None
    ) -> None:
        row = _job_row(job)
        self.check_file()
        with _transaction(self.conn):
            if self._exists(job.id):
                raise KeyError(job.id)
            if admission is not None:
                self._admit(job, admission)
            self.conn.execute(_INSERT_JOB, row)
            self._write_messages(job)
            self._write_images(job.id, inputs)

    def _admit(self, job: Job, admission: Admission) -> None:
        caller = job.caller
        running = self.count_user_jobs(caller.platform, caller.server, caller.user, None)
        if running >= admission.max_running:
            raise AdmissionRefused("running", running)
        if admission.max_today is not None and admission.day_start is not None:
            today = self.count_user_jobs(
                caller.platform, caller.server, caller.user, admission.day_start
            )
            if today >= admission.max_today:
                raise AdmissionRefused("daily", today)

    def save(self, job: Job) -> Job:
        row = _job_row(job)
        self.check_file()
        with _transaction(self.conn):
            if self.conn.execute(_UPDATE_JOB, row).rowcount == 0:
                if self._exists(job.id):
                    raise JobChanged(job.id)
                raise KeyError(job.id)
            self._write_messages(job)
        return dataclasses.replace(job, version=job.version + 1)

    def get(self, job_id: str) -> Job | None:
        jobs = self._jobs(SQL_GET, (job_id,))
        return jobs[0] if jobs else None

    def find(self, platform: Platform, server: str, prefix: str) -> list[Job]:
        high = _prefix_end(prefix)
        return self._jobs(
            SQL_FIND_FROM if high is None else SQL_FIND,
            {
                "low": prefix,
                "high": high,
                "platform": platform.value,
                "server": server,
                "limit": FIND_LIMIT,
            },
        )

    def query(self, sql: str, params: Sequence[object]) -> list[Job]:
        """Run a query built by `query_sql`."""
        return self._jobs(sql, params)

    def unfinished(self) -> list[Job]:
        return self._jobs(SQL_UNFINISHED, ())

    def latest_in_thread(self, platform: Platform, server: str, thread: Conversation) -> Job | None:
        jobs = self._jobs(
            SQL_LATEST_IN_THREAD, (platform.value, server, thread.channel, thread.thread)
        )
        return jobs[0] if jobs else None

    def by_message(self, platform: Platform, server: str, message: str) -> Job | None:
        jobs = self._jobs(SQL_BY_MESSAGE, (platform.value, server, message))
        return jobs[0] if jobs else None

    def put_images(self, job_id: str, images: Sequence[StoredImage]) -> None:
        self.check_file()
        with _transaction(self.conn):
            if not self._exists(job_id):
                raise KeyError(job_id)
            self._write_images(job_id, images)

    def images(self, job_id: str, slot: str | None) -> list[StoredImage]:
        if slot is None:
            rows = self.conn.execute(SQL_IMAGES, (job_id,))
        else:
            rows = self.conn.execute(SQL_IMAGES_OF_SLOT, (job_id, slot))
        return [StoredImage(row["slot"], row["name"], row["data"]) for row in rows]

    def delete_images(self, job_id: str) -> None:
        with _transaction(self.conn):
            self.conn.execute("DELETE FROM images WHERE job_id = ?", (job_id,))

    def recent_durations(self, endpoint: str, limit: int) -> list[float]:
        return [
            (decode_time(row["finished_at"]) - decode_time(row["started_at"])).total_seconds()
            for row in self.conn.execute(SQL_RECENT_DURATIONS, (endpoint, limit))
        ]

    def count_user_jobs(
        self, platform: Platform, server: str, user: str, since: datetime | None
    ) -> int:
        if since is None:
            row = self.conn.execute(SQL_COUNT_USER_RUNNING, (platform.value, server, user))
        else:
            row = self.conn.execute(
                SQL_COUNT_USER_SINCE, (platform.value, server, user, encode_time(since))
            )
        return int(row.fetchone()[0])

    def expire_images(self, before: datetime, limit: int) -> list[str]:
        with _transaction(self.conn):
            ids = [
                row["id"] for row in self.conn.execute(SQL_EXPIRABLE, (encode_time(before), limit))
            ]
            for job_id in ids:
                self.conn.execute("DELETE FROM images WHERE job_id = ?", (job_id,))
                self.conn.execute(
                    "UPDATE jobs SET results_expired = 1, version = version + 1"
                    " WHERE id = ? AND result_count > 0",
                    (job_id,),
                )
        return ids

    def claim(self, key: str, now: datetime) -> bool:
        with _transaction(self.conn):
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO claims (key, created_at) VALUES (?, ?)",
                (key, encode_time(now)),
            )
        return cursor.rowcount == 1

    def expire_claims(self, before: datetime) -> int:
        with _transaction(self.conn):
            cursor = self.conn.execute(
                "DELETE FROM claims WHERE created_at < ?", (encode_time(before),)
            )
        return cursor.rowcount

    def settings(self, platform: Platform, server: str, scope: str) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT key, value FROM settings WHERE platform = ? AND server = ? AND scope = ?",
            (platform.value, server, scope),
        )
        return {row["key"]: row["value"] for row in rows}

    def put_settings(
        self, platform: Platform, server: str, scope: str, values: Mapping[str, str | None]
    ) -> None:
        with _transaction(self.conn):
            for key, value in values.items():
                if value is None:
                    self.conn.execute(
                        "DELETE FROM settings WHERE platform = ? AND server = ? AND scope = ?"
                        " AND key = ?",
                        (platform.value, server, scope, key),
                    )
                else:
                    self.conn.execute(
                        "INSERT INTO settings (platform, server, scope, key, value)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET value = excluded.value",
                        (platform.value, server, scope, key, value),
                    )

    # -- Operators' queries (the admin page): read-only, plus the readiness write ----------

    def servers(self) -> list[tuple[Platform, str]]:
        rows = self.conn.execute(SQL_SERVERS)
        return [(Platform(row["platform"]), row["server"]) for row in rows]

    def usage(
        self, platform: Platform, server: str, by: Literal["user", "channel"], since: datetime
    ) -> list[Usage]:
        sql = SQL_USAGE_BY_USER if by == "user" else SQL_USAGE_BY_CHANNEL
        rows = self.conn.execute(sql, (platform.value, server, encode_time(since), USAGE_LIMIT))
        return [Usage(row["key"], row["name"], row["jobs"], row["gpu"]) for row in rows]

    def failures(self, platform: Platform, server: str, since: datetime) -> list[tuple[str, int]]:
        rows = self.conn.execute(
            SQL_FAILURES, (platform.value, server, encode_time(since), USAGE_LIMIT)
        )
        return [(row["error"] or "", row["jobs"]) for row in rows]

    def daily(self, platform: Platform, server: str, since: datetime) -> list[DayCount]:
        rows = self.conn.execute(SQL_DAILY, (platform.value, server, encode_time(since)))
        return [DayCount(row["day"], row["jobs"], row["failed"]) for row in rows]

    def probe_write(self, now: datetime) -> None:
        """Commit one tiny write, waiting at most briefly for another process's lock."""
        self.conn.execute(f"PRAGMA busy_timeout = {PROBE_BUSY_MS:d}")
        try:
            with _transaction(self.conn):
                self.conn.execute(
                    "INSERT OR REPLACE INTO claims (key, created_at) VALUES (?, ?)",
                    (PROBE_KEY, encode_time(now)),
                )
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")


def _identity(path: str) -> tuple[int, int] | None:
    """The file's device and inode (None for an in-memory database or a missing file)."""
    if path == ":memory:":
        return None
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return (-1, -1)
    return (found.st_dev, found.st_ino)


def _storage_failure(exc: BaseException) -> bool:
    """A full or failing disk (SQLITE_FULL, SQLITE_IOERR*, ENOSPC, EIO), not a bug."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
        text = str(exc)
        return "disk is full" in text or "disk I/O error" in text
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT)


# -- The worker thread -----------------------------------------------------------------------


class _Worker:
    """The one thread that talks to SQLite.

    It takes every call queued since it last looked, runs new-job inserts first (they gate an
    acknowledgement the user is waiting for; no queued call can depend on another caller's
    insert) in one group commit, then the rest in order, and hands the results back to the
    event loop a few milliseconds' worth at a time. Under a burst this costs one commit and a
    few loop wake-ups per batch instead of one of each per call.
    """

    def __init__(self, group: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self._group = group
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sdbot-store", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], object], *, urgent: bool = False) -> asyncio.Future[object]:
        loop = asyncio.get_running_loop()
        call = _Call(loop, loop.create_future(), work, urgent)
        self._queue.put(call)
        return call.future

    def stop(self) -> None:
        """Let the thread end after the calls already queued (it is a daemon either way)."""
        self._queue.put(None)

    def _grouped(self, calls: list[_Call]) -> list[tuple[_Call, object, BaseException | None]]:
        """Run calls in one transaction (each its own savepoint); nothing is handed back before
        the commit, so an acknowledged job is always a committed one."""
        try:
            with self._group():
                return [_outcome(call) for call in calls]
        except BaseException as exc:  # the commit itself failed: none of them happened
            return [(call, None, exc) for call in calls]

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = None in batch
            calls = [c for c in batch if c is not None and not c.future.cancelled()]
            urgent = [c for c in calls if c.urgent]
            if len(urgent) > 1:
                _hand_back(self._grouped(urgent))
                calls = [c for c in calls if not c.urgent]
            else:
                calls.sort(key=lambda c: not c.urgent)  # stable: order kept within each kind
            done: list[tuple[_Call, object, BaseException | None]] = []
            handed = time.monotonic()
            for call in calls:
                if call.future.cancelled():  # cancelled while queued: never runs
                    continue
                done.append(_outcome(call))
                # Hand results back every few milliseconds, so the first callers of a long
                # batch do not wait for its last.
                if time.monotonic() - handed > _HANDOFF_SECONDS:
                    _hand_back(done)
                    done, handed = [], time.monotonic()
            _hand_back(done)


def _outcome(call: _Call) -> tuple[_Call, object, BaseException | None]:
    try:
        return (call, call.work(), None)
    except BaseException as exc:  # handed to the awaiting task, which re-raises
        return (call, None, exc)


def _hand_back(results: list[tuple[_Call, object, BaseException | None]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Call, object, BaseException | None]]] = {}
    for result in results:
        by_loop.setdefault(result[0].loop, []).append(result)
    for loop, settled in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, settled)


@dataclasses.dataclass(eq=False)
class _Call:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[object]
    work: Callable[[], object]
    urgent: bool


def _settle(results: list[tuple[_Call, object, BaseException | None]]) -> None:
    for call, value, error in results:
        if call.future.cancelled():
            continue
        if error is None:
            call.future.set_result(value)
        else:
            call.future.set_exception(error)


# -- The store -----------------------------------------------------------------------------

_CLOSED: Final = "job store is closed"
_HANDOFF_SECONDS: Final = 0.005


class SqliteJobStore:
    """`bot.ports.JobStore` on a SQLite file (or `":memory:"`).

    `start()` opens the file and migrates the schema; `aclose()` closes it; `async with` does
    both. Calls are queued on one worker thread in the order they are made. A call cancelled
    while queued does not run; one cancelled while running still completes (SQLite cannot be
    interrupted halfway through a transaction from here), so a cancelled write may or may not
    have happened.
    """

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._worker: _Worker | None = None
        self._db: _Database | None = None  # used only on the executor's thread
        self._state: Literal["new", "open", "closed"] = "new"

    @property
    def path(self) -> str:
        return self._path

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("a job store starts once" if self._state == "open" else _CLOSED)
        self._state = "open"
        self._worker = _Worker(self._group)
        try:
            await self._worker.submit(self._open_db)
        except sqlite3.Error as exc:
            await self.aclose()
            raise ConfigError(f"cannot open the job database {self._path}: {exc}") from exc
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the database; idempotent. Calls already queued finish first."""
        if self._state == "closed":
            return
        self._state = "closed"
        worker, self._worker = self._worker, None
        if worker is None:
            return
        closing = worker.submit(self._close_db)
        worker.stop()
        # Shielded: the close must run even when this await is cancelled.
        await asyncio.shield(closing)

    @contextlib.contextmanager
    def _group(self) -> Iterator[None]:
        """A group commit on the worker thread (see `_Worker`)."""
        if self._db is None:
            raise RuntimeError(_CLOSED)
        with _transaction(self._db.conn):
            yield

    # `_db` is set and cleared on the worker only, so a close queued behind the open sees it.
    def _open_db(self) -> None:
        self._db = _Database.open(self._path)

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, work: Callable[[_Database], _T], *, urgent: bool = False) -> _T:
        """Run `work` on the worker thread (in call order; `urgent` calls go first)."""
        if self._state != "open" or self._worker is None:
            raise RuntimeError(_CLOSED if self._state == "closed" else "job store not started")

        def on_worker() -> _T:
            if self._db is None:  # the open failed or a close overtook this call
                raise RuntimeError(_CLOSED)
            return work(self._db)

        try:
            return await self._worker.submit(on_worker, urgent=urgent)  # type: ignore[return-value]
        except StorageLostError:
            log.critical("job database %s was deleted or replaced; refusing writes", self._path)
            raise
        except (sqlite3.Error, OSError) as exc:
            if _storage_failure(exc):
                raise StorageError(f"job database {self._path}: {exc}") from exc
            raise

    async def insert(
        self, job: Job, inputs: Sequence[StoredImage] = (), admission: Admission | None = None
    ) -> None:
        """Commit a new job row and its inputs in one transaction; `KeyError` if the id is taken.

        With `admission`, refuse (`AdmissionRefused`) a job over its user's limits, checked in
        the same transaction.
        """
        inputs = tuple(inputs)
        await self._call(lambda db: db.insert(job, inputs, admission), urgent=True)

    async def save(self, job: Job) -> Job:
        """Write every field of an existing job, if nobody else wrote it since `job` was read.

        Returns the job as saved (its next `version`). `JobChanged` when the row's version is
        not `job.version` (read it again and decide), `KeyError` if there is no such job.
        """
        return await self._call(lambda db: db.save(job))

    async def get(self, job_id: str) -> Job | None:
        return await self._call(lambda db: db.get(job_id))

    async def find(self, platform: Platform, server: str, prefix: str) -> Sequence[Job]:
        """Jobs of one server whose id starts with `prefix`, by id, at most `FIND_LIMIT`."""
        return await self._call(lambda db: db.find(platform, server, prefix))

    async def query(self, query: JobQuery) -> Sequence[Job]:
        """Jobs of `query`'s server matching every filter given, newest first.

        `since` is inclusive and `until` exclusive; both must be timezone-aware.
        """
        sql, params = query_sql(query)
        return await self._call(lambda db: db.query(sql, params))

    async def unfinished(self) -> Sequence[Job]:
        """Jobs not terminal or not yet delivered, of every server, oldest first."""
        return await self._call(lambda db: db.unfinished())

    async def latest_in_thread(
        self, platform: Platform, server: str, thread: Conversation
    ) -> Job | None:
        """The newest job whose messages go to `thread` (channel and thread both equal)."""
        return await self._call(lambda db: db.latest_in_thread(platform, server, thread))

    async def by_message(self, platform: Platform, server: str, message: str) -> Job | None:
        """The job whose status or result message has this id (the newest, if several do)."""
        return await self._call(lambda db: db.by_message(platform, server, message))

    async def put_images(self, job_id: str, images: Sequence[StoredImage]) -> None:
        """Store images, replacing the job's earlier images of the same slots.

        Within a slot the images keep the given order. `KeyError` if there is no such job.
        """
        images = tuple(images)
        await self._call(lambda db: db.put_images(job_id, images))

    async def images(self, job_id: str, slot: str | None = None) -> Sequence[StoredImage]:
        """A job's images (or one slot's), ordered by slot then position."""
        return await self._call(lambda db: db.images(job_id, slot))

    async def delete_images(self, job_id: str) -> None:
        await self._call(lambda db: db.delete_images(job_id))

    async def recent_durations(self, endpoint: str, limit: int = 20) -> Sequence[float]:
        """Run times (finished − started, seconds) of the latest succeeded jobs, newest first."""
        return await self._call(lambda db: db.recent_durations(endpoint, limit))

    async def count_user_jobs(
        self, platform: Platform, server: str, user: str, *, since: datetime | None = None
    ) -> int:
        """A user's jobs created since `since`, or (without it) not yet terminal."""
        return await self._call(lambda db: db.count_user_jobs(platform, server, user, since))

    async def expire_images(self, before: datetime, limit: int = 500) -> Sequence[str]:
        """Delete the images of up to `limit` jobs created before `before`; return their ids.

        Job rows stay, marked `results_expired` when they had results.
        """
        return await self._call(lambda db: db.expire_images(before, limit))

    async def claim(self, key: str) -> bool:
        """Record a platform event as acted on: True the first time `key` is claimed."""
        now = datetime.now(UTC)
        return await self._call(lambda db: db.claim(key, now), urgent=True)

    async def expire_claims(self, before: datetime) -> int:
        """Forget claims made before `before` (platforms stop retrying long before)."""
        return await self._call(lambda db: db.expire_claims(before))

    async def settings(self, platform: Platform, server: str, scope: str) -> dict[str, str]:
        """Stored settings of a server (`scope` "") or one of its channels."""
        return await self._call(lambda db: db.settings(platform, server, scope))

    async def put_settings(
        self, platform: Platform, server: str, scope: str, values: Mapping[str, str | None]
    ) -> None:
        """Set settings (a None value removes the key) in one transaction."""
        values = dict(values)
        await self._call(lambda db: db.put_settings(platform, server, scope, values))

    # -- Operators' queries (`adapters.web`): not part of `JobStore` ------------------------

    async def servers(self) -> Sequence[tuple[Platform, str]]:
        """Every (platform, server) with jobs, most recently active first."""
        return await self._call(lambda db: db.servers())

    async def usage(
        self, platform: Platform, server: str, by: Literal["user", "channel"], since: datetime
    ) -> Sequence[Usage]:
        """Jobs and backend run time per user (or per request channel) since `since`."""
        return await self._call(lambda db: db.usage(platform, server, by, since))

    async def failures(
        self, platform: Platform, server: str, since: datetime
    ) -> Sequence[tuple[str, int]]:
        """Failed jobs since `since` grouped by their failure message, commonest first."""
        return await self._call(lambda db: db.failures(platform, server, since))

    async def daily(self, platform: Platform, server: str, since: datetime) -> Sequence[DayCount]:
        """Jobs and failed jobs per UTC day (of creation) since `since`, oldest first."""
        return await self._call(lambda db: db.daily(platform, server, since))

    async def writable(self) -> bool:
        """Whether a write commits now (readiness): False when closed, locked or failing."""
        now = datetime.now(UTC)
        try:
            await self._call(lambda db: db.probe_write(now))
        except (sqlite3.Error, RuntimeError) as exc:
            log.warning("job database is not writable: %s", exc)
            return False
        return True


if TYPE_CHECKING:

    def _is_a_job_store(store: SqliteJobStore) -> JobStore:
        # mypy checks here that the class really is a structural `JobStore`.
        return store
