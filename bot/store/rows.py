"""Row mapping: a `Job` to the column values of its `jobs` row and back, in one place.

Stored forms: timestamps are fixed-width ISO 8601 text in UTC (`2026-11-25T12:01:33.000000+00:00`),
so text order is time order and rows stay readable in the sqlite3 shell; naive datetimes are
refused with `ValueError`. A job's typed options and parameters are versioned JSON
(`bot.records`); attachments, notes, roles and message ids are JSON text. A row that does not
read back is an `UnreadableJobError` naming the job, never a bare `ValueError`; a listing
leaves such a row out (`listed_jobs`).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from bot import records
from bot.errors import InvalidRecordError, UnreadableJobError
from bot.model import (
    AttachmentRef,
    Caller,
    Conversation,
    Delivery,
    Job,
    JobState,
    Platform,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

_LOGGER = logging.getLogger(__name__)

# Every column of `jobs`, in one place for INSERT, UPDATE and SELECT.
JOB_COLUMNS: Final = (
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
    "fence",
    "attempts",
)
# Written by claims only (`JobLeases`), never by `save`.
LEASE_COLUMNS: Final = ("id", "version", "fence", "attempts")


class Row(Protocol):
    """A row read by column name (`sqlite3.Row`, a dict, an asyncpg `Record`)."""

    def __getitem__(self, key: str, /) -> Any: ...


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


def dump(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def _time_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else encode_time(moment)


def job_row(job: Job) -> dict[str, object]:
    """The values of `job`'s row, by column name (`JOB_COLUMNS`)."""
    caller = job.caller
    return {
        "id": job.id,
        "platform": caller.platform,
        "server": caller.server,
        "user_id": caller.user,
        "user_name": caller.user_name,
        "channel": caller.conversation.channel,
        "thread": caller.conversation.thread,
        "is_admin": int(caller.is_admin),
        "roles": dump(list(caller.roles)),
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
        "attachments": dump([vars(ref) for ref in job.attachments]),
        "status_message": job.status_message,
        "job_channel": None if job.thread is None else job.thread.channel,
        "job_thread": None if job.thread is None else job.thread.thread,
        "error": job.error,
        "caption": job.caption,
        "infotext": job.infotext,
        "notes": dump(list(job.notes)),
        "delivery": job.delivery.value,
        "parent_id": job.parent_id,
        "result_count": job.result_count,
        "results_expired": int(job.results_expired),
        "result_messages": dump(list(job.result_messages)),
        "version": job.version,
        "fence": job.fence,
        "attempts": job.attempts,
    }


def job_from_row(row: Row) -> Job:
    """The `Job` of a row read with every column of `JOB_COLUMNS`; `UnreadableJobError` when
    it does not read (a record of another version, or a damaged column)."""
    try:
        return _job_from_row(row)
    except InvalidRecordError as exc:
        raise UnreadableJobError(row["id"], str(exc)) from exc
    except (ValueError, TypeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        if len(why) > 160:
            why = why[:159] + "…"
        raise UnreadableJobError(
            row["id"], f"this job's stored row cannot be read ({why}); start the job again"
        ) from exc


def listed_jobs(rows: Iterable[Row]) -> list[Job]:
    """The jobs of a listing's rows, leaving out and logging the rows that do not read: one
    damaged row hides itself, not the whole listing. (A listing only reads; a claim fails
    such a job, `JobLeases.claim_jobs`.)"""
    jobs: list[Job] = []
    unreadable: list[UnreadableJobError] = []
    for row in rows:
        try:
            jobs.append(job_from_row(row))
        except UnreadableJobError as exc:
            unreadable.append(exc)
    if unreadable:
        _LOGGER.error(
            "a job listing left out %d job(s) whose stored row cannot be read: %s",
            len(unreadable),
            "; ".join(f"{exc.job_id}: {exc}" for exc in unreadable),
        )
    return jobs


def _job_from_row(row: Row) -> Job:
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
        fence=row["fence"],
        attempts=row["attempts"],
    )
