"""`PostgresJobStore`: every store port of `bot.ports` on a PostgreSQL database (asyncpg).

Several replicas share one database. What SQLite gets from owning its file, PostgreSQL gets
from its transactions: claims take rows with `FOR UPDATE SKIP LOCKED` (concurrent claimers skip
each other's rows), leases expire on the database's clock, every driver write carries its fence,
the per-user limits and the global cap are counted under a transaction-scoped lock in the
insert's own transaction, and a platform event's claim is a primary key. No transaction is held
open across a network call to anything but the database.

The job row's stored forms are `bot.store.rows`' (one mapping for both engines); the SQL that is
the same in both dialects is taken from `bot.store.jobs` with its `?` placeholders numbered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal, Self

import asyncpg

from bot.errors import ConfigError, StorageError, StorageLostError, UnreadableJobError
from bot.model import Platform
from bot.ports import (
    AdmissionRefused,
    DayCount,
    EventClaimed,
    JobChanged,
    LeaseLost,
    Posted,
    Replica,
    StoredImage,
    Usage,
)
from bot.store.jobs import (
    FIND_LIMIT,
    SELECT_JOBS,
    SQL_BY_MESSAGE,
    SQL_COUNT_RUNNING,
    SQL_COUNT_USER_RUNNING,
    SQL_COUNT_USER_SINCE,
    SQL_GET,
    SQL_RECENT_DURATIONS,
    SQL_UNFINISHED,
    prefix_end,
    query_sql,
)
from bot.store.leases import SQL_FAIL_UNREADABLE, UNFINISHED
from bot.store.operators import PROBE_KEY, USAGE_LIMIT
from bot.store.rows import (
    JOB_COLUMNS,
    LEASE_COLUMNS,
    decode_time,
    encode_time,
    job_from_row,
    job_row,
    listed_jobs,
)
from stores.postgres.inserts import (
    GLOBAL_ADMISSION,
    GroupInsert,
    image_records,
    storable_text,
    stored_values,
    user_lock,
)
from stores.postgres.schema import migrate, schema_version
from stores.postgres.settings import redact_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Mapping, Sequence
    from types import TracebackType

    from bot.model import Conversation, Job
    from bot.ports import Admission, JobQuery, JobStore
    from stores.postgres.inserts import Pending
    from stores.postgres.schema import Connection

log = logging.getLogger("bot.store")

_CLOSED: Final = "job store is closed"
# Connections per replica: enough for the event loop's concurrent store calls; PostgreSQL's
# default max_connections (100) holds a dozen replicas.
POOL_MAX: Final = 8
# Every statement gives up after this long (a lock held by a stuck replica, a dead server).
STATEMENT_TIMEOUT_MS: Final = 30_000
PROBE_TIMEOUT_MS: Final = 200
# The store's transactions never wait on anything but the database, so one idle inside a
# transaction this long belongs to a frozen replica (SIGSTOP, a VM paused): the server ends its
# session, releasing its locks (the admission locks above all), instead of every other replica
# queueing behind it.
IDLE_IN_TRANSACTION_MS: Final = 10_000

_PLACEHOLDER: Final = re.compile(r"\?")
# The database is out of reach or going away, not a bug: a lost connection, a server shutting
# down or starting up (a restart, a failover), a statement that ran past its timeout (a lock
# held by a stuck replica). The caller sees `StorageError`, as for a full disk on SQLite.
_UNAVAILABLE: Final = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.QueryCanceledError,
)


def numbered(sql: str) -> str:
    """SQLite's `?` placeholders as PostgreSQL's `$1, $2, …` (the SQL has no other `?`)."""
    count = 0

    def next_number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(next_number, sql)


_FIELDS: Final = ", ".join(f"jobs.{name}" for name in JOB_COLUMNS)
_INSERT_JOB: Final = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}, lease_owner, lease_until) VALUES ("  # noqa: S608
    + ", ".join(f"${n}" for n in range(1, len(JOB_COLUMNS) + 1))
    + f", ${len(JOB_COLUMNS) + 1}::text, CASE WHEN ${len(JOB_COLUMNS) + 1}::text IS NOT NULL"
    f" THEN now() + ${len(JOB_COLUMNS) + 2}::float8 * interval '1 second' END)"
)
_SAVED: Final = tuple(name for name in JOB_COLUMNS if name not in LEASE_COLUMNS)
_UPDATE_JOB: Final = (
    "UPDATE jobs SET "  # noqa: S608
    + ", ".join(f"{name} = ${n}" for n, name in enumerate(_SAVED, start=1))
    + f", version = version + 1 WHERE id = ${len(_SAVED) + 1}"
    f" AND version = ${len(_SAVED) + 2} AND fence = ${len(_SAVED) + 3}"
)
_SQL_GET: Final = numbered(SQL_GET)
_SQL_COUNT_RUNNING: Final = numbered(SQL_COUNT_RUNNING)
_SQL_COUNT_USER_RUNNING: Final = numbered(SQL_COUNT_USER_RUNNING)
_SQL_COUNT_USER_SINCE: Final = numbered(SQL_COUNT_USER_SINCE)
_SQL_FAIL_UNREADABLE: Final = numbered(SQL_FAIL_UNREADABLE)
_SQL_BY_MESSAGE: Final = numbered(SQL_BY_MESSAGE)
_SQL_RECENT_DURATIONS: Final = numbered(SQL_RECENT_DURATIONS)
# Two statements, as on SQLite: with `($2 IS NULL OR id < $2)` a generic plan (which a
# prepared statement may switch to) bounds the index scan below only and reads every id above
# the prefix to the end of the table.
_SQL_FIND: Final = (
    f"{SELECT_JOBS} WHERE id >= $1 AND id < $2"
    " AND platform = $3 AND server = $4 ORDER BY id LIMIT $5"
)
_SQL_FIND_FROM: Final = (
    f"{SELECT_JOBS} WHERE id >= $1 AND platform = $2 AND server = $3 ORDER BY id LIMIT $4"
)
# Two statements: `job_thread IS NOT DISTINCT FROM $4` is no index condition, so the newest
# job of a thread would be found by reading every job of its channel.
_SQL_LATEST_IN_THREAD: Final = (
    f"{SELECT_JOBS} WHERE platform = $1 AND server = $2 AND job_channel = $3"
    " AND job_thread = $4 ORDER BY jobs.created_at DESC, jobs.id DESC LIMIT 1"
)
_SQL_LATEST_IN_CHANNEL: Final = (
    f"{SELECT_JOBS} WHERE platform = $1 AND server = $2 AND job_channel = $3"
    " AND job_thread IS NULL ORDER BY jobs.created_at DESC, jobs.id DESC LIMIT 1"
)
# Spelled as the `jobs_running` index.
_TTL: Final = "now() + $2::float8 * interval '1 second'"
# A lease taken from another driver (not let go) counts an attempt, as on SQLite.
# Free jobs (oldest first) and leased ones whose lease expired (with `own`: or that `owner`
# holds; longest expired first), each read in its own index's order (`jobs_free`,
# `jobs_leased`) and locked with SKIP LOCKED, so concurrent claimers pass each other's rows; of
# those, the oldest jobs are taken. (In created order, the leased ones would be read through
# `jobs_unfinished` past every live lease.)
_CLAIMABLE_FREE: Final = (
    f"SELECT id, created_at FROM jobs WHERE {UNFINISHED} AND lease_owner IS NULL"  # noqa: S608
    " AND platform = ANY($3::text[]) ORDER BY created_at, id LIMIT $4 FOR UPDATE SKIP LOCKED"
)
_CLAIMABLE_LEASED: Final = (
    f"SELECT id, created_at FROM jobs WHERE {UNFINISHED} AND lease_owner IS NOT NULL"  # noqa: S608
    " AND {expired} AND platform = ANY($3::text[])"
    " ORDER BY lease_until LIMIT $4 FOR UPDATE SKIP LOCKED"
)
_CLAIM_PICKED: Final = (
    "UPDATE jobs SET fence = jobs.fence + 1,"  # noqa: S608
    " attempts = jobs.attempts + (jobs.lease_owner IS NOT NULL)::int,"
    f" lease_owner = $1, lease_until = {_TTL}"
    " FROM (SELECT id FROM (SELECT * FROM free UNION ALL SELECT * FROM leased) AS found"
    " ORDER BY created_at, id LIMIT $4) AS picked"
    f" WHERE jobs.id = picked.id RETURNING {_FIELDS}"
)


def _claim_sql(expired: str) -> str:
    leased = _CLAIMABLE_LEASED.replace("{expired}", expired)
    return f"WITH free AS ({_CLAIMABLE_FREE}), leased AS ({leased}) {_CLAIM_PICKED}"


_SQL_CLAIM_JOBS: Final = _claim_sql("lease_until < now()")
# A start under the same replica id (`own`): also this owner's live leases.
_SQL_CLAIM_OWN_JOBS: Final = _claim_sql("(lease_until < now() OR lease_owner = $1)")
_SQL_CLAIM_JOB: Final = (
    "UPDATE jobs SET fence = fence + 1,"  # noqa: S608
    " attempts = attempts + (lease_owner IS NOT NULL)::int,"
    f" lease_owner = $1, lease_until = {_TTL}"
    f" WHERE id = $3 AND {UNFINISHED}"
    f" AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until < now()) RETURNING {_FIELDS}"
)
_SQL_RENEW: Final = (
    f"UPDATE jobs SET lease_until = {_TTL}"  # noqa: S608
    " FROM unnest($3::text[], $4::bigint[]) AS held (id, fence)"
    " WHERE jobs.id = held.id AND jobs.fence = held.fence AND jobs.lease_owner = $1"
    " RETURNING jobs.id"
)
# Granted when free, expired or already held by `owner`; the fence grows on every change of
# hands. No row comes back while another owner holds it.
_SQL_LEAD: Final = (
    f"INSERT INTO leases AS held (name, owner, until, fence) VALUES ($3, $1, {_TTL}, 1)"  # noqa: S608
    " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until,"
    " fence = CASE WHEN held.owner = excluded.owner AND held.until >= now()"
    " THEN held.fence ELSE held.fence + 1 END"
    " WHERE held.owner = excluded.owner OR held.until < now() RETURNING fence"
)
_RUN_SECONDS: Final = (
    "round(coalesce(sum(extract(epoch FROM finished_at::timestamptz - started_at::timestamptz))"
    " FILTER (WHERE started_at IS NOT NULL AND finished_at IS NOT NULL), 0)::numeric, 3)::float8"
)
_SQL_USAGE_BY_USER: Final = (
    "SELECT user_id AS key, (array_agg(user_name ORDER BY created_at DESC))[1] AS name,"  # noqa: S608
    f" count(*) AS jobs, {_RUN_SECONDS} AS gpu"
    " FROM jobs WHERE platform = $1 AND server = $2 AND created_at >= $3"
    " GROUP BY user_id ORDER BY jobs DESC, key LIMIT $4"
)
_SQL_USAGE_BY_CHANNEL: Final = (
    f"SELECT channel AS key, channel AS name, count(*) AS jobs, {_RUN_SECONDS} AS gpu"  # noqa: S608
    " FROM jobs WHERE platform = $1 AND server = $2 AND created_at >= $3"
    " GROUP BY channel ORDER BY jobs DESC, key LIMIT $4"
)
_SQL_FAILURES: Final = (
    "SELECT error, count(*) AS jobs FROM jobs WHERE platform = $1 AND server = $2"
    " AND state = 'failed' AND created_at >= $3"
    " GROUP BY error ORDER BY jobs DESC, error LIMIT $4"
)
_SQL_DAILY: Final = (
    "SELECT substr(created_at, 1, 10) AS day, count(*) AS jobs,"
    " count(*) FILTER (WHERE state = 'failed') AS failed FROM jobs"
    " WHERE platform = $1 AND server = $2 AND created_at >= $3 GROUP BY day ORDER BY day"
)
_SQL_EXPIRABLE: Final = (
    "SELECT id FROM jobs WHERE created_at < $1"
    " AND EXISTS (SELECT 1 FROM images WHERE images.job_id = jobs.id) LIMIT $2"
)


def _aware(moment: datetime) -> datetime:
    """`moment`, refused when naive (`ValueError`, as `bot.store.rows.encode_time` does)."""
    if moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: the job store keeps UTC times")
    return moment


class PostgresJobStore:
    """`bot.ports.JobStore` on a PostgreSQL database shared by any number of replicas.

    `start()` opens a pool and migrates the schema (once, whichever replica comes first);
    `aclose()` closes the pool. Unlike SQLite's, a claim made at start (`own`) takes only jobs
    that are unleased, whose lease expired, or that this owner already holds: another replica's
    live lease is respected.
    """

    def __init__(
        self, url: str, *, pool_max: int = POOL_MAX, statement_timeout: float | None = None
    ) -> None:
        self._url = url
        self._pool_max = pool_max
        self._timeout_ms = (
            STATEMENT_TIMEOUT_MS if statement_timeout is None else int(statement_timeout * 1000)
        )
        self._pool: asyncpg.Pool | None = None
        self._state: Literal["new", "open", "closed"] = "new"
        self._inserts = GroupInsert(self._conn, self._insert_alone, _UNAVAILABLE)

    def __repr__(self) -> str:
        return f"PostgresJobStore({redact_url(self._url)!r})"

    @property
    def describe(self) -> str:
        return f"PostgreSQL {redact_url(self._url)}"

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("a job store starts once" if self._state == "open" else _CLOSED)
        self._state = "open"
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_max,
                server_settings={
                    "statement_timeout": str(self._timeout_ms),
                    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
                },
            )
            async with self._pool.acquire() as conn:
                await migrate(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.aclose()
            raise ConfigError(
                f"cannot open the job database {redact_url(self._url)}: {exc}"
            ) from exc
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the pool; idempotent. Inserts already waiting for their group go in first."""
        if self._state == "closed":
            return
        if self._state == "open":
            # Bounded as the pool's close below: a server gone away fails them meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inserts.aclose(), self._timeout_ms / 1000)
        self._state = "closed"
        pool, self._pool = self._pool, None
        if pool is not None:
            # Shielded, as SQLite's: the close runs even when this await is cancelled; a
            # connection stuck past the statement timeout is terminated.
            try:
                await asyncio.shield(asyncio.wait_for(pool.close(), self._timeout_ms / 1000))
            except TimeoutError:
                pool.terminate()

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

    async def wait_lost(self) -> StorageLostError:
        """Never returns: a server has no file to lose (`SqliteJobStore.wait_lost`); a broken
        connection fails the calls that need it, and the pool opens a new one."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def _conn(self, *, transaction: bool = False) -> AsyncIterator[Connection]:
        if self._state != "open" or self._pool is None:
            raise RuntimeError(_CLOSED if self._state == "closed" else "job store not started")
        try:
            async with self._pool.acquire() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except _UNAVAILABLE as exc:
            raise StorageError(f"job database {redact_url(self._url)}: {exc}") from exc

    # -- JobRepo ---------------------------------------------------------------------------

    async def insert(
        self,
        job: Job,
        inputs: Sequence[StoredImage] = (),
        admission: Admission | None = None,
        *,
        owner: str | None = None,
        ttl: float = 0.0,
        claim: str | None = None,
    ) -> None:
        """Commit a new job row and its inputs in one transaction; `KeyError` if the id is taken.

        With `admission`, the user's limits and the global cap are counted in the same
        transaction, under locks that serialise admissions of one user (and, with a global cap,
        of everyone) across replicas. Inserts arriving together are written in groups
        (`stores.postgres.inserts`), each job with its own outcome. With `claim`, the event's
        claim goes in the same transaction (`EventClaimed` when another already holds it).
        """
        await self._inserts.insert(job, inputs, admission, owner, ttl, claim)

    async def _insert_alone(self, conn: Connection, pending: Pending) -> None:
        job = pending.job
        async with conn.transaction():
            if pending.admission is not None:
                await self._admit(conn, job, pending.admission)
            if pending.claim is not None:
                # After the admission locks, as in a group (its claims go in last): claimed
                # first, this transaction waited for the admission lock while a group holding
                # it waited for this claim (PostgreSQL found the deadlock under the 3-replica
                # test). A concurrent claim of the key waits for the other one's outcome.
                status = await conn.execute(
                    "INSERT INTO claims (key, created_at) VALUES ($1, now())"
                    " ON CONFLICT DO NOTHING",
                    pending.claim,
                )
                if status.endswith(" 0"):
                    raise EventClaimed(pending.claim)
            try:
                await conn.execute(_INSERT_JOB, *pending.values, pending.owner, pending.ttl)
            except asyncpg.UniqueViolationError:
                raise KeyError(job.id) from None
            await _write_messages(conn, job)
            await _write_images(conn, job.id, pending.inputs)

    async def _admit(self, conn: Connection, job: Job, admission: Admission) -> None:
        caller = job.caller
        key = (caller.platform, caller.server, caller.user)
        if admission.max_in_flight is not None:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", GLOBAL_ADMISSION)
            running = int(await conn.fetchval(_SQL_COUNT_RUNNING))
            if running >= admission.max_in_flight:
                raise AdmissionRefused("global", running)
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", user_lock(job))
        if admission.max_running is not None:
            running = int(await conn.fetchval(_SQL_COUNT_USER_RUNNING, *key))
            if running >= admission.max_running:
                raise AdmissionRefused("running", running)
        if admission.max_today is not None and admission.day_start is not None:
            today = int(
                await conn.fetchval(_SQL_COUNT_USER_SINCE, *key, encode_time(admission.day_start))
            )
            if today >= admission.max_today:
                raise AdmissionRefused("daily", today)

    async def save(self, job: Job) -> Job:
        """Write every field of an existing job if nobody wrote it since `job` was read and its
        fence is the row's: `JobChanged` / `LeaseLost` otherwise, `KeyError` without the job."""
        row = job_row(job)
        async with self._conn(transaction=True) as conn:
            status = await conn.execute(
                _UPDATE_JOB, *stored_values(row, _SAVED), job.id, job.version, job.fence
            )
            if status == "UPDATE 0":
                await _check_fence(conn, job.id, job.fence)
                raise JobChanged(job.id)
            await _write_messages(conn, job)
        return dataclasses.replace(job, version=job.version + 1)

    async def _jobs(self, sql: str, *params: object) -> list[Job]:
        async with self._conn() as conn:
            rows = await conn.fetch(sql, *params)
        return [job_from_row(row) for row in rows]

    async def get(self, job_id: str) -> Job | None:
        found = await self._jobs(_SQL_GET, job_id)
        return found[0] if found else None

    async def find(self, platform: Platform, server: str, prefix: str) -> Sequence[Job]:
        high = prefix_end(prefix)
        if high is None:
            return await self._jobs(_SQL_FIND_FROM, prefix, platform, server, FIND_LIMIT)
        return await self._jobs(_SQL_FIND, prefix, high, platform, server, FIND_LIMIT)

    async def query(self, query: JobQuery) -> Sequence[Job]:
        sql, params = query_sql(query)
        async with self._conn() as conn:
            rows = await conn.fetch(numbered(sql), *params)
        return listed_jobs(rows)

    async def unfinished(self) -> Sequence[Job]:
        return await self._jobs(SQL_UNFINISHED)

    async def latest_in_thread(
        self, platform: Platform, server: str, thread: Conversation
    ) -> Job | None:
        where = (platform, server, thread.channel)
        if thread.thread is None:
            found = await self._jobs(_SQL_LATEST_IN_CHANNEL, *where)
        else:
            found = await self._jobs(_SQL_LATEST_IN_THREAD, *where, thread.thread)
        return found[0] if found else None

    async def by_message(self, platform: Platform, server: str, message: str) -> Job | None:
        found = await self._jobs(_SQL_BY_MESSAGE, platform, server, message)
        return found[0] if found else None

    async def recent_durations(self, endpoint: str, limit: int = 20) -> Sequence[float]:
        async with self._conn() as conn:
            rows = await conn.fetch(_SQL_RECENT_DURATIONS, endpoint, limit)
        return [
            (decode_time(row["finished_at"]) - decode_time(row["started_at"])).total_seconds()
            for row in rows
        ]

    # -- ImageStore ------------------------------------------------------------------------

    async def put_images(
        self, job_id: str, images: Sequence[StoredImage], *, fence: int | None = None
    ) -> None:
        async with self._conn(transaction=True) as conn:
            found = await conn.fetchval("SELECT fence FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            if found is None:
                raise KeyError(job_id)
            if fence is not None and found != fence:
                raise LeaseLost(job_id)
            await _write_images(conn, job_id, images)

    async def images(self, job_id: str, slot: str | None = None) -> Sequence[StoredImage]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT slot, name, data FROM images WHERE job_id = $1"
                " AND ($2::text IS NULL OR slot = $2) ORDER BY slot, idx",
                job_id,
                slot,
            )
        return [StoredImage(row["slot"], row["name"], bytes(row["data"])) for row in rows]

    async def delete_images(self, job_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute("DELETE FROM images WHERE job_id = $1", job_id)

    async def expire_images(self, before: datetime, limit: int = 500) -> Sequence[str]:
        async with self._conn(transaction=True) as conn:
            ids = [
                row["id"] for row in await conn.fetch(_SQL_EXPIRABLE, encode_time(before), limit)
            ]
            await conn.execute("DELETE FROM images WHERE job_id = ANY($1::text[])", ids)
            await conn.execute(
                "UPDATE jobs SET results_expired = 1, version = version + 1"
                " WHERE id = ANY($1::text[]) AND result_count > 0",
                ids,
            )
        return ids

    # -- ClaimStore ------------------------------------------------------------------------

    async def claim(self, key: str) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "INSERT INTO claims (key, created_at) VALUES ($1, now()) ON CONFLICT DO NOTHING",
                storable_text(key),
            )
        return bool(status == "INSERT 0 1")

    async def expire_claims(self, before: datetime) -> int:
        async with self._conn() as conn:
            status = await conn.execute("DELETE FROM claims WHERE created_at < $1", _aware(before))
        return int(status.split()[-1])

    # -- JobLeases, LeaderLeases, Replicas ---------------------------------------------------

    async def claim_jobs(
        self,
        owner: str,
        ttl: float,
        limit: int,
        platforms: Collection[Platform],
        *,
        own: bool = False,
    ) -> Sequence[Job]:
        names = list(platforms)
        jobs: list[Job] = []
        async with self._conn(transaction=True) as conn:
            sql = _SQL_CLAIM_OWN_JOBS if own else _SQL_CLAIM_JOBS
            for row in await conn.fetch(sql, owner, ttl, names, limit):
                try:
                    jobs.append(job_from_row(row))
                except UnreadableJobError as exc:
                    # As on SQLite (`bot.store.leases`): that job fails alone, the rest resume.
                    log.error(
                        "job %s: its stored row cannot be read; it fails: %s", exc.job_id, exc
                    )
                    await conn.execute(
                        _SQL_FAIL_UNREADABLE, str(exc), encode_time(datetime.now(UTC)), exc.job_id
                    )
        return sorted(jobs, key=lambda j: (j.created_at, j.id))

    async def claim_job(self, job_id: str, owner: str, ttl: float) -> Job | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(_SQL_CLAIM_JOB, owner, ttl, job_id)
        return None if row is None else job_from_row(row)

    async def renew_jobs(self, owner: str, fences: Mapping[str, int], ttl: float) -> set[str]:
        if not fences:
            return set()
        async with self._conn() as conn:
            rows = await conn.fetch(_SQL_RENEW, owner, ttl, list(fences), list(fences.values()))
        return {row["id"] for row in rows}

    async def release_job(self, job_id: str, owner: str, fence: int) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL"
                " WHERE id = $1 AND fence = $2 AND lease_owner = $3",
                job_id,
                fence,
                owner,
            )

    async def lead(self, name: str, owner: str, ttl: float) -> int | None:
        async with self._conn() as conn:
            fence = await conn.fetchval(_SQL_LEAD, owner, ttl, name)
        return None if fence is None else int(fence)

    async def resign(self, name: str, owner: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE leases SET until = '-infinity' WHERE name = $1 AND owner = $2", name, owner
            )

    async def heartbeat(self, replica: str, *, stale_writes: int = 0) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO replicas AS r (id, started_at, seen_at, stale_writes)"
                " VALUES ($1, now(), now(), $2) ON CONFLICT (id) DO UPDATE"
                " SET seen_at = excluded.seen_at, stale_writes = r.stale_writes + $2",
                replica,
                stale_writes,
            )

    async def replicas(self, since: datetime) -> Sequence[Replica]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT id, started_at, seen_at, stale_writes,"  # noqa: S608
                f" (SELECT count(*) FROM jobs WHERE {UNFINISHED}"
                " AND lease_owner = replicas.id) AS jobs"
                " FROM replicas WHERE seen_at >= $1 ORDER BY seen_at DESC, id",
                _aware(since),
            )
        return [
            Replica(
                row["id"],
                row["started_at"].astimezone(UTC),
                row["seen_at"].astimezone(UTC),
                int(row["jobs"]),
                int(row["stale_writes"]),
            )
            for row in rows
        ]

    async def schema_version(self) -> int:
        async with self._conn() as conn:
            return await schema_version(conn)

    # -- SharedReads (the ESD list scan, done once across replicas) ---------------------------

    async def ask(self, topic: str, keys: Collection[str]) -> Mapping[str, Posted]:
        if not keys:
            return {}
        async with self._conn() as conn:
            rows = await conn.fetch(
                "INSERT INTO shared_reads AS s (topic, key, asked_at)"
                " SELECT $1, key, now() FROM unnest($2::text[]) AS key"
                " ON CONFLICT (topic, key) DO UPDATE SET asked_at = excluded.asked_at"
                " RETURNING s.key, s.value, s.read_at",
                topic,
                sorted(set(keys)),
            )
        return {
            row["key"]: Posted(row["value"], row["read_at"].astimezone(UTC))
            for row in rows
            if row["read_at"] is not None
        }

    async def wanted(self, topic: str, within: float) -> set[str]:
        async with self._conn(transaction=True) as conn:
            await conn.execute(
                "DELETE FROM shared_reads WHERE topic = $1"
                " AND asked_at < now() - $2::float8 * interval '1 second'",
                topic,
                within,
            )
            rows = await conn.fetch("SELECT key FROM shared_reads WHERE topic = $1", topic)
        return {row["key"] for row in rows}

    async def post(self, topic: str, values: Mapping[str, str | None]) -> None:
        if not values:
            return
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE shared_reads AS s SET value = v.value, read_at = now()"
                " FROM unnest($2::text[], $3::text[]) AS v (key, value)"
                " WHERE s.topic = $1 AND s.key = v.key",
                topic,
                list(values),
                list(values.values()),
            )

    async def unask(self, topic: str, keys: Collection[str]) -> None:
        if not keys:
            return
        async with self._conn() as conn:
            await conn.execute(
                "DELETE FROM shared_reads WHERE topic = $1 AND key = ANY($2::text[])",
                topic,
                list(keys),
            )

    async def recent(self, topic: str, within: float) -> Mapping[str, Posted]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT key, value, read_at FROM shared_reads WHERE topic = $1"
                " AND read_at >= now() - $2::float8 * interval '1 second'",
                topic,
                within,
            )
        return {row["key"]: Posted(row["value"], row["read_at"].astimezone(UTC)) for row in rows}

    # -- SettingsStore ---------------------------------------------------------------------

    async def settings(self, platform: Platform, server: str, scope: str) -> dict[str, str]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT key, value FROM settings WHERE platform = $1 AND server = $2"
                " AND scope = $3",
                platform,
                server,
                scope,
            )
        return {row["key"]: row["value"] for row in rows}

    async def put_settings(
        self, platform: Platform, server: str, scope: str, values: Mapping[str, str | None]
    ) -> None:
        where = (platform, server, scope)
        async with self._conn(transaction=True) as conn:
            for key, value in values.items():
                if value is None:
                    await conn.execute(
                        "DELETE FROM settings WHERE platform = $1 AND server = $2"
                        " AND scope = $3 AND key = $4",
                        *where,
                        storable_text(key),
                    )
                else:
                    await conn.execute(
                        "INSERT INTO settings (platform, server, scope, key, value)"
                        " VALUES ($1, $2, $3, $4, $5)"
                        " ON CONFLICT (platform, server, scope, key)"
                        " DO UPDATE SET value = excluded.value",
                        *where,
                        storable_text(key),
                        storable_text(value),
                    )

    # -- OperatorQueries -------------------------------------------------------------------

    async def servers(self) -> Sequence[tuple[Platform, str]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT platform, server FROM jobs GROUP BY platform, server"
                " ORDER BY max(created_at) DESC"
            )
        return [(Platform(row["platform"]), row["server"]) for row in rows]

    async def usage(
        self, platform: Platform, server: str, by: Literal["user", "channel"], since: datetime
    ) -> Sequence[Usage]:
        sql = _SQL_USAGE_BY_USER if by == "user" else _SQL_USAGE_BY_CHANNEL
        async with self._conn() as conn:
            rows = await conn.fetch(sql, platform, server, encode_time(since), USAGE_LIMIT)
        return [Usage(row["key"], row["name"], int(row["jobs"]), row["gpu"]) for row in rows]

    async def failures(
        self, platform: Platform, server: str, since: datetime
    ) -> Sequence[tuple[str, int]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                _SQL_FAILURES, platform, server, encode_time(since), USAGE_LIMIT
            )
        return [(row["error"] or "", int(row["jobs"])) for row in rows]

    async def daily(self, platform: Platform, server: str, since: datetime) -> Sequence[DayCount]:
        async with self._conn() as conn:
            rows = await conn.fetch(_SQL_DAILY, platform, server, encode_time(since))
        return [DayCount(row["day"], int(row["jobs"]), int(row["failed"])) for row in rows]

    async def writable(self) -> bool:
        """Whether a write commits now (readiness), waiting at most briefly for a lock."""
        try:
            async with self._conn(transaction=True) as conn:
                await conn.execute(f"SET LOCAL statement_timeout = {PROBE_TIMEOUT_MS:d}")
                await conn.execute(
                    "INSERT INTO claims (key, created_at) VALUES ($1, now())"
                    " ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at",
                    PROBE_KEY,
                )
        except (RuntimeError, StorageError, asyncpg.PostgresError) as exc:
            log.warning("job database is not writable: %s", exc)
            return False
        return True


