"""Batched polling of every job in flight (SPEC §4.1).

Each job's driver asks `Poller.wait` for the next change of its job; the poller gathers every
job that is due into one `Backend.statuses` call, so the number of backend requests grows with
the number of *due* jobs per round, not with the number of waiters. A job's interval starts at
`interval` and grows by half each round without change up to `max_interval`, with jitter so
jobs submitted together spread out. Transient backend errors back everyone off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.errors import BackendError
from bot.tasks import stop

if TYPE_CHECKING:
    from bot.model import BackendStatus
    from bot.ports import Backend, PollTarget

_LOGGER = logging.getLogger(__name__)


@dataclass
class _Watch:
    target: PollTarget
    known: BackendStatus | None
    future: asyncio.Future[BackendStatus]
    due: float
    interval: float
    errors: int = field(default=0)


class Poller:
    """One background task that polls the backend for every waiting job."""

    def __init__(
        self, backend: Backend, *, interval: float, max_interval: float, jitter: float = 0.2
    ) -> None:
        self._backend = backend
        self._interval = interval
        self._max_interval = max_interval
        self._jitter = jitter
        self._watches: dict[str, _Watch] = {}
        self._intervals: dict[str, float] = {}  # back-off survives between waits of one job
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.requests = 0  # status calls made, for benchmarks and tests

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("poller already started")
        self._task = asyncio.create_task(self._run(), name="sdbot-poller")

    async def aclose(self) -> None:
        await stop(self._task)
        self._task = None
        for watch in self._watches.values():
            watch.future.cancel()
        self._watches.clear()

    def forget(self, backend_id: str) -> None:
        """Drop a finished job's back-off state."""
        self._intervals.pop(backend_id, None)

    async def wait(
        self, target: PollTarget, known: BackendStatus | None, within: float
    ) -> BackendStatus | None:
        """The job's status once it differs from `known`, or None after `within` seconds."""
        loop = asyncio.get_running_loop()
        interval = self._intervals.get(target.backend_id, self._interval)
        watch = _Watch(target, known, loop.create_future(), loop.time() + interval * 0.5, interval)
        self._watches[target.backend_id] = watch
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(watch.future), within)
        except TimeoutError:
            return None
        finally:
            if self._watches.get(target.backend_id) is watch:
                del self._watches[target.backend_id]
            self._intervals[target.backend_id] = watch.interval

    def _jittered(self, interval: float) -> float:
        return interval * random.uniform(1 - self._jitter, 1 + self._jitter)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due = [w for w in self._watches.values() if w.due <= now and not w.future.done()]
            if not due:
                pending = [w.due for w in self._watches.values() if not w.future.done()]
                delay = min(pending) - now if pending else None
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), delay)
                continue
            await self._poll(due)

    async def _poll(self, due: list[_Watch]) -> None:
        loop = asyncio.get_running_loop()
        self.requests += 1
        try:
            statuses = await self._backend.statuses([w.target for w in due])
        except BackendError as exc:
            # Transient or not, the driver's own timeouts decide when to give up; back off here.
            _LOGGER.warning("status poll failed for %d job(s): %s", len(due), exc)
            for watch in due:
                watch.errors += 1
                watch.interval = min(self._max_interval, watch.interval * 2)
                watch.due = loop.time() + self._jittered(watch.interval)
            return
        now = loop.time()
        for watch in due:
            status = statuses.get(watch.target.backend_id)
            changed = status is not None and (
                watch.known is None
                or status.state != watch.known.state
                or status.cold_start != watch.known.cold_start
            )
            if changed and status is not None:
                watch.interval = self._interval
                if not watch.future.done():
                    watch.future.set_result(status)
            else:
                watch.interval = min(self._max_interval, watch.interval * 1.5)
                watch.due = now + self._jittered(watch.interval)
