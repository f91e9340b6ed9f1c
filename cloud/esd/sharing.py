"""Replicas sharing one ESD (README "Run several replicas"): the list scan done once across
them (`SharedScans`), and completion events handed to the replica that follows the job
(`SharedEvents`).

Every replica follows its own jobs with a `StatusBook`; alone, each would scan ESD's list pages
for them, so N replicas would read N times the pages one replica reads. With `SharedScans`
wired (a store shared by replicas), a scan of a task type runs on the one replica holding that
type's leader lease (`bot.ports.LeaderLeases`, `esd-scan:<type>`), the same rules as
retention's: taken before the scan, held a little longer than the time to the next scan
(`GRACE`), extended at every scan. The holder looks for its own jobs and for every job the
other replicas asked about (`bot.ports.SharedReads`), reads the pages once, and posts what it
found for them; a job it looked for but did not find is posted as such, and its replica reads
it on its own (within `direct_per_second`, as a single replica does for jobs beyond the
pages). The others, at the times they would have scanned, ask the store instead: one query per
task type, no request to ESD. So ESD sees the list traffic of one replica however many run, and
a job costs the same requests as on one replica.

A holder that stops scanning (it has no job of that type left, or it died) stops extending the
lease; it runs out `GRACE` seconds after its next scan was due and the next replica that wants
a scan takes it. A store that fails makes a replica scan for its own jobs, as it would alone.
Posted values are `EsdJob`s as JSON, what the list item said; a job's row goes when its replica
stops following it, or when nobody asked about it for `keep` seconds.

Completion events: every replica consumes the one SQS queue (`cloud.esd.events`), so the event
of a job one replica follows often reaches another, which knows nothing of the job: alone, it
would delete the message as a stranger's, and the job would wait for the backstop scan (45 s
and more). Instead each replica asks, under topic `esd-events`, for every job it follows (before
the job is started, so no event can come first); a replica that takes an event for a job it does
not follow posts it there (`hand_over`) and deletes the message. The post lands only on a key
someone asked for, so another user's job (the topics carry the whole ESD stack's) leaves nothing
behind. The following replica looks for `recent` posts every `LOOK_INTERVAL` and handles the
event as if it had taken it itself; a replica that takes over a job (its replica died) finds an
event handed over before, in the answer to its own ask. Duplicates are harmless as on one
replica: the book handles an event once per job.

Why the store and not the queue: putting the message back (`ChangeMessageVisibility` 0) for
another replica to take would bounce it between replicas at random, each receive counting
towards the dead-letter queue's `maxReceiveCount` (docs/esd.md), and nothing would tell a
stranger's job from another replica's; the store already knows who follows what, in one
indexed row per job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from pydantic import TypeAdapter, ValidationError

from bot.errors import StorageError
from cloud.esd.events import Completion
from cloud.esd.payloads import EsdJob

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from datetime import datetime

    from bot.ports import LeaderLeases, Posted, SharedReads

_LOGGER = logging.getLogger(__name__)

# The scan's lease is held this long past the time the next scan is due: a holder late by less
# keeps it, one that stopped scanning hands it over after at most this.
GRACE: Final = 2.0
_JOB: Final = TypeAdapter(EsdJob)

EVENTS_TOPIC: Final = "esd-events"
# How often a replica looks for events handed to it; each look reaches back to the one before
# and `_LOOK_MARGIN` further, for posts whose statement began before that look and committed
# after it (and a slow store).
LOOK_INTERVAL: Final = 0.25
_LOOK_MARGIN: Final = 2.0
# A replica asks for the jobs it follows again this often, and drops every key nobody asked for
# in `_KEEP` (a replica that died leaves its asks behind; a job lasts at most an hour before
# the book stops following it).
REFRESH_INTERVAL: Final = 1200.0
_KEEP: Final = 3600.0
_CHUNK: Final = 1000  # keys per store call when asking for many
_EVENT: Final = TypeAdapter(Completion)


def _topic(task_type: str) -> str:
    return f"esd:{task_type}"


class SharedScans:
    """A replica's side of the shared scan: lead it, or follow what the leader posts."""

    def __init__(
        self, reads: SharedReads, leases: LeaderLeases, owner: str, *, keep: float = 300.0
    ) -> None:
        self._reads = reads
        self._leases = leases
        self._owner = owner
        self._keep = keep
        # Jobs this replica asked about, by task type, and those of them it stopped following
        # (told to the store at its next call). Bounded by the jobs in flight here.
        self._asked: dict[str, set[str]] = {}
        self._ended: dict[str, set[str]] = {}
        # When the leader last posted each of them, as `follow` last returned it.
        self._seen: dict[str, dict[str, datetime]] = {}

    async def lead(self, task_type: str, hold: float) -> bool:
        """Take or extend the scan's lease of `task_type` for `hold` (+ `GRACE`) seconds;
        whether this replica scans. A failing store: scan (for this replica's jobs)."""
        try:
            fence = await self._leases.lead(f"esd-scan:{task_type}", self._owner, hold + GRACE)
        except StorageError as exc:
            _LOGGER.warning("esd scan %s: the store failed, scanning alone: %s", task_type, exc)
            return True
        return fence is not None

    async def wanted(self, task_type: str) -> set[str]:
        """The jobs other replicas asked about (for the leader's scan)."""
        try:
            await self._tell_ended(task_type)
            return await self._reads.wanted(_topic(task_type), self._keep)
        except StorageError as exc:
            _LOGGER.warning("esd scan %s: cannot read what others follow: %s", task_type, exc)
            return set()

    async def post(
        self, task_type: str, found: Mapping[str, EsdJob], looked_for: Collection[str]
    ) -> None:
        """Post what the scan found about the jobs others asked about (`looked_for`)."""
        values = {
            job_id: None if (job := found.get(job_id)) is None else _JOB.dump_json(job).decode()
            for job_id in looked_for
        }
        try:
            await self._reads.post(_topic(task_type), values)
        except StorageError as exc:
            _LOGGER.warning("esd scan %s: could not post what it read: %s", task_type, exc)

    async def follow(
        self, task_type: str, ids: Collection[str]
    ) -> tuple[dict[str, EsdJob], set[str]]:
        """What the leader posted about `ids` since this replica last asked: the jobs it found,
        and the ids it looked for and did not find (read them directly). Ids it has not looked
        for yet, or not again since the last call, are in neither: the backstop's leader scans
        minutes apart, and a post returned again would pass an old read off as a new one
        (`StatusBook._answer`). A failing store: every id is "not found" (read directly,
        within the budget)."""
        self._asked.setdefault(task_type, set()).update(ids)
        try:
            await self._tell_ended(task_type)
            posted = await self._reads.ask(_topic(task_type), ids)
        except StorageError as exc:
            _LOGGER.warning("esd scan %s: cannot read the shared scan: %s", task_type, exc)
            return {}, set(ids)
        found: dict[str, EsdJob] = {}
        missing: set[str] = set()
        seen = self._seen.setdefault(task_type, {})
        for job_id, entry in posted.items():
            if seen.get(job_id) == entry.at:
                continue  # returned before: wait for the leader's next post
            seen[job_id] = entry.at
            if entry.value is None:
                missing.add(job_id)
                continue
            try:
                found[job_id] = _JOB.validate_json(entry.value)
            except ValidationError:
                missing.add(job_id)  # written by another version: read it directly
        return found, missing

    def ended(self, task_type: str | None, job_id: str) -> None:
        """This replica stopped following a job (its row goes at the next store call)."""
        if task_type is not None and job_id in self._asked.get(task_type, ()):
            self._asked[task_type].discard(job_id)
            self._seen.get(task_type, {}).pop(job_id, None)
            self._ended.setdefault(task_type, set()).add(job_id)

    async def _tell_ended(self, task_type: str) -> None:
        ended = self._ended.pop(task_type, set())
        if ended:
            try:
                await self._reads.unask(_topic(task_type), ended)
            except StorageError:
                self._ended.setdefault(task_type, set()).update(ended)
                raise


