"""Batched job status for `EsdBackend.statuses` (SPEC §4.1).

ESD has no batch status route, but `GET inferences?type=…` lists one task type's jobs newest
first with their status (`reference/esd-api.md` §4.5). `StatusBook` keeps what it knows about
every job in flight (task type, cold start) and answers the core's poller from the rows of
those list pages. Where each job sits on the pages, and which page to read next, is
`cloud.esd.pages`: each page is read from a bookmark (a `last_evaluated_key` seen before), the
first round walks down until every job in flight was seen or `status_pages` pages were read,
and later rounds read the page expected to show the most ended jobs, at
`list_pages_per_second` on average whatever the number of jobs in flight, each page at most
every `list_interval`; none of it compares ESD's clock with the bot's. A job a page shows
ending is asked about at once (`on_change`), not at the poller's next turn. Each read answers a
job once: the core takes an answer for a read made when it asked, so a row reused later must
not refresh a job's deadline with old news. With completion events flowing the pages are a
backstop read in the background: no poll waits for them.

`GET inferences/{id}` is kept for what a list cannot answer: a failed job's reason when the list
item lacks it, jobs the pages did not reach, interrogate jobs resumed after a restart (their
task type is unknown), and task types with so few jobs in flight that one read per job is
cheaper than a page. Those reads (but the failure reasons, one per failed job) share a budget
of `direct_per_second`, least recently read first; a call waits for them at most
`_READ_WAIT` seconds and a slower read finishes in the background for the next call, so one slow
read never holds up the answer about the other jobs. Jobs an interrogator launched itself
(`JobReader`, the SageMaker path) are read by that reader instead, because ESD's REST API may
not know them. A job sent to an endpoint at zero instances is reported as a cold start until that
endpoint lists an instance (re-read at most every `cold_check_interval`).

With several replicas on one store (`share_scans`), the pages are read on the replica leading
the scan, for the jobs of all, and the others read what it found from the store; a completion
event taken by a replica that does not follow its job is handed over through the store to the
one that does (`share_events`, `run_handed_events`; `cloud.esd.sharing`).

Bookkeeping per call is proportional to the jobs asked about: jobs are kept in the order they
were last asked about (so forgetting stale ones looks only at stale ones) and counted per task
type; a round's is proportional to the pages it reads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.errors import BackendError, BackendUnavailableError, StorageError
from bot.model import BackendStatus, JobState
from bot.ports import LOST_JOB
from bot.recent import Recent
from bot.tasks import TaskSet
from cloud.esd.events import settle_delays
from cloud.esd.pages import Listing, Page, Tokens
from cloud.esd.payloads import NO_REASON, EsdJob, is_unlistable
from cloud.esd.sharing import LOOK_INTERVAL, REFRESH_INTERVAL

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from bot.ports import PollTarget
    from cloud.esd.client import EsdClient
    from cloud.esd.events import Completion
    from cloud.esd.interrogate import JobReader
    from cloud.esd.pages import Segment
    from cloud.esd.sharing import SharedEvents, SharedScans

_LOGGER = logging.getLogger(__name__)

# Direct reads run this many at a time; a call waits this long for them (the rest finish in
# the background and answer the next call).
_DIRECT_CONCURRENCY = 8
_READ_WAIT = 2.0
# A job the poller has not asked about for this long is no longer followed (its driver ended
# without telling the backend); forgetting it keeps scans from digging for it.
_STALE_SECONDS = 3600.0
# Jobs whose end was reported, kept until the core releases them (bounded): the poller asks
# about a job again until its driver has written the row, and a driver that reads its row
# again follows the job anew; both are answered from here, not from a list scan.
_MAX_ENDED = 10_000
_WAITING = (JobState.CREATED, JobState.INPROGRESS)
# ESD answers 404: deleted on ESD, or lost (the ESD-compatible server restarted without it).
_GONE = LOST_JOB


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(slots=True)
class Tracked:
    """What the backend remembers about one job in flight."""

    task_type: str | None  # None: an interrogate job resumed after a restart, type not yet read
    submitted_at: datetime
    endpoint: str | None = None
    cold: bool = False  # sent to an Async endpoint at zero instances that has not scaled out
    finished: EsdJob | None = None  # known terminal without asking (Real-time 200)
    checked: float = -math.inf  # monotonic time of the last direct read, for fair rotation
    asked: float = 0.0  # monotonic time the poller last asked (or the job was submitted)
    own: bool = False  # read by the interrogator's `JobReader`, never from REST rows or pages


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
        # Least recently asked first, so stale jobs are found at the front. Bounded, like
        # `_by_type`, `_reading` and `_handoffs`: jobs in flight only (`forget` on release and
        # cancel); `_listings` and `_scanning` hold one entry per task type.
        self._tracked: OrderedDict[str, Tracked] = OrderedDict()
        self._ended: Recent[str, EsdJob] = Recent(_MAX_ENDED)
        self._launching: set[str] = set()  # created, start not yet answered (`launching`)
        self._by_type: dict[str, set[str]] = {}  # task type → ids read from its pages
        # Per task type: where its jobs sit on the list pages, and the rows read (`pages`).
        self._listings: dict[str, Listing] = {}
        # Replicas: the jobs of other replicas the scan of a type looks for (`share_scans`).
        self._others: dict[str, set[str]] = {}
        # The round of page reads under way per task type: the poller's calls share it.
        self._scanning: dict[str, asyncio.Task[None]] = {}
        self._reading: dict[str, asyncio.Task[EsdJob]] = {}  # direct reads still running
        self._gate = asyncio.Semaphore(_DIRECT_CONCURRENCY)
        self._direct = Tokens(max(1.0, self._config.direct_per_second), clock())
        self._reader: JobReader | None = None
        # Completion events (`complete`): while they flow, scans and rotating reads are only a
        # backstop, `backstop_interval` apart; `on_change` asks the poller about a job at once.
        self._events_on = False
        self._backstop_interval = list_interval
        self._backstop_pages_per_second = self._config.list_pages_per_second
        self._settle_delays = settle_delays(15.0, first=0.15)
        # Called with a job id when an event ended it, so the core's poller asks at once.
        self.on_change: Callable[[str], None] = lambda _job_id: None
        self._handoffs: dict[str, asyncio.Future[None]] = {}
        self._settling = asyncio.Semaphore(_DIRECT_CONCURRENCY * 2)  # event-driven reads at once
        self._sharing: SharedScans | None = None  # replicas: see `share_scans`
        # Replicas: events handed over (`share_events`). Jobs tracked here not yet asked for in
        # the store, and jobs whose event is being handled (both bounded by the jobs tracked).
        self._shared_events: SharedEvents | None = None
        self._unshared: set[str] = set()
        self._completing: set[str] = set()
        self._handed = TaskSet("esd events handed over")
        # Events handed over for jobs still being started here, kept until `track` (bounded:
        # a start that fails leaves its entry behind).
        self._early: Recent[str, Completion] = Recent(1000)

    def share_scans(self, sharing: SharedScans) -> None:
        """Several replicas follow jobs of one ESD: a scan runs on the replica leading it,
        for the jobs of all, and the others read what it found (`cloud.esd.sharing`)."""
        self._sharing = sharing

    def share_events(self, shared: SharedEvents) -> None:
        """Several replicas consume one events queue: an event for a job another replica
        follows is handed over to it, and events handed over for jobs followed here are
        handled (`run_handed_events` looks for them)."""
        self._shared_events = shared
        self._unshared.update(i for i, t in self._tracked.items() if not t.own)

    @property
    def shares_events(self) -> bool:
        return self._shared_events is not None

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
        self.forget(job_id, following=True)
        self._add(
            job_id,
            Tracked(
                task_type,
                _aware(submitted_at),
                endpoint=endpoint,
                cold=cold,
                finished=finished,
                asked=self._clock(),
                own=own,
            ),
        )
        early = self._early.pop(job_id, None)
        if early is not None:
            self._take_handed([early])

    async def launching(self, job_id: str) -> None:
        """ESD created the job and it is being started: not tracked yet, but not a stranger.
        With events handed over between replicas, its events are asked for now, before the
        start, so none can reach another replica first."""
        self._launching.add(job_id)
        if self._shared_events is not None:
            await self._share([job_id])

    def launched(self, job_id: str) -> None:
        self._launching.discard(job_id)

    def _add(self, job_id: str, tracked: Tracked) -> None:
        self._tracked[job_id] = tracked
        if tracked.task_type is not None and not tracked.own:
            self._listable(job_id, tracked.task_type)
        shared = self._shared_events
        if shared is not None and not tracked.own and not shared.asked(job_id):
            self._unshared.add(job_id)

    def forget(self, job_id: str, *, following: bool = False) -> None:
        """Drop what the book keeps about a job (`following`: it is tracked anew at once, so
        its events stay asked for)."""
        self._ended.pop(job_id, None)
        tracked = self._tracked.pop(job_id, None)
        if tracked is not None and tracked.task_type is not None:
            self._by_type.get(tracked.task_type, set()).discard(job_id)
            listing = self._listings.get(tracked.task_type)
            if listing is not None:
                listing.remove(job_id)
            if self._sharing is not None:
                self._sharing.ended(tracked.task_type, job_id)
        reading = self._reading.pop(job_id, None)
        if reading is not None:
            reading.cancel()
        handed = self._handoffs.pop(job_id, None)
        if handed is not None and not handed.done():
            handed.set_result(None)
        if self._shared_events is not None and not following:
            self._unshared.discard(job_id)
            self._shared_events.ended(job_id)

    def _listable(self, job_id: str, task_type: str) -> None:
        """A job to look for on `task_type`'s list pages."""
        self._by_type.setdefault(task_type, set()).add(job_id)
        self._listing(task_type).place(job_id)

    def _listing(self, task_type: str) -> Listing:
        listing = self._listings.get(task_type)
        if listing is None:
            listing = self._listings[task_type] = Listing(
                max_depth=self._config.status_pages,
                page_size=self._config.page_size,
                now=self._clock(),
            )
        return listing

    def in_flight(self, task_type: str) -> int:
        return len(self._by_type.get(task_type, ()))

    def _drop_stale(self, now: float) -> None:
        while self._tracked:
            job_id, tracked = next(iter(self._tracked.items()))
            if now - tracked.asked <= _STALE_SECONDS:
                break
            self.forget(job_id)
            self._on_dropped(job_id)

    # -- The batch -----------------------------------------------------------------------------

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        learnt: dict[str, EsdJob] = {}
        errors: list[BackendError] = []
        groups: dict[str, list[str]] = {}
        direct: list[str] = []
        own: list[str] = []
        now = self._clock()
        self._drop_stale(now)
        for target in targets:
            tracked = self._tracked.get(target.backend_id)
            ended = self._ended.get(target.backend_id) if tracked is None else None
            if ended is not None:
                learnt[target.backend_id] = ended  # reported over already: the same answer
                continue
            if tracked is None:
                # A job from an earlier run: img2img unless the core says it is an interrogate.
                tracked = Tracked(
                    None if target.interrogate else "img2img",
                    _aware(target.submitted_at),
                    own=target.interrogate and self._reader is not None,
                )
                self._add(target.backend_id, tracked)
            tracked.asked = now
            self._tracked.move_to_end(target.backend_id)
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
                    continue  # not read since it was last answered: its page comes round
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
            if job.state is not None and (job_id in self._tracked or job_id in self._ended)
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
        tracked = self._tracked.get(job_id)
        if tracked is None:  # an end reported before (`_ended`)
            return BackendStatus(job_id, state, reason=job.reason)
        if tracked.task_type is None and job.task_type:
            tracked.task_type = job.task_type
            if not tracked.own:
                self._listable(job_id, job.task_type)
        # A cold job waits for its endpoint to scale out from zero instances; neither ESD's
        # job row nor `startTime` (set at creation in v1.5) says so, the endpoint's count does.
        tracked.cold = tracked.cold and state in _WAITING and tracked.endpoint not in warm
        if state.terminal:
            self.forget(job_id)
            self._ended[job_id] = job
            self._on_terminal(job)
        return BackendStatus(job_id, state, reason=job.reason, cold_start=tracked.cold)

    # -- Completion events --------------------------------------------------------------------

    def follow_events(
        self,
        *,
        backstop_interval: float,
        backstop_pages_per_second: float,
    ) -> None:
        """Completion events will come through `complete`; while `events_flowing(True)`,
        list scans and rotating reads run only every `backstop_interval` seconds (and at most
        `backstop_pages_per_second` pages on average) to catch lost events."""
        self._backstop_interval = backstop_interval
        self._backstop_pages_per_second = backstop_pages_per_second

    def events_flowing(self, flowing: bool) -> None:
        """The events queue answers (True) or stopped answering (False: poll as usual)."""
        self._events_on = flowing
        for listing in self._listings.values():
            # Leaving backstop mode: a follower's next look is due at once, not in a minute
            # (pages come round at the polling rate from the next call on).
            listing.not_before = -math.inf

    def _interval(self) -> float:
        return self._backstop_interval if self._events_on else self._list_interval

    def _pages_per_second(self) -> float:
        rate = self._config.list_pages_per_second
        return min(rate, self._backstop_pages_per_second) if self._events_on else rate

    async def complete(self, event: Completion, *, handoff_wait: float = 30.0) -> bool:
        """Record what a completion event says; True once it is handled (the message may go).

        Unknown ids (other users of the stack, jobs already finished) and duplicates are
        handled by doing nothing: the first terminal word about a job wins. The event only
        says when to look: a success event arrives before ESD's own Lambda has stored the
        images and set `succeed`, so the job is re-read with a short back-off until ESD says
        it is over (that read also carries the result URLs); a failure event whose row never
        turns terminal ends the job with the event's reason. The answer waits (up to
        `handoff_wait`) until the poller has handed the outcome to the core, which writes the
        job's row next.
        """
        job_id = event.inference_id
        tracked = self._tracked.get(job_id)
        if tracked is None and job_id in self._launching:
            # A job that ended before the answer to its start came (a loaded bot): SQS delivers
            # the event again after its visibility timeout, when the job is tracked.
            return False
        if tracked is None and self._shared_events is not None:
            # Another replica's job, or a stranger's: the replica following it (if any)
            # finds it in the store within `LOOK_INTERVAL`.
            try:
                await self._shared_events.hand_over(event)
            except StorageError as exc:
                _LOGGER.warning("event for %s not handed over (%s): kept in the queue", job_id, exc)
                return False
            return True
        if tracked is None or tracked.own or tracked.finished is not None:
            return True
        if job_id in self._completing:
            return True  # a duplicate while the first is handled
        self._completing.add(job_id)
        try:
            return await self._complete(job_id, event, tracked, handoff_wait)
        finally:
            self._completing.discard(job_id)

    async def _complete(
        self, job_id: str, event: Completion, tracked: Tracked, handoff_wait: float
    ) -> bool:
        # ESD's row is the authority (its Lambda turns the same event into the row, and a
        # contradicting or stray event must not win); the event says when to look.
        job = await self._settle(job_id)
        if job is None and event.succeeded:
            return False  # ESD has not said it is over: SQS delivers the event again
        if job is None or (job.state is JobState.FAILED and job.reason is None):
            failed = EsdJob.failed(job_id, event.reason or NO_REASON, tracked.task_type or "")
            job = failed if job is None or event.reason else job
        now_tracked = self._tracked.get(job_id)
        if now_tracked is None or now_tracked.finished is not None:
            return True  # the poller learnt it meanwhile
        now_tracked.finished = job
        handed = self._handoffs.get(job_id)
        if handed is None:
            handed = self._handoffs[job_id] = asyncio.get_running_loop().create_future()
        self.on_change(job_id)
        try:
            async with asyncio.timeout(handoff_wait):
                await asyncio.shield(handed)
        except TimeoutError:
            _LOGGER.info("job %s: the poller has not asked about it yet", job_id)
        return True

    async def run_handed_events(self) -> None:
        """Look for events other replicas handed over for jobs followed here, every
        `LOOK_INTERVAL`, and handle each as if taken from the queue here; ask for the jobs
        tracked since the last look (resumed or taken over from a replica that stopped). Run
        supervised while events are handed over (`share_events`); `aclose` ends what it
        started."""
        shared = self._shared_events
        if shared is None:
            return
        refreshed = self._clock()
        while True:
            await asyncio.sleep(LOOK_INTERVAL)
            try:
                await self._share(list(self._unshared))
                if self._tracked or self._launching or shared.unasking:
                    self._take_handed(await shared.look(self._clock()))
                if self._clock() - refreshed >= REFRESH_INTERVAL:
                    await shared.refresh()
                    refreshed = self._clock()
            except StorageError as exc:
                _LOGGER.warning("esd events: cannot look for events handed over: %s", exc)

    async def _share(self, ids: list[str]) -> None:
        """Ask for the events of `ids` in the store; handle those already handed over."""
        if not ids or self._shared_events is None:
            return
        try:
            events = await self._shared_events.follow(ids)
        except StorageError as exc:
            _LOGGER.warning("esd events: cannot ask for %d job(s)' events: %s", len(ids), exc)
            return
        self._unshared.difference_update(ids)
        self._take_handed(events)

    def _take_handed(self, events: Sequence[Completion]) -> None:
        for event in events:
            tracked = self._tracked.get(event.inference_id)
            if tracked is None and event.inference_id in self._launching:
                self._early[event.inference_id] = event  # handled once `track` has it
                continue
            if tracked is None or tracked.finished is not None:
                continue
            if event.inference_id in self._completing:
                continue
            self._handed.spawn(self.complete(event), name=f"esd-event-{event.inference_id}")

    async def aclose(self) -> None:
        """End what the book runs in the background: events handed over being handled, and
        scans and reads nobody waits for (a backstop scan), before the client closes."""
        await self._handed.aclose()
        tasks = [*self._scanning.values(), *self._reading.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _settle(self, job_id: str) -> EsdJob | None:
        """Read the job, after each of the settle delays, until ESD says it is terminal; None
        when it has not by the last. `BackendUnavailableError` propagates (the event stays in
        the queue). The first delay gives ESD's Lambda time to store the images, so a job
        usually costs one read."""
        for delay in self._settle_delays:
            await asyncio.sleep(delay)
            try:
                async with self._settling:
                    job = await self._client.get_inference(job_id)
            except BackendError as exc:
                if exc.status != 404:
                    raise
                tracked = self._tracked.get(job_id)
                return _gone(job_id, tracked.task_type if tracked else None)
            if job.state is not None and job.state.terminal:
                return job
        return None

    # -- List pages ----------------------------------------------------------------------------

    async def _from_pages(
        self, task_type: str, ids: list[str]
    ) -> tuple[dict[str, EsdJob], set[str]]:
        """The due jobs of one task type found on the pages read (reading when a round is
        due), and those that wait for the next read of their page unread (not read yet, or
        answered from their last read already). The others were not found on the pages: read
        them on their own.

        With events flowing the pages are only a backstop, and they are read in the
        background: a poll never waits for them, so the poller's call that carries a job an
        event has just ended answers at once, not after pages of thousands of jobs (which took
        ~1.8 s at 2,000). Its jobs wait unread until the round is done.
        """
        listing = self._listing(task_type)
        now = self._clock()
        if listing.looked is None:
            if self.in_flight(task_type) <= self._config.direct_threshold:
                return {}, set()  # so few jobs that one read each is cheaper than a page
            listing.looked = now
        if self._events_on and not listing.read_once:
            # The first backstop round waits one backstop interval after the book first looked,
            # and as long as its pages take at the backstop's page rate, like every later one
            # (events are not lost by a restart: they wait in the queue). Until then every job
            # waits for it unread.
            first = listing.looked + max(
                self._interval(), self._pages_for(task_type) / self._pages_per_second()
            )
            if now < first:
                return {}, set(ids)
        if listing.due(now, self._pages_per_second(), self._interval()) <= now:
            scan = self._scan_in_background(task_type)
            if not self._events_on:
                # Shielded: one caller giving up does not cancel the round the others wait for.
                await asyncio.shield(scan)
        found, waiting, _lost = listing.answer(ids)
        return found, waiting

    def _pages_for(self, task_type: str) -> int:
        """The pages a walk of `task_type` would read if every job in flight were on them."""
        pages = math.ceil(self.in_flight(task_type) / self._config.page_size)
        return max(1, min(self._config.status_pages, pages))

    def _scan_in_background(self, task_type: str) -> asyncio.Task[None]:
        """The round of `task_type` under way, started if there is none. A failed round is
        tried again one interval later (a poll awaiting it hears the error; a backstop round
        nobody awaits is logged)."""
        scan = self._scanning.get(task_type)
        if scan is not None:
            return scan
        scan = asyncio.create_task(self._scan(task_type), name=f"esd-scan-{task_type}")
        self._scanning[task_type] = scan

        def done(finished: asyncio.Task[None]) -> None:
            if self._scanning.get(task_type) is finished:
                del self._scanning[task_type]
            if finished.cancelled():
                return
            error = finished.exception()
            if error is None:
                return
            self._listing(task_type).not_before = self._clock() + self._interval()
            if self._events_on:
                _LOGGER.warning("backstop scan of %s failed: %s", task_type, error)

        scan.add_done_callback(done)
        return scan

    async def _scan(self, task_type: str) -> None:
        """One round of `task_type`'s pages (`cloud.esd.pages`): the segment expected to show
        the most ended jobs, and every segment that read found further down, at most
        `status_pages` pages. A job its pages showed ending is asked about at once
        (`on_change`)."""
        listing = self._listing(task_type)
        if self._sharing is not None:
            # Replicas: the pages are read on the replica leading the scan, for everyone's jobs.
            if not await self._sharing.lead(task_type, self._interval()):
                found, missing = await self._sharing.follow(
                    task_type, self._by_type.get(task_type, set())
                )
                listing.learn(found, missing)
                listing.not_before = self._clock() + self._interval()
                self._ended_on_pages(found.values())
                return
            self._look_for_others(task_type, listing, await self._sharing.wanted(task_type))
        seen: list[str] = []
        lost: list[str] = []
        read: list[Segment] = []
        rate, interval = self._pages_per_second(), self._interval()
        while len(read) < self._config.status_pages:
            segment = listing.choose(
                self._clock(), min_interval=interval, pages_per_second=rate, read=read
            )
            if segment is None:
                break
            read.append(segment)
            try:
                page = await self._client.list_inferences(
                    task_type,
                    limit=self._config.page_size,
                    start_key=segment.key,
                    # With the user named, ESD returns full items (with `sagemakerRaw`,
                    # `startTime`) and only the bot user's jobs (§4.5).
                    username=self._config.username,
                )
            except BackendError as exc:
                if not is_unlistable(exc):
                    raise
                # ESD cannot list a page holding a captioned interrogate row: the segment's
                # jobs are read one by one.
                lost += listing.lose(segment).lost
                continue
            result = listing.record(segment, Page(page.jobs, page.next_key), self._clock())
            lost += result.lost
            seen += result.seen
            self._ended_on_pages(listing.rows[i] for i in result.ended)
        if self._sharing is not None:
            others = self._others.get(task_type, set())
            found = {i: row for i in seen if i in others and (row := listing.rows.get(i))}
            await self._sharing.post(task_type, found, [*found, *(i for i in lost if i in others)])
            # Held until this replica's next round (which extends it); with nothing left to
            # look for, one interval: another replica with jobs takes it soon after.
            now = self._clock()
            due = listing.due(now, rate, interval)
            await self._sharing.lead(task_type, due - now if due < math.inf else interval)

    def _look_for_others(self, task_type: str, listing: Listing, wanted: set[str]) -> None:
        """The leader's pages look for the jobs other replicas asked about too."""
        own = self._by_type.get(task_type, set())
        others = wanted - own
        before = self._others.get(task_type, set())
        for job_id in before - others - own:
            listing.remove(job_id)
        for job_id in others - before:
            listing.place(job_id)
        self._others[task_type] = others

    def _ended_on_pages(self, rows: Iterable[EsdJob]) -> None:
        """Jobs followed here that a page (or the leader's post) showed ending: the poller
        asks about them at once rather than at its next turn."""
        for row in rows:
            tracked = self._tracked.get(row.id)
            if tracked is not None and row.state is not None and row.state.terminal:
                self.on_change(row.id)

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
        """`GET inferences/{id}` for some jobs; with `rotate`, within the per-second budget,
        the least recently read first. Waits at most `_READ_WAIT`; a read still running then
        answers a later call."""
        if rotate:
            # A job read a moment ago is not read again before `list_interval`: the core may
            # poll often, the backend decides how often ESD is asked (as the list scan does).
            now = self._clock()
            running = [i for i in ids if i in self._reading]
            fresh = [
                i
                for i in ids
                if i not in self._reading and now - self._checked(i) >= self._interval()
            ]
            fresh.sort(key=self._checked)
            rate = self._config.direct_per_second  # at most a second's worth at once
            self._direct.count(self._clock(), rate, max(1.0, rate))
            ids = running + fresh[: self._direct.take(len(fresh))]
        if not ids:
            return {}
        tasks = [self._reading.get(i) or self._start_read(i) for i in ids]
        await asyncio.wait(tasks, timeout=_READ_WAIT)
        found: dict[str, EsdJob] = {}
        for job_id, task in zip(ids, tasks, strict=True):
            if not task.done():
                continue  # still reading: the next call collects it
            if self._reading.get(job_id) is task:
                del self._reading[job_id]
            if task.cancelled():
                continue
            result = task.exception()
            if isinstance(result, BackendError) and result.status == 404:
                tracked = self._tracked.get(job_id)
                found[job_id] = _gone(job_id, tracked.task_type if tracked else None)
            elif isinstance(result, BackendUnavailableError):
                errors.append(result)
            elif result is not None:
                raise result
            else:
                found[job_id] = task.result()
        return found

    def _checked(self, job_id: str) -> float:
        tracked = self._tracked.get(job_id)
        return tracked.checked if tracked is not None else -math.inf

    def _start_read(self, job_id: str) -> asyncio.Task[EsdJob]:
        async def read() -> EsdJob:
            async with self._gate:
                tracked = self._tracked.get(job_id)
                if tracked is not None:
                    tracked.checked = self._clock()
                return await self._client.get_inference(job_id)

        task = asyncio.create_task(read(), name=f"esd-read-{job_id}")
        # A read nobody collects (its job was forgotten) must not warn about its exception.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._reading[job_id] = task
        return task


def _gone(job_id: str, task_type: str | None) -> EsdJob:
    """A job ESD answers 404 for: failed, with that as the reason, so nobody waits forever."""
    return EsdJob.failed(job_id, _GONE, task_type or "")
