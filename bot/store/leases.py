"""`JobLeases`, `LeaderLeases` and `Replicas` on SQLite: who drives each job, who does the work
that runs once, and the replicas that reported.

One process owns a SQLite file, so these follow the rules of `bot.ports` with one owner: a claim
made at start (`own`) takes every unfinished job, whatever lease it has (left by a process that
has stopped), and a leader lease is always granted. A claimed row that does not read as a job
(`UnreadableJobError`) fails alone, with that error, so one damaged row never stops a restart.
Times are this machine's, which is the database's. Functions here run on the store's worker
thread.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from bot.errors import UnreadableJobError
from bot.ports import Replica
from bot.store.jobs import get
from bot.store.rows import decode_time, dump, encode_time
from bot.store.schema import transaction

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from bot.model import Job
    from bot.store.schema import Database

# The condition repeats the `jobs_unfinished` index's (see bot.store.schema).
UNFINISHED: Final = "(state IN ('created', 'inprogress') OR delivery <> 'done')"
SQL_CLAIMABLE: Final = (
    f"SELECT id FROM jobs WHERE {UNFINISHED}"  # noqa: S608
    " AND platform IN (SELECT value FROM json_each(:platforms))"
    " AND (lease_owner IS NULL OR lease_until < :now OR :own)"
    " ORDER BY created_at, id LIMIT :limit"
)
# A lease taken from another driver (not let go) counts an attempt.
SQL_CLAIM: Final = (
    "UPDATE jobs SET fence = fence + 1, attempts = attempts + (lease_owner IS NOT NULL),"
    " lease_owner = :owner, lease_until = :until WHERE id = :id"
)
# A claimed job whose row does not read: failed, nothing left to deliver, its lease let go.
# Positional: PostgreSQL uses it too (`stores.postgres`, its placeholders numbered).
SQL_FAIL_UNREADABLE: Final = (
    "UPDATE jobs SET state = 'failed', delivery = 'done', error = ?,"
    " finished_at = ?, lease_owner = NULL, lease_until = NULL, version = version + 1"
    " WHERE id = ?"
)
_LONG_AGO: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LOGGER = logging.getLogger(__name__)


def claim_jobs(
    db: Database,
    owner: str,
    until: datetime,
    now: datetime,
    limit: int,
    platforms: Sequence[str],
    own: bool,
) -> list[Job]:
    db.check_file()
    with transaction(db.conn):
        rows = db.conn.execute(
            SQL_CLAIMABLE,
            {
                "now": encode_time(now),
                "own": int(own),
                "platforms": dump(list(platforms)),
                "limit": limit,
            },
        ).fetchall()
        jobs = []
        for row in rows:
            db.conn.execute(SQL_CLAIM, {"owner": owner, "until": encode_time(until), "id": row[0]})
            try:
                job = get(db, row[0])
            except UnreadableJobError as exc:
                _fail_unreadable(db, exc, now)
                continue
            if job is not None:
                jobs.append(job)
        return jobs


def _fail_unreadable(db: Database, exc: UnreadableJobError, now: datetime) -> None:
    _LOGGER.error("job %s: its stored row cannot be read; it fails: %s", exc.job_id, exc)
    db.conn.execute(SQL_FAIL_UNREADABLE, (str(exc), encode_time(now), exc.job_id))


def claim_job(db: Database, job_id: str, owner: str, until: datetime, now: datetime) -> Job | None:
    db.check_file()
    with transaction(db.conn):
        claimed = db.conn.execute(
            f"{SQL_CLAIM} AND {UNFINISHED}"
            " AND (lease_owner IS NULL OR lease_owner = :owner OR lease_until < :now)",
            {"owner": owner, "until": encode_time(until), "now": encode_time(now), "id": job_id},
        )
        return get(db, job_id) if claimed.rowcount else None


def renew_jobs(db: Database, owner: str, fences: Mapping[str, int], until: datetime) -> set[str]:
    db.check_file()
    renewed = set()
    with transaction(db.conn):
        for job_id, fence in fences.items():
            cursor = db.conn.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND fence = ? AND lease_owner = ?",
                (encode_time(until), job_id, fence, owner),
            )
            if cursor.rowcount:
                renewed.add(job_id)
    return renewed


def release_job(db: Database, job_id: str, owner: str, fence: int) -> None:
    db.check_file()
    with transaction(db.conn):
        db.conn.execute(
            "UPDATE jobs SET lease_owner = NULL, lease_until = NULL"
            " WHERE id = ? AND fence = ? AND lease_owner = ?",
            (job_id, fence, owner),
        )


def lead(db: Database, name: str, owner: str, until: datetime, now: datetime) -> int:
    db.check_file()
    with transaction(db.conn):
        row = db.conn.execute(
            "SELECT owner, until, fence FROM leases WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            fence = 1
        elif row["owner"] == owner and row["until"] >= encode_time(now):
            fence = row["fence"]  # held: extended
        else:
            fence = row["fence"] + 1  # expired, or left by a process that has stopped
        db.conn.execute(
            "INSERT INTO leases (name, owner, until, fence) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
            " until = excluded.until, fence = excluded.fence",
            (name, owner, encode_time(until), fence),
        )
    return int(fence)


def resign(db: Database, name: str, owner: str) -> None:
    with transaction(db.conn):
        db.conn.execute(
            "UPDATE leases SET until = ? WHERE name = ? AND owner = ?",
            (encode_time(_LONG_AGO), name, owner),
        )


def heartbeat(db: Database, replica: str, now: datetime, stale_writes: int) -> None:
    db.check_file()
    with transaction(db.conn):
        db.conn.execute(
            "INSERT INTO replicas (id, started_at, seen_at, stale_writes) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at,"
            " stale_writes = replicas.stale_writes + excluded.stale_writes",
            (replica, encode_time(now), encode_time(now), stale_writes),
        )


def replicas(db: Database, since: datetime) -> list[Replica]:
    rows = db.conn.execute(
        "SELECT id, started_at, seen_at, stale_writes,"  # noqa: S608
        f" (SELECT COUNT(*) FROM jobs WHERE {UNFINISHED} AND lease_owner = replicas.id) AS jobs"
        " FROM replicas WHERE seen_at >= ? ORDER BY seen_at DESC, id",
        (encode_time(since),),
    )
    return [
        Replica(
            row["id"],
            decode_time(row["started_at"]),
            decode_time(row["seen_at"]),
            row["jobs"],
            row["stale_writes"],
        )
        for row in rows
    ]
