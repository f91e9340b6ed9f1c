"""Admission of a group of new jobs written in one transaction, on either engine.

A burst's inserts are written a group at a time (SQLite's worker, `bot.store.jobs.insert_group`;
PostgreSQL's `stores.postgres.inserts`). The group's facts are read once (the jobs counted by
the global cap, the ids and event claims already taken, each user's running jobs and jobs since
the day began); `GroupAdmission` then decides each job in order, a job admitted earlier in the
group counting for the later ones as it would have in the database, with the refusals of one
insert at a time: `EventClaimed`, `KeyError` for an id taken, `AdmissionRefused`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from bot.ports import AdmissionRefused, EventClaimed
from bot.store.rows import encode_time

if TYPE_CHECKING:
    from bot.model import Job
    from bot.ports import Admission

RUNNING_STATES: Final = ("created", "inprogress")

# (platform, server, user, day start in stored form or None): whose counts a decision needs.
UserDay = tuple[str, str, str, str | None]


def user_of(job: Job) -> tuple[str, str, str]:
    caller = job.caller
    return (caller.platform, caller.server, caller.user)


def day_of(admission: Admission | None) -> str | None:
    """The day start of `admission`'s daily quota, stored form (None: no quota)."""
    if admission is None or admission.max_today is None or admission.day_start is None:
        return None
    return encode_time(admission.day_start)


def user_limited(admission: Admission | None) -> bool:
    return admission is not None and (
        admission.max_running is not None or admission.max_today is not None
    )


def user_day(job: Job, admission: Admission | None) -> UserDay | None:
    """The counts `job`'s decision needs (None: no per-user limit)."""
    return (*user_of(job), day_of(admission)) if user_limited(admission) else None


class GroupAdmission:
    """Decides the jobs of one group in order (see the module)."""

    def __init__(
        self,
        running: int,
        taken: set[str],
        counts: dict[UserDay, tuple[int, int]],
        claimed: set[str],
    ) -> None:
        """`running`: jobs not yet terminal; `taken`: ids of the group already stored;
        `counts`: (running, since the day start) of each `user_day` of the group; `claimed`:
        event claims of the group already made."""
        self._running = running
        self._taken = taken
        self._counts = counts
        self._claimed = claimed
        self._admitted: dict[tuple[str, str, str], list[Job]] = {}

    def decide(
        self, job: Job, admission: Admission | None, claim: str | None
    ) -> BaseException | None:
        """None when `job` is admitted (and then counts for the next ones), else the refusal."""
        if claim is not None and claim in self._claimed:
            return EventClaimed(claim)
        if job.id in self._taken:
            return KeyError(job.id)
        key = user_of(job)
        mine = self._admitted.get(key, [])
        if admission is not None:
            refused = self._refusal(admission, key, mine)
            if refused is not None:
                return refused
        self._taken.add(job.id)
        if claim is not None:
            self._claimed.add(claim)
        self._admitted.setdefault(key, []).append(job)
        if job.state.value in RUNNING_STATES:
            self._running += 1
        return None

    def _refusal(
        self, admission: Admission, key: tuple[str, str, str], mine: list[Job]
    ) -> AdmissionRefused | None:
        if admission.max_in_flight is not None and self._running >= admission.max_in_flight:
            return AdmissionRefused("global", self._running)
        if not user_limited(admission):
            return None
        day = day_of(admission)
        running, today = self._counts[(*key, day)]
        if admission.max_running is not None:
            running += sum(1 for job in mine if job.state.value in RUNNING_STATES)
            if running >= admission.max_running:
                return AdmissionRefused("running", running)
        if day is not None and admission.max_today is not None:
            start = admission.day_start
            assert start is not None
            today += sum(1 for job in mine if job.created_at >= start)
            if today >= admission.max_today:
                return AdmissionRefused("daily", today)
        return None