class SharedEvents:
    """A replica's side of completion events handed over between replicas (see the module).

    It remembers the jobs it asked for (bounded by the jobs this replica follows: `ended` lets
    each go), and when each post it returned was made, so a post is returned once.
    """

    def __init__(self, reads: SharedReads) -> None:
        self._reads = reads
        self._asked: set[str] = set()
        self._unasked: set[str] = set()  # ended here, told to the store at the next look
        self._seen: dict[str, datetime] = {}  # job → time of the post last returned
        self._looked: float | None = None  # when the last look began (the caller's clock)

    def asked(self, job_id: str) -> bool:
        return job_id in self._asked

    @property
    def unasking(self) -> bool:
        """Jobs ended here whose asks the next look lets go."""
        return bool(self._unasked)

    async def follow(self, ids: Collection[str]) -> list[Completion]:
        """Ask for events about jobs this replica follows; returns events handed over for them
        already. `StorageError` propagates (ask again later)."""
        new = sorted(set(ids) - self._asked)
        events: list[Completion] = []
        for start in range(0, len(new), _CHUNK):
            chunk = new[start : start + _CHUNK]
            posted = await self._reads.ask(EVENTS_TOPIC, chunk)
            self._asked.update(chunk)
            self._unasked.difference_update(chunk)
            events += self._fresh(posted)
        return events

    def ended(self, job_id: str) -> None:
        """This replica stopped following the job (its ask goes at the next look)."""
        if job_id in self._asked:
            self._asked.discard(job_id)
            self._unasked.add(job_id)
        self._seen.pop(job_id, None)

    async def hand_over(self, event: Completion) -> None:
        """Post an event about a job this replica does not follow, for the one that does (kept
        only if some replica asked for it). `StorageError` propagates (keep the message)."""
        await self._reads.post(EVENTS_TOPIC, {event.inference_id: _EVENT.dump_json(event).decode()})

    async def look(self, now: float) -> list[Completion]:
        """Events handed over since the last look (`now`: the caller's monotonic clock) for
        jobs this replica follows. `StorageError` propagates (the next look reaches back)."""
        unasked, self._unasked = self._unasked, set()
        try:
            if unasked:
                await self._reads.unask(EVENTS_TOPIC, unasked)
        except StorageError:
            self._unasked |= unasked - self._asked
            raise
        within = _LOOK_MARGIN + (0.0 if self._looked is None else now - self._looked)
        posted = await self._reads.recent(EVENTS_TOPIC, within)
        self._looked = now
        return self._fresh({k: v for k, v in posted.items() if k in self._asked})

    async def refresh(self) -> None:
        """Ask again for every job followed, and drop the asks nobody renewed in `_KEEP`."""
        asked = sorted(self._asked)
        for start in range(0, len(asked), _CHUNK):
            await self._reads.ask(EVENTS_TOPIC, asked[start : start + _CHUNK])
        await self._reads.wanted(EVENTS_TOPIC, _KEEP)

    def _fresh(self, posted: Mapping[str, Posted]) -> list[Completion]:
        events = []
        for job_id, entry in posted.items():
            if entry.value is None or self._seen.get(job_id) == entry.at:
                continue
            self._seen[job_id] = entry.at
            try:
                events.append(_EVENT.validate_json(entry.value))
            except ValidationError:
                _LOGGER.warning("esd events: an event handed over for %s is unreadable", job_id)
        return events
