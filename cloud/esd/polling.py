"""Batched job status for `EsdBackend.statuses` (SPEC §4.1).

ESD has no batch status route, but `GET inferences?type=…` lists one task type's jobs newest
first with their status (`reference/esd-api.md` §4.5). `StatusBook` keeps what it knows about
every job in flight (task type, submission time, cold start) and answers the core's poller
from *snapshots* of those list pages: one scan per task type covers every job in flight of
that type, is reused by every poll within `list_interval`, and goes only as deep as the oldest
job in flight (at most `status_pages` pages). `GET inferences/{id}` is kept for the few cases a
list cannot answer: a failed job's reason when the list item lacks it, jobs that fell off the
pages, interrogate jobs resumed after a restart (their task type is unknown), and task types
with so few jobs in flight that one read per job is cheaper than a page. Jobs an interrogator
launched itself (`JobReader`, the SageMaker path) are read by that reader instead, because
ESD's REST API may not know them. A job sent to an endpoint at zero instances is reported as a
cold start until that endpoint lists an instance (re-read at most every `cold_check_interval`).
So the requests per round grow with the pages and the changes, not with the number of jobs in
flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from bot.errors import BackendError, BackendUnavailableError
from bot.model import BackendStatus, JobState
from bot.ports import LOST_JOB
from cloud.esd.payloads import EsdJob

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from bot.ports import PollTarget
    from cloud.esd.client import EsdClient
    from cloud.esd.interrogate import JobReader

_LOGGER = logging.getLogger(__name__)

# Bot and ESD clocks differ; a page older than the oldest job minus this ends a scan.
_CLOCK_SLACK = timedelta(minutes=10)
# Direct reads run this many at a time.
_DIRECT_CONCURRENCY = 8
# A job the poller has not asked about for this long is no longer followed (its driver ended
# without telling the backend); forgetting it keeps scans from digging for it.
_STALE_SECONDS = 3600.0
_WAITING = (JobState.CREATED, JobState.INPROGRESS)
# ESD answers 404: deleted on ESD, or lost (the ESD-compatible server restarted without it).
_GONE = LOST_JOB


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass
class Tracked:
    """What the backend remembers about one job in flight."""

    task_type: str | None  # None: an interrogate job resumed after a restart, type not yet read
    submitted_at: datetime
    endpoint: str | None = None
    cold: bool = False  # sent to an Async endpoint at zero instances that has not scaled out
    finished: EsdJob | None = None  # known terminal without asking (Real-time 200)
    checked: float = 0.0  # monotonic time of the last direct read, for fair rotation
    asked: float = 0.0  # monotonic time the poller last asked (or the job was submitted)
    own: bool = False  # read by the interrogator's `JobReader`, never from REST rows or pages


@dataclass
class _Snapshot:
    taken: float
    jobs: dict[str, EsdJob] = field(default_factory=dict)
    # The jobs in flight when it was taken: one of them missing from `jobs` fell off the
    # pages, and scanning again would not find it either.
    covered: set[str] = field(default_factory=set)


class StatusBook:
    """Statuses of many jobs from few requests; see the module docstring."""

    def __init__(
        self,
        client: EsdClient,
        *,
        on_terminal: Callable[[EsdJob], None],
        on_dropped: Callable[[str], None],
        instances: Callable[[str], Awaitable[int | None]],
        list_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._config = client.config
        self._on_terminal = on_terminal
        self._on_dropped = on_dropped  # a job no longer followed (stale), not known to be over
        self._instances = instances  # current instance count of an endpoint (cached upstream)
        self._list_interval = list_interval
        self._clock = clock
        self._tracked: dict[str, Tracked] = {}
        self._snapshots: dict[str, _Snapshot] = {}
        self._reader: JobReader | None = None

    def read_interrogations_with(self, reader: JobReader) -> None:
        """Interrogate jobs, submitted or resumed from now on, are read by `reader`."""
        self._reader = reader

    # -- What the backend tells the book -------------------------------------------------------

    def track(
        self,
        job_id: str,
        task_type: str,
        *,
        submitted_at: datetime,
        endpoint: str | None = None,
        cold: bool = False,
        finished: EsdJob | None = None,
        own: bool = False,
    ) -> None:
        self._tracked[job_id] = Tracked(
            task_type,
            _aware(submitted_at),
            endpoint=endpoint,
            cold=cold,
            finished=finished,
            asked=self._clock(),
            own=own,
        )

    def forget(self, job_id: str) -> None:
        self._tracked.pop(job_id, None)
        for snapshot in self._snapshots.values():
            snapshot.jobs.pop(job_id, None)

    def in_flight(self, task_type: str) -> int:
        return sum(1 for t in self._tracked.values() if t.task_type == task_type and not t.own)

    # -- The batch -----------------------------------------------------------------------------

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        learnt: dict[str, EsdJob] = {}
        errors: list[BackendError] = []
        groups: dict[str, list[str]] = {}
        direct: list[str] = []
        own: list[str] = []
        now = self._clock()
        for job_id in [i for i, t in self._tracked.items() if now - t.asked > _STALE_SECONDS]:
            self.forget(job_id)
            self._on_dropped(job_id)
        for target in targets:
            tracked = self._tracked.get(target.backend_id)
            if tracked is None:
                # A job from an earlier run: img2img unless the core says it is an interrogate.
                tracked = Tracked(
                    None if target.interrogate else "img2img",
                    _aware(target.submitted_at),
                    own=target.interrogate and self._reader is not None,
                )
                self._tracked[target.backend_id] = tracked
            tracked.asked = now
            if tracked.finished is not None:
                learnt[target.backend_id] = tracked.finished
            elif tracked.own:
                own.append(target.backend_id)
            elif tracked.task_type is None:
                direct.append(target.backend_id)
            else:
                groups.setdefault(tracked.task_type, []).append(target.backend_id)
        wanted_reasons: list[str] = []
        for task_type, ids in groups.items():
            try:
                found, waiting = await self._from_pages(task_type, ids)
            except BackendUnavailableError as exc:
                errors.append(exc)
                continue
            for job_id in ids:
                job = found.get(job_id)
                if job_id in waiting:
                    continue  # submitted after a fresh scan: the next scan covers it
                if job is None:
                    direct.append(job_id)
                elif job.state is JobState.FAILED and job.reason is None:
                    wanted_reasons.append(job_id)  # the list item may be trimmed: read the row
                else:
                    learnt[job_id] = job
        learnt.update(await self._read(wanted_reasons, errors, rotate=False))
        learnt.update(await self._read(direct, errors, rotate=True))
        learnt.update(await self._read_own(own, errors))
        warm = await self._warm_endpoints(learnt)
        answer = {
            job_id: self._report(job_id, job, warm)
            for job_id, job in learnt.items()
            if job.state is not None and job_id in self._tracked
        }
        if not answer and errors:
            raise errors[0]  # nothing learnt this round: let the poller back off
        return answer

    async def _warm_endpoints(self, learnt: dict[str, EsdJob]) -> set[str]:
        """Endpoints of cold jobs that now have an instance running."""
        names = set()
        for job_id, job in learnt.items():
            tracked = self._tracked.get(job_id)
            if tracked and tracked.cold and tracked.endpoint and job.state in _WAITING:
                names.add(tracked.endpoint)
        warm = set()
        for name in names:
            try:
                count = await self._instances(name)
            except BackendError as exc:
                _LOGGER.info("endpoint %s: instance count unknown (%s)", name, exc)
                continue
            if count is not None and count > 0:
                warm.add(name)
        return warm

    def _report(self, job_id: str, job: EsdJob, warm: set[str]) -> BackendStatus:
        state = job.state
        assert state is not None
        tracked = self._tracked[job_id]
        if tracked.task_type is None and job.task_type:
            tracked.task_type = job.task_type
        # A cold job waits for its endpoint to scale out from zero instances; neither ESD's
        # job row nor `startTime` (set at creation in v1.5) says so, the endpoint's count does.
        tracked.cold = tracked.cold and state in _WAITING and tracked.endpoint not in warm
        if state.terminal:
            self.forget(job_id)
            self._on_terminal(job)
        return BackendStatus(job_id, state, reason=job.reason, cold_start=tracked.cold)

    # -- List pages ----------------------------------------------------------------------------

    async def _from_pages(
        self, task_type: str, ids: list[str]
    ) -> tuple[dict[str, EsdJob], set[str]]:
        """The due jobs of one task type found in a fresh snapshot (scanning when needed), and
        the few submitted since that snapshot, which wait for the next scan unread."""
        snapshot = self._snapshots.get(task_type)
        fresh = snapshot is not None and self._clock() - snapshot.taken < self._list_interval
        if snapshot is not None and fresh:
            found = {i: snapshot.jobs[i] for i in ids if i in snapshot.jobs}
            newcomers = {i for i in ids if i not in found and i not in snapshot.covered}
            if len(newcomers) <= self._config.direct_threshold:
                # Jobs that fell off are read directly; a just-submitted job's state is known.
                return found, newcomers
        elif self.in_flight(task_type) <= self._config.direct_threshold:
            return {}, set()  # so few jobs that one read each is cheaper than a page
        snapshot = await self._scan(task_type)
        self._snapshots[task_type] = snapshot
        return {i: snapshot.jobs[i] for i in ids if i in snapshot.jobs}, set()

    async def _scan(self, task_type: str) -> _Snapshot:
        """Pages of `task_type`, newest first, until every job in flight of it was seen."""
        mine = {i: t for i, t in self._tracked.items() if t.task_type == task_type and not t.own}
        pending = set(mine)
        oldest = min((t.submitted_at for t in mine.values()), default=datetime.now(UTC))
        snapshot = _Snapshot(self._clock(), covered=set(pending))
        key: str | None = None
        for _ in range(self._config.status_pages):
            page = await self._client.list_inferences(
                task_type,
                limit=self._config.page_size,
                start_key=key,
                # With the user named, ESD returns full items (with `sagemakerRaw`,
                # `startTime`) and only the bot user's jobs (§4.5).
                username=self._config.username,
            )
            for job in page.jobs:
                snapshot.jobs[job.id] = job
                pending.discard(job.id)
            if not pending or page.next_key is None or page.next_key == key:
                break
            last = page.jobs[-1].created_at if page.jobs else None
            if last is not None and last < oldest - _CLOCK_SLACK:
                break  # newest first: the rest is older than every job in flight
            key = page.next_key
        return snapshot

    # -- Direct reads --------------------------------------------------------------------------

    async def _read_own(self, ids: list[str], errors: list[BackendError]) -> dict[str, EsdJob]:
        """The reader's own jobs. A failure joins `errors` like a transient REST one, so
        it never hides the statuses of other jobs from the poller."""
        if not ids or self._reader is None:
            return {}
        try:
            return await self._reader.read(ids)
        except BackendError as exc:
            errors.append(exc)
            return {}

    async def _read(
        self, ids: list[str], errors: list[BackendError], *, rotate: bool
    ) -> dict[str, EsdJob]:
        """`GET inferences/{id}` for some jobs; with `rotate`, at most `max_direct_per_round`,
        the least recently read first."""
        if rotate:
            # A job read a moment ago is not read again before `list_interval`: the core may
            # poll often, the backend decides how often ESD is asked (as the list scan does).
            now = self._clock()
            ids = [
                i
                for i in ids
                if i not in self._tracked or now - self._tracked[i].checked >= self._list_interval
            ]
        if rotate and len(ids) > self._config.max_direct_per_round:
            ids = sorted(ids, key=lambda i: self._tracked[i].checked if i in self._tracked else 0)
            ids = ids[: self._config.max_direct_per_round]
        if not ids:
            return {}
        gate = asyncio.Semaphore(_DIRECT_CONCURRENCY)

        async def one(job_id: str) -> EsdJob:
            async with gate:
                if job_id in self._tracked:
                    self._tracked[job_id].checked = self._clock()
                return await self._client.get_inference(job_id)

        results = await asyncio.gather(*(one(i) for i in ids), return_exceptions=True)
        found: dict[str, EsdJob] = {}
        for job_id, result in zip(ids, results, strict=True):
            if isinstance(result, BackendError) and result.status == 404:
                tracked = self._tracked.get(job_id)
                found[job_id] = _gone(job_id, tracked.task_type if tracked else None)
            elif isinstance(result, BackendUnavailableError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found[job_id] = result
        return found


def _gone(job_id: str, task_type: str | None) -> EsdJob:
    """A job ESD answers 404 for: failed, with that as the reason, so nobody waits forever."""
    return EsdJob.failed(job_id, _GONE, task_type or "")
