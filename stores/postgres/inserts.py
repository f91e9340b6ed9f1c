"""New jobs inserted in groups: the acknowledgement path of a burst on PostgreSQL.

Every new job's admission is counted under the global admission lock (`Admission.max_in_flight`
holds across replicas), so inserts one at a time would queue on that lock, each holding it for
the whole of its transaction's round trips (lock, counts, insert, messages, commit) while the
event loop is busy with the burst itself. `GroupInsert` does what SQLite's worker does
(`bot.store.worker`): the inserts that arrive while one group is being written wait and go in
the next group, one transaction each: the locks once, the counts once (every user of the group
in one query), the decisions in order in Python (a job admitted earlier in the group counts for
the later ones, as it would have in the database), the rows in one COPY, one commit.

A group that fails for a reason of its own (a row that breaks a constraint, an id another
replica took meanwhile) is rolled back and its jobs inserted one by one, so each caller gets its
own job's outcome; nobody is told "inserted" before the commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import TYPE_CHECKING, Final

import asyncpg

from bot.ports import AdmissionRefused, EventClaimed
from bot.store.admission import GroupAdmission, UserDay, day_of, user_limited, user_of
from bot.store.rows import JOB_COLUMNS, job_row

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from contextlib import AbstractAsyncContextManager
    from datetime import datetime

    from bot.model import Job
    from bot.ports import Admission, StoredImage
    from stores.postgres.schema import Connection

# Jobs written in one transaction at most (a burst larger than this takes several).
GROUP_MAX: Final = 500
# Transaction-scoped lock keys (`pg_advisory_xact_lock`): held only while one transaction runs,
# so they hold behind connection poolers in transaction mode too.
GLOBAL_ADMISSION: Final = 0x5DB07_0002
# What one job's row or inputs can make the server (or the driver, encoding them) refuse.
_JOB_ERRORS: Final = (asyncpg.PostgresError, asyncpg.DataError)

# One statement for the group's own facts, read under its locks: the transaction's time (the
# `now()` every statement of it sees), the jobs counted by the global cap, the ids already taken,
# the event claims already made.
_SQL_GROUP_FACTS: Final = (
    "SELECT now() AS now,"
    " (SELECT count(*) FROM jobs WHERE state IN ('created', 'inprogress')) AS running,"
    " ARRAY(SELECT id FROM jobs WHERE id = ANY($1::text[])) AS taken,"
    " ARRAY(SELECT key FROM claims WHERE key = ANY($2::text[])) AS claimed"
)
# Each (platform, server, user, day start) of the group: the user's jobs not yet terminal, and
# those created since the day began (none without a day start).
_SQL_USER_COUNTS: Final = (
    "SELECT k.i,"
    " (SELECT count(*) FROM jobs j WHERE j.platform = k.p AND j.server = k.s"
    " AND j.user_id = k.u AND j.state IN ('created', 'inprogress')) AS running,"
    " (SELECT count(*) FROM jobs j WHERE j.platform = k.p AND j.server = k.s"
    " AND j.user_id = k.u AND j.created_at >= k.d) AS today"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
    " WITH ORDINALITY AS k (p, s, u, d, i)"
)
# Taken in the order of the array given (sorted), so two groups never wait on each other in a
# cycle.
_SQL_LOCK_USERS: Final = (
    "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM unnest($1::text[]) AS k"
)


def user_lock(job: Job) -> str:
    """The key of the lock that serialises one user's admissions."""
    return "\x1f".join(user_of(job))


def storable_text(value: str) -> str:
    """`value` as a text column can hold it. PostgreSQL's text cannot hold NUL: one (in a user
    name, a backend's error, a file name) is stored as U+FFFD. JSON columns escape it, so
    prompts and options keep theirs."""
    return value.replace("\x00", "\ufffd")


def stored_values(row: dict[str, object], names: Sequence[str]) -> list[object]:
    """The row's values of `names`, in order, text as a column holds it (`storable_text`)."""
    values = (row[name] for name in names)
    return [storable_text(value) if isinstance(value, str) else value for value in values]


def image_records(
    job_id: str, images: Sequence[StoredImage]
) -> list[tuple[str, str, int, str, bytes]]:
    """The `images` rows of a job's images (job_id, slot, idx, name, data): each slot's
    numbered from 0 in the order given."""
    next_idx: dict[str, int] = {}
    records = []
    for image in images:
        idx = next_idx.get(image.slot, 0)
        next_idx[image.slot] = idx + 1
        records.append((job_id, image.slot, idx, storable_text(image.name), image.data))
    return records


@dataclasses.dataclass(eq=False)
class Pending:
    """One `insert` call waiting for its group."""

    job: Job
    values: list[object]  # the row's, in `JOB_COLUMNS` order
    inputs: Sequence[StoredImage]
    admission: Admission | None
    owner: str | None
    ttl: float
    day: str | None  # the day start of its daily quota, stored form (None: no quota)
    future: asyncio.Future[None]
    claim: str | None = None  # the platform event's claim, made with the row