async def _check_fence(conn: Connection, job_id: str, fence: int) -> None:
    found = await conn.fetchval("SELECT fence FROM jobs WHERE id = $1", job_id)
    if found is None:
        raise KeyError(job_id)
    if found != fence:
        raise LeaseLost(job_id)


async def _write_messages(conn: Connection, job: Job) -> None:
    await conn.execute("DELETE FROM messages WHERE job_id = $1", job.id)
    ids = list(
        dict.fromkeys(
            (*(() if job.status_message is None else (job.status_message,)), *job.result_messages)
        )
    )
    if ids:
        caller = job.caller
        await conn.executemany(
            "INSERT INTO messages (platform, server, message_id, job_id) VALUES ($1, $2, $3, $4)",
            [(caller.platform, caller.server, message, job.id) for message in ids],
        )


async def _write_images(conn: Connection, job_id: str, images: Sequence[StoredImage]) -> None:
    """Replace the job's images of the given slots (inside the caller's transaction)."""
    slots = list(dict.fromkeys(image.slot for image in images))
    if not slots:
        return
    await conn.execute(
        "DELETE FROM images WHERE job_id = $1 AND slot = ANY($2::text[])", job_id, slots
    )
    await conn.copy_records_to_table(
        "images",
        records=image_records(job_id, images),
        columns=("job_id", "slot", "idx", "name", "data"),
    )


if TYPE_CHECKING:

    def _is_a_job_store(store: PostgresJobStore) -> JobStore:
        # mypy checks here that the class really is a structural `JobStore`.
        return store
