"""Batched polling of every job in flight (SPEC §4.1).

A job's driver opens a `Watch` on its job (`with poller.watch(target, known) as watch:`) and
awaits `watch.next(within)` for the next change. The poller keeps the watches in a heap of due
times: a wake-up pops only the watches that are due and asks the backend about them in
`Backend.statuses` calls of at most `max_batch` jobs, so its work per wake-up grows with the
jobs that are due, not with the jobs in flight, and no one step of the event loop handles more
than `max_batch` answers. Each call runs as a task of its own (at most `max_calls` at once, each
bounded by `call_timeout`), so one slow answer delays only the jobs it was asked about, never
the next round. A job's interval starts at `interval` and grows by half each unchanged read up
to `max_interval`, with jitter so jobs submitted together spread out; a failed read doubles it.
Leaving the `with` block, whichever way, frees everything the poller kept for the job.

A watch also keeps what deadlines need (`bot.jobs`): the loop time of the last call that the
backend answered about the job (`read_at`), and of the first that said it was past `created`
(`started_at`), so a job is declared dead only on the backend's word, never because it could
not be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
from typing import TYPE_CHECKING, Any

from bot.errors import BackendError
from bot.model import JobState
from bot.tasks import Supervised, stop, supervise

if TYPE_CHECKING:
    from types import TracebackType

    from bot.model import BackendStatus
    from bot.ports import PollTarget, StatusReader

_LOGGER = logging.getLogger(__name__)

# Heap entries are [due, sequence, watch]; a closed watch's entry keeps its place with the
# watch set to None and is dropped when it comes up (at most `max_interval` later).
_DUE, _WATCH = 0, 2


class Watch:
    """One job followed by the poller; a context manager that frees it on exit."""

    __slots__ = (
        "_entry",
        "_nudged",
        "_poller",
        "_waiter",
        "_wake_after",
        "change",
        "closed",
        "interval",
        "latest",
        "read_at",
        "reported",
        "started_at",
        "target",
    )

    def __init__(self, poller: Poller, target: PollTarget, known: BackendStatus | None) -> None:
        self._poller = poller
        self.target = target
        self.reported = known  # the status the driver has been given
        self.change: BackendStatus | None = None  # a change not yet handed to the driver
        # The last answer, changed or not: a queue position or progress that moved while the
        # state stayed, for the driver's periodic status edits.
        self.latest: BackendStatus | None = None
        self.interval = poller.interval
        self.read_at: float | None = None  # loop time of the last call answered about the job
        self.started_at: float | None = None  # ... of the first that said it left `created`
        self.closed = False
        self._entry: list[Any] | None = None
        self._nudged = False  # nudged while a call was asking about it: ask again at once
        self._waiter: asyncio.Future[None] | None = None
        self._wake_after = math.inf

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop following the job and drop its bookkeeping (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._entry is not None:
            self._entry[_WATCH] = None
            self._entry = None
        self._poller._watches.discard(self)
        if self._poller._by_id.get(self.target.backend_id) is self:
            del self._poller._by_id[self.target.backend_id]
        self._wake()

    async def next(
        self, within: float, *, wake_on_read_after: float = math.inf
    ) -> BackendStatus | None:
        """The job's status once it differs from the last one returned (or `known`); None
        after `within` seconds, or as soon as a call made at or after `wake_on_read_after`
        (loop time) has answered about the job without a change."""
        if self.change is None and not self.closed:
            self._wake_after = wake_on_read_after
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            # A timer that wakes the waiter rather than `asyncio.timeout`: every job in flight
            # waits here, and a timeout scope costs ~0.5 KB more per job (issue 11).
            timer = loop.call_later(max(0.0, within), self._wake)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
                self._wake_after = math.inf
        change, self.change = self.change, None
        if change is not None:
            self.reported = change
        return change

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _read(self, status: BackendStatus, asked_at: float) -> None:
        """The backend answered about the job in a call made at `asked_at`."""
        self.read_at = asked_at
        self.latest = status
        if self.started_at is None and status.state is not JobState.CREATED:
            self.started_at = asked_at
        last = self.change or self.reported
        if (
            last is None
            or status.state is not last.state
            or status.cold_start != last.cold_start
            or status.note != last.note
        ):
            self.change = status
            self.interval = self._poller.interval
            self._wake()
        else:
            self.interval = min(self._poller.max_interval, self.interval * 1.5)
            if asked_at >= self._wake_after:
                self._wake()


class Poller:
    """One background task that polls the backend for every watched job."""

    def __init__(
        self,
        backend: StatusReader,
        *,
        interval: float,
        max_interval: float,
        jitter: float = 0.2,
        max_calls: int = 4,
        max_batch: int = 100,
        call_timeout: float = 60.0,
    ) -> None:
        self._backend = backend
        self.interval = interval
        self.max_interval = max_interval
        self._jitter = jitter
        self._call_timeout = call_timeout
        self._slots = asyncio.Semaphore(max_calls)
        # Jobs per call: a call's answer is handled in one step of the event loop (all of it,
        # when the backend answers without waiting, as the local one does), so a wake-up with
        # thousands due asks in several calls rather than standing the loop still (issue 11):
        # with 10,000 jobs in flight a call of 250 took 10-40 ms of CPU in one step.
        self._max_batch = max_batch
        # Bounded: one entry per job being watched, freed on every exit path of its `watch`.
        self._heap: list[list[Any]] = []
        self._sequence = itertools.count()
        self._watches: set[Watch] = set()
        self._by_id: dict[str, Watch] = {}  # backend id → watch, for `nudge`
        self._calls: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.requests = 0  # status calls made, for benchmarks and tests
        self.examined = 0  # heap entries looked at, for tests of the work per wake-up

    @property
    def watching(self) -> int:
        """Jobs the poller keeps anything for."""
        return len(self._watches)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("poller already started")
        self.supervised: Supervised | None = supervise("sdbot-poller", self._run)
        self._task = self.supervised.task

    async def aclose(self) -> None:
        await stop(self._task)
        self._task = None
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        for watch in list(self._watches):
            watch.close()
        self._heap.clear()

    def watch(self, target: PollTarget, known: BackendStatus | None) -> Watch:
        """Follow a job until the returned watch is closed (use it as a context manager)."""
        watch = Watch(self, target, known)
        self._watches.add(watch)
        self._by_id[target.backend_id] = watch
        self._schedule(watch, watch.interval * 0.5)
        return watch

    def nudge(self, backend_id: str) -> None:
        """Ask about a job at once: its backend learnt by itself that it changed (ESD's
        completion events). A job being asked about right now is asked again as soon as that
        call ends (its answer may predate the change); one not watched is left alone."""
        watch = self._by_id.get(backend_id)
        if watch is None:
            return
        if watch._entry is None:
            watch._nudged = True
            return
        watch._entry[_WATCH] = None
        watch.interval = self.interval
        self._schedule(watch, 0.0)

    def _schedule(self, watch: Watch, delay: float) -> None:
        entry = [asyncio.get_running_loop().time() + delay, next(self._sequence), watch]
        watch._entry = entry
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._wakeup.set()  # due before whatever the loop sleeps towards

    def _jittered(self, interval: float) -> float:
        return interval * random.uniform(1 - self._jitter, 1 + self._jitter)

    def _pop_due(self, now: float) -> list[Watch]:
        """The watches due at `now`, at most `max_batch` of them (the rest stay first)."""
        due: list[Watch] = []
        heap = self._heap
        limit = self._max_batch
        while heap and heap[0][_DUE] <= now and len(due) < limit:
            entry = heapq.heappop(heap)
            self.examined += 1
            watch = entry[_WATCH]
            if watch is not None:
                watch._entry = None
                due.append(watch)
        return due

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            self._wakeup.clear()
            now = loop.time()
            due = self._pop_due(now)
            if due:
                call = asyncio.create_task(self._call(due, now), name="sdbot-poll")
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)
                continue
            self._slots.release()
            delay = self._heap[0][_DUE] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()

    async def _call(self, due: list[Watch], asked_at: float) -> None:
        """One `Backend.statuses` call for `due`; holds one of the `max_calls` slots."""
        try:
            self.requests += 1
            answer: dict[str, BackendStatus] | None = None
            try:
                async with asyncio.timeout(self._call_timeout):
                    answer = await self._backend.statuses([w.target for w in due])
            except TimeoutError:
                _LOGGER.warning(
                    "status poll of %d job(s) took over %g s; asking again later",
                    len(due),
                    self._call_timeout,
                )
            except BackendError as exc:
                _LOGGER.warning("status poll failed for %d job(s): %s", len(due), exc)
            except Exception:
                _LOGGER.exception("status poll of %d job(s) raised", len(due))
            for watch in due:
                if watch.closed:
                    continue
                status = answer.get(watch.target.backend_id) if answer is not None else None
                if answer is None:
                    # The drivers' deadlines wait for a read; back off here meanwhile.
                    watch.interval = min(self.max_interval, watch.interval * 2)
                elif status is None:  # unknown this round
                    watch.interval = min(self.max_interval, watch.interval * 1.5)
                else:
                    watch._read(status, asked_at)
                if watch._nudged:
                    watch._nudged = False
                    watch.interval = self.interval
                    self._schedule(watch, 0.0)
                else:
                    self._schedule(watch, self._jittered(watch.interval))
        finally:
            self._slots.release()
