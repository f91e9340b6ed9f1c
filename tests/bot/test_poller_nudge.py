"""`Poller.nudge`: a backend that learns of a change by itself (ESD completion events) gets the
job asked about at once instead of at its next turn; on the virtual clock (`virtual_time`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from virtual_time import run

from bot.model import BackendStatus, JobState
from bot.poller import Poller
from bot.ports import PollTarget

if TYPE_CHECKING:
    from collections.abc import Sequence


class _Book:
    """Every job `inprogress` until it is in `done`; records when it was asked."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.asked_at: list[float] = []

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        self.asked_at.append(asyncio.get_running_loop().time())
        return {
            t.backend_id: BackendStatus(
                t.backend_id, JobState.SUCCEED if t.backend_id in self.done else JobState.INPROGRESS
            )
            for t in targets
        }


def test_a_nudged_job_is_asked_about_at_once() -> None:
    async def main() -> None:
        book = _Book()
        poller = Poller(book, interval=30.0, max_interval=60.0)
        await poller.start()
        target = PollTarget("esd-1", False, datetime(2026, 1, 1, tzinfo=UTC))
        with poller.watch(target, None) as watch:
            first = await watch.next(3600.0)
            assert first is not None and first.state is JobState.INPROGRESS
            book.done.add("esd-1")
            loop = asyncio.get_running_loop()
            nudged_at = loop.time()
            poller.nudge("esd-1")
            poller.nudge("someone-else")  # not watched: nothing happens
            change = await watch.next(3600.0)
            assert change is not None and change.state is JobState.SUCCEED
            # Asked at the nudge, not at the job's next turn (30 s or more away).
            assert book.asked_at[-1] - nudged_at < 1.0
        assert poller.watching == 0
        poller.nudge("esd-1")  # closed: nothing to do, nothing raised
        await poller.aclose()

    run(main())


class _SlowBook(_Book):
    """`_Book` whose calls wait until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.calling = asyncio.Event()

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        self.calling.set()
        answer = await super().statuses(targets)  # as things stood when the call was made
        await self.release.wait()
        return answer


def test_a_job_nudged_while_it_is_being_asked_about_is_asked_again_at_once() -> None:
    # The change came after the call in progress had read its answer: without a second ask
    # the job waited for its next turn (up to the poller's longest interval).
    async def main() -> None:
        book = _SlowBook()
        poller = Poller(book, interval=30.0, max_interval=60.0)
        await poller.start()
        target = PollTarget("esd-1", False, datetime(2026, 1, 1, tzinfo=UTC))
        with poller.watch(target, None) as watch:
            await book.calling.wait()
            book.done.add("esd-1")
            loop = asyncio.get_running_loop()
            nudged_at = loop.time()
            poller.nudge("esd-1")
            book.release.set()
            first = await watch.next(3600.0)
            assert first is not None and first.state is JobState.INPROGRESS  # the old answer
            change = await watch.next(3600.0)
            assert change is not None and change.state is JobState.SUCCEED
            assert book.asked_at[-1] - nudged_at < 1.0
        await poller.aclose()

    run(main())
