"""`JobRepo` on SQLite: the job rows, their message-id side table, and every job query.

The SQL is assembled from the constant column names in `bot.store.rows` only (hence the S608
waivers); every value is a bound parameter. Functions here run on the store's worker thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import sqlite3
import sys
from typing import TYPE_CHECKING, Final, TypeVar

from bot.ports import AdmissionRefused, EventClaimed, JobChanged, LeaseLost
from bot.store.admission import GroupAdmission, UserDay, user_day
from bot.store.images import write_images
from bot.store.rows import (
    JOB_COLUMNS,
    LEASE_COLUMNS,
    decode_time,
    encode_time,
    job_from_row,
    job_row,
    listed_jobs,
)
from bot.store.schema import transaction

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from datetime import datetime

    from bot.model import Conversation, Job, Platform
    from bot.ports import Admission, JobQuery, StoredImage
    from bot.store.schema import Database

_T = TypeVar("_T")

# At most this many jobs answer an id prefix; more means the prefix is ambiguous anyway.
FIND_LIMIT: Final = 5

_JOB_FIELDS: Final = ", ".join(f"jobs.{name}" for name in JOB_COLUMNS)
SELECT_JOBS: Final = f"SELECT {_JOB_FIELDS} FROM jobs"  # noqa: S608
INSERT_JOB: Final = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join(':' + name for name in JOB_COLUMNS)})"
)
# Compare-and-set: the row is written only if nobody wrote it since `job` was read.
_UPDATE_JOB: Final = (
    "UPDATE jobs SET "  # noqa: S608
    + ", ".join(f"{name} = :{name}" for name in JOB_COLUMNS if name not in LEASE_COLUMNS)
    + ", version = version + 1 WHERE id = :id AND version = :version AND fence = :fence"
)
_NEWEST_FIRST: Final = " ORDER BY jobs.created_at DESC, jobs.id DESC"

SQL_GET: Final = f"{SELECT_JOBS} WHERE id = ?"
# A range on the primary key rather than LIKE/GLOB, which SQLite would not run on the index. Ids
# are unique across servers, so the range holds a handful of rows; the unary `+` keeps the planner
# from walking a whole server's (platform, server, …) index instead.
SQL_FIND: Final = (
    f"{SELECT_JOBS} WHERE id >= :low AND id < :high"
    " AND +platform = :platform AND +server = :server ORDER BY id LIMIT :limit"
)
# For a prefix with no upper bound (empty, or only U+10FFFF characters).
SQL_FIND_FROM: Final = (
    f"{SELECT_JOBS} WHERE id >= :low"
    " AND +platform = :platform AND +server = :server ORDER BY id LIMIT :limit"
)
# The condition repeats the `jobs_unfinished` index's word for word (see MIGRATIONS).
SQL_UNFINISHED: Final = (
    f"{SELECT_JOBS} WHERE state IN ('created', 'inprogress') OR delivery <> 'done'"
    " ORDER BY created_at, id"
)
SQL_LATEST_IN_THREAD: Final = (
    f"{SELECT_JOBS} WHERE platform = ? AND server = ? AND job_channel = ? AND job_thread IS ?"
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
# Spelled as the `jobs_running` index (MIGRATIONS).
SQL_COUNT_RUNNING: Final = "SELECT COUNT(*) FROM jobs WHERE state IN ('created', 'inprogress')"
SQL_COUNT_USER_RUNNING: Final = (
    "SELECT COUNT(*) FROM jobs WHERE platform = ? AND server = ? AND user_id = ?"
    " AND state IN ('created', 'inprogress')"
)


def query_sql(query: JobQuery) -> tuple[str, list[object]]:
    """The SQL and parameters of a `jobs` query (also used by the query-plan tests)."""
    if query.limit < 0 or query.offset < 0:
        raise ValueError(f"limit and offset must be >= 0, got {query.limit}, {query.offset}")
    where = ["platform = ?", "server = ?"]
    params: list[object] = [query.platform, query.server]
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
    sql = f"{SELECT_JOBS} WHERE {' AND '.join(where)}{_NEWEST_FIRST} LIMIT ? OFFSET ?"
    return sql, params


def prefix_end(prefix: str) -> str | None:
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


def _jobs(db: Database, sql: str, params: Sequence[object] | dict[str, object]) -> list[Job]:
    return [job_from_row(row) for row in db.conn.execute(sql, params)]


def exists(db: Database, job_id: str) -> bool:
    return db.conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None


def _write_messages(db: Database, job: Job) -> None:
    db.conn.execute("DELETE FROM messages WHERE job_id = ?", (job.id,))
    ids = dict.fromkeys(
        (*(() if job.status_message is None else (job.status_message,)), *job.result_messages)
    )
    caller = job.caller
    db.conn.executemany(
        "INSERT INTO messages (platform, server, message_id, job_id) VALUES (?, ?, ?, ?)",
        [(caller.platform, caller.server, message, job.id) for message in ids],
    )


def insert(
    db: Database,
    job: Job,
    inputs: Sequence[StoredImage],
    admission: Admission | None = None,
    owner: str | None = None,
    until: datetime | None = None,
    claim: str | None = None,
    now: datetime | None = None,
) -> None:
    row = job_row(job)
    db.check_file()
    with transaction(db.conn):
        if claim is not None:
            claimed = db.conn.execute(
                "INSERT OR IGNORE INTO claims (key, created_at) VALUES (?, ?)",
                (claim, encode_time(now or job.created_at)),
            )
            if claimed.rowcount != 1:
                raise EventClaimed(claim)
        if exists(db, job.id):
            raise KeyError(job.id)
        if admission is not None:
            _admit(db, job, admission)
        db.conn.execute(INSERT_JOB, row)
        if owner is not None and until is not None:
            db.conn.execute(
                "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE id = ?",
                (owner, encode_time(until), job.id),
            )
        _write_messages(db, job)
        write_images(db, job.id, inputs)


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    """One `insert` waiting for its group (`insert_group`)."""

    job: Job
    inputs: Sequence[StoredImage]
    admission: Admission | None
    owner: str | None
    until: datetime | None
    claim: str | None
    now: datetime


# The statement shapes a group is read and written with, largest first: each is one statement
# (one step, one release of the interpreter lock) for that many rows or keys, and a burst of
# any size reuses these few cached statements; 128 rows of a job stay under SQLite's 32,766
# variables.
_SHAPES: Final = (128, 32, 8, 1)
# A row's values (`job_row`) in the order of `JOB_COLUMNS`.
_in_column_order: Final = operator.itemgetter(*JOB_COLUMNS)
_LEASED_COLUMNS: Final = (*JOB_COLUMNS, "lease_owner", "lease_until")
_MESSAGE_COLUMNS: Final = ("platform", "server", "message_id", "job_id")
_IMAGE_COLUMNS: Final = ("job_id", "slot", "idx", "name", "data")
# Each (platform, server, user, day start) of a group (as `k`, numbered `i`): the user's jobs
# not yet terminal, and those created since the day began (none without a day start).
_SQL_USER_COUNTS: Final = (
    "WITH k (i, p, s, u, d) AS (VALUES {values}) SELECT k.i,"
    " (SELECT COUNT(*) FROM jobs j WHERE j.platform = k.p AND j.server = k.s"
    " AND j.user_id = k.u AND j.state IN ('created', 'inprogress')),"
    " (SELECT COUNT(*) FROM jobs j WHERE j.platform = k.p AND j.server = k.s"
    " AND j.user_id = k.u AND j.created_at >= k.d)"
    " FROM k"
)


def _shaped(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """`items` in consecutive chunks of the sizes of `_SHAPES`."""
    start = 0
    for size in _SHAPES:
        while len(items) - start >= size:
            yield items[start : start + size]
            start += size


def _marks(columns: int, rows: int) -> str:
    row = f"({', '.join('?' * columns)})"
    return ", ".join([row] * rows)


def _insert_rows(
    db: Database, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]
) -> None:
    for chunk in _shaped(rows):
        db.conn.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES {_marks(len(columns), len(chunk))}",  # noqa: S608
            list(itertools.chain.from_iterable(chunk)),
        )


def insert_group(db: Database, group: Sequence[NewJob]) -> list[BaseException | None]:
    """Insert the jobs of a burst in one savepoint, each job's outcome in order: None when
    written, else what a lone `insert` raises for it.

    The group's facts are read once (`bot.store.admission`) and its rows written in a few
    statements per table, where `insert` runs about ten per job: under a burst the event loop
    is busy with the next commands, and each statement lets go of the interpreter lock, which
    the store's thread then waits to get back. A group that fails for a reason of its own (a
    row that breaks a constraint) is undone and its jobs inserted one by one."""
    db.check_file()
    outcomes: list[BaseException | None] = [None] * len(group)
    rows: dict[int, tuple[object, ...]] = {}
    for n, new in enumerate(group):
        try:  # a naive time fails its own job alone
            row = job_row(new.job)
            leased = new.owner is not None and new.until is not None
            until = encode_time(new.until) if leased and new.until else None
            claimed_at = encode_time(new.now)
        except ValueError as exc:
            outcomes[n] = exc
            continue
        owner = new.owner if leased else None
        rows[n] = (*_in_column_order(row), owner, until, claimed_at)
    try:
        with transaction(db.conn):
            _write_group(db, group, rows, outcomes)
    except sqlite3.Error:
        return [_alone(db, new) if n in rows else outcomes[n] for n, new in enumerate(group)]
    return outcomes


def _alone(db: Database, new: NewJob) -> BaseException | None:
    try:
        insert(db, new.job, new.inputs, new.admission, new.owner, new.until, new.claim, new.now)
    except (KeyError, AdmissionRefused, EventClaimed, sqlite3.Error) as exc:
        return exc
    return None


def _write_group(
    db: Database,
    group: Sequence[NewJob],
    rows: dict[int, tuple[object, ...]],
    outcomes: list[BaseException | None],
) -> None:
    members = [group[n] for n in rows]
    decisions = GroupAdmission(
        _running(db, members), _taken(db, members), _user_counts(db, members), _claimed(db, members)
    )
    jobs, messages, images, claims = [], [], [], []
    width = len(_LEASED_COLUMNS)
    for n, row in rows.items():
        new = group[n]
        job = new.job
        outcomes[n] = decisions.decide(job, new.admission, new.claim)
        if outcomes[n] is not None:
            continue
        jobs.append(row[:width])
        caller = job.caller
        posted = dict.fromkeys(
            (*(() if job.status_message is None else (job.status_message,)), *job.result_messages)
        )
        messages += [(caller.platform, caller.server, message, job.id) for message in posted]
        next_idx: dict[str, int] = {}
        for image in new.inputs:
            idx = next_idx.get(image.slot, 0)
            next_idx[image.slot] = idx + 1
            images.append((job.id, image.slot, idx, image.name, image.data))
        if new.claim is not None:
            claims.append((new.claim, row[width]))
    _insert_rows(db, "jobs", _LEASED_COLUMNS, jobs)
    _insert_rows(db, "messages", _MESSAGE_COLUMNS, messages)
    _insert_rows(db, "images", _IMAGE_COLUMNS, images)
    _insert_rows(db, "claims", ("key", "created_at"), claims)


def _running(db: Database, group: Sequence[NewJob]) -> int:
    """The jobs counted by the global cap, if a job of the group has one."""
    if all(new.admission is None or new.admission.max_in_flight is None for new in group):
        return 0
    return int(db.conn.execute(SQL_COUNT_RUNNING).fetchone()[0])


def _taken(db: Database, group: Sequence[NewJob]) -> set[str]:
    taken: set[str] = set()
    for chunk in _shaped([new.job.id for new in group]):
        sql = f"SELECT id FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})"  # noqa: S608
        taken.update(row[0] for row in db.conn.execute(sql, chunk))
    return taken


def _claimed(db: Database, group: Sequence[NewJob]) -> set[str]:
    claimed: set[str] = set()
    for chunk in _shaped([new.claim for new in group if new.claim is not None]):
        sql = f"SELECT key FROM claims WHERE key IN ({', '.join('?' * len(chunk))})"  # noqa: S608
        claimed.update(row[0] for row in db.conn.execute(sql, chunk))
    return claimed


def _user_counts(db: Database, group: Sequence[NewJob]) -> dict[UserDay, tuple[int, int]]:
    """(running, since the day start) of each user of the group with limits."""
    keys = list(dict.fromkeys(k for new in group if (k := user_day(new.job, new.admission))))
    counts: dict[UserDay, tuple[int, int]] = {}
    for chunk in _shaped(keys):
        sql = _SQL_USER_COUNTS.format(values=_marks(5, len(chunk)))
        params = [value for n, key in enumerate(chunk) for value in (n, *key)]
        for row in db.conn.execute(sql, params):
            counts[chunk[row[0]]] = (int(row[1]), int(row[2]))
    return counts


def _admit(db: Database, job: Job, admission: Admission) -> None:
    caller = job.caller
    if admission.max_in_flight is not None:
        running = int(db.conn.execute(SQL_COUNT_RUNNING).fetchone()[0])
        if running >= admission.max_in_flight:
            raise AdmissionRefused("global", running)
    if admission.max_running is not None:
        running = count_user_jobs(db, caller.platform, caller.server, caller.user, None)
        if running >= admission.max_running:
            raise AdmissionRefused("running", running)
    if admission.max_today is not None and admission.day_start is not None:
        today = count_user_jobs(
            db, caller.platform, caller.server, caller.user, admission.day_start
        )
        if today >= admission.max_today:
            raise AdmissionRefused("daily", today)


def save(db: Database, job: Job) -> Job:
    row = job_row(job)
    db.check_file()
    with transaction(db.conn):
        if db.conn.execute(_UPDATE_JOB, row).rowcount == 0:
            check_fence(db, job.id, job.fence)
            raise JobChanged(job.id)
        _write_messages(db, job)
    return dataclasses.replace(job, version=job.version + 1)


def check_fence(db: Database, job_id: str, fence: int) -> None:
    """`KeyError` without such a job, `LeaseLost` when its lease has another fence."""
    found = db.conn.execute("SELECT fence FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if found is None:
        raise KeyError(job_id)
    if found[0] != fence:
        raise LeaseLost(job_id)


def get(db: Database, job_id: str) -> Job | None:
    jobs = _jobs(db, SQL_GET, (job_id,))
    return jobs[0] if jobs else None


def find(db: Database, platform: Platform, server: str, prefix: str) -> list[Job]:
    high = prefix_end(prefix)
    return _jobs(
        db,
        SQL_FIND_FROM if high is None else SQL_FIND,
        {
            "low": prefix,
            "high": high,
            "platform": platform,
            "server": server,
            "limit": FIND_LIMIT,
        },
    )


def query(db: Database, sql: str, params: Sequence[object]) -> list[Job]:
    """Run a query built by `query_sql`; rows that do not read are left out (`listed_jobs`)."""
    return listed_jobs(db.conn.execute(sql, params))


def unfinished(db: Database) -> list[Job]:
    return _jobs(db, SQL_UNFINISHED, ())


def latest_in_thread(
    db: Database, platform: Platform, server: str, thread: Conversation
) -> Job | None:
    jobs = _jobs(db, SQL_LATEST_IN_THREAD, (platform, server, thread.channel, thread.thread))
    return jobs[0] if jobs else None


def by_message(db: Database, platform: Platform, server: str, message: str) -> Job | None:
    jobs = _jobs(db, SQL_BY_MESSAGE, (platform, server, message))
    return jobs[0] if jobs else None


def recent_durations(db: Database, endpoint: str, limit: int) -> list[float]:
    return [
        (decode_time(row["finished_at"]) - decode_time(row["started_at"])).total_seconds()
        for row in db.conn.execute(SQL_RECENT_DURATIONS, (endpoint, limit))
    ]


def count_user_jobs(
    db: Database, platform: Platform, server: str, user: str, since: datetime | None
) -> int:
    """A user's jobs created since `since`, or (without it) those not yet terminal."""
    if since is None:
        row = db.conn.execute(SQL_COUNT_USER_RUNNING, (platform, server, user))
    else:
        row = db.conn.execute(SQL_COUNT_USER_SINCE, (platform, server, user, encode_time(since)))
    return int(row.fetchone()[0])