class GroupInsert:
    """The store's inserts, written a group at a time by one task (started when inserts
    arrive, ended when none wait).

    `connection` lends a pooled connection (errors of a lost server translated); `alone`
    inserts one job in a transaction of its own on it (the path of a lone insert, and of each
    job of a group that failed); `unavailable` are the errors that mean the database is out of
    reach, which fail the whole group rather than one job.
    """

    def __init__(
        self,
        connection: Callable[[], AbstractAsyncContextManager[Connection]],
        alone: Callable[[Connection, Pending], Awaitable[None]],
        unavailable: tuple[type[Exception], ...],
    ) -> None:
        self._connection = connection
        self._alone = alone
        self._unavailable = unavailable
        self._waiting: list[Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def insert(
        self,
        job: Job,
        inputs: Sequence[StoredImage],
        admission: Admission | None,
        owner: str | None,
        ttl: float,
        claim: str | None = None,
    ) -> None:
        # A naive time fails here, for this caller alone.
        values = stored_values(job_row(job), JOB_COLUMNS)
        day = day_of(admission)
        future = asyncio.get_running_loop().create_future()
        pending = Pending(job, values, tuple(inputs), admission, owner, ttl, day, future, claim)
        self._waiting.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="sdbot-pg-inserts")
        await future

    async def aclose(self) -> None:
        """Let the inserts already waiting be written."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write(self) -> None:
        while self._waiting:
            group = [p for p in self._waiting[:GROUP_MAX] if not p.future.cancelled()]
            del self._waiting[:GROUP_MAX]
            if not group:
                continue
            try:
                outcomes = await self._outcomes(group)
            except BaseException as exc:  # nothing of the group was written
                outcomes = [exc] * len(group)
                if isinstance(exc, asyncio.CancelledError):
                    _settle(group, outcomes)
                    raise
            _settle(group, outcomes)

    async def _outcomes(self, group: list[Pending]) -> list[BaseException | None]:
        async with self._connection() as conn:
            if len(group) > 1:
                try:
                    async with conn.transaction():
                        return await self._grouped(conn, group)
                except _JOB_ERRORS as exc:
                    if self._out_of_reach(exc):
                        raise
                    # A job of the group broke a constraint: find which, one by one.
            return [await self._one(conn, pending) for pending in group]

    async def _one(self, conn: Connection, pending: Pending) -> BaseException | None:
        try:
            await self._alone(conn, pending)
        except (KeyError, AdmissionRefused, EventClaimed, *_JOB_ERRORS) as exc:
            if self._out_of_reach(exc):
                raise
            return exc
        return None

    def _out_of_reach(self, exc: Exception) -> bool:
        # The driver's DataError (a value it cannot encode) is an InterfaceError too.
        return isinstance(exc, self._unavailable) and not isinstance(exc, asyncpg.DataError)

    async def _grouped(self, conn: Connection, group: list[Pending]) -> list[BaseException | None]:
        if any(p.admission is not None and p.admission.max_in_flight is not None for p in group):
            await conn.execute("SELECT pg_advisory_xact_lock($1)", GLOBAL_ADMISSION)
        users = sorted({user_lock(p.job) for p in group if user_limited(p.admission)})
        if users:
            await conn.execute(_SQL_LOCK_USERS, users)
        claims = [p.claim for p in group if p.claim is not None]
        facts = await conn.fetchrow(_SQL_GROUP_FACTS, [p.job.id for p in group], claims)
        assert facts is not None
        counts = await self._user_counts(conn, group)
        decisions = GroupAdmission(
            int(facts["running"]), set(facts["taken"]), counts, set(facts["claimed"])
        )
        outcomes = [decisions.decide(p.job, p.admission, p.claim) for p in group]
        admitted = [p for p, outcome in zip(group, outcomes, strict=True) if outcome is None]
        if admitted:
            await _copy_group(conn, admitted, facts["now"])
        return outcomes

    async def _user_counts(
        self, conn: Connection, group: list[Pending]
    ) -> dict[UserDay, tuple[int, int]]:
        """(running, today) of each user of the group with limits, by (platform, server, user,
        day start)."""
        keys = sorted(
            {(*user_of(p.job), p.day) for p in group if user_limited(p.admission)},
            key=lambda k: (*k[:3], k[3] or ""),
        )
        if not keys:
            return {}
        rows = await conn.fetch(
            _SQL_USER_COUNTS, *(list(column) for column in zip(*keys, strict=True))
        )
        by_index = {int(row["i"]): (int(row["running"]), int(row["today"])) for row in rows}
        return {key: by_index[n] for n, key in enumerate(keys, start=1)}


async def _copy_group(conn: Connection, admitted: list[Pending], now: datetime) -> None:
    """The admitted jobs' rows, messages and inputs, each table in one COPY."""
    jobs = []
    messages = []
    images = []
    claims = [(p.claim, now) for p in admitted if p.claim is not None]
    for pending in admitted:
        job = pending.job
        until = None if pending.owner is None else now + timedelta(seconds=pending.ttl)
        jobs.append((*pending.values, pending.owner, until))
        caller = job.caller
        posted = (
            *(() if job.status_message is None else (job.status_message,)),
            *job.result_messages,
        )
        messages += [
            (caller.platform, caller.server, message, job.id) for message in dict.fromkeys(posted)
        ]
        images += image_records(job.id, pending.inputs)
    await conn.copy_records_to_table(
        "jobs", records=jobs, columns=(*JOB_COLUMNS, "lease_owner", "lease_until")
    )
    if messages:
        await conn.copy_records_to_table(
            "messages", records=messages, columns=("platform", "server", "message_id", "job_id")
        )
    if images:
        await conn.copy_records_to_table(
            "images", records=images, columns=("job_id", "slot", "idx", "name", "data")
        )
    if claims:
        # Another replica's claim of the same key made since the facts were read breaks the
        # COPY: the group is then inserted job by job, and that job is refused alone.
        await conn.copy_records_to_table("claims", records=claims, columns=("key", "created_at"))


def _settle(group: list[Pending], outcomes: Sequence[BaseException | None]) -> None:
    for pending, outcome in zip(group, outcomes, strict=True):
        if pending.future.done():  # its caller was cancelled meanwhile
            continue
        if outcome is None:
            pending.future.set_result(None)
        else:
            pending.future.set_exception(outcome)
