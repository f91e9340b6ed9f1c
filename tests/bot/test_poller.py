"""The poller and the deadlines of a job in flight, on a virtual clock (`virtual_time`).

Backends here are scripted by the loop's clock: an outage, a status read that hangs, a job that
stays `created`. Every test asserts what users would see (the job's end and message) and what
the poller keeps, never how long anything took.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    make_app,
    png,
)
from virtual_time import run

from bot.errors import BackendUnavailableError
from bot.model import BackendStatus, JobState
from bot.poller import Poller
from bot.ports import PollTarget
from bot.tasks import stop
from cloud.local import LocalBackend, LocalBackendConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from bot.model import Job

_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _target(backend_id: str) -> PollTarget:
    return PollTarget(backend_id, False, _NOW)


@dataclass
class _Book:
    """A backend's `statuses` alone: every job `inprogress`, some calls hang."""

    hang: set[str] = field(default_factory=set)
    calls: list[list[str]] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    asked: asyncio.Event = field(default_factory=asyncio.Event)

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        ids = [t.backend_id for t in targets]
        self.calls.append(ids)
        self.asked.set()
        if self.hang & set(ids):
            await asyncio.Event().wait()  # a read that never answers
        return {
            i: BackendStatus(i, JobState.SUCCEED if i in self.done else JobState.INPROGRESS)
            for i in ids
        }


def _poller(book: _Book, **settings: Any) -> Poller:
    return Poller(book, interval=0.5, max_interval=1.0, **settings)


def test_a_wake_up_looks_only_at_the_jobs_that_are_due() -> None:
    async def main() -> None:
        book = _Book()
        poller = _poller(book)
        await poller.start()
        watches = [poller.watch(_target(f"job{n}"), None) for n in range(300)]
        for watch in watches:
            assert await watch.next(60.0) is not None  # first read: inprogress
        for _ in range(10):  # many rounds, each asking about whoever is due
            await watches[0].next(1.0)
        # Stop popping, then let the calls already popped reach the backend: a round
        # whose entries were popped but whose call has not started yet is not a gap.
        await stop(poller._task)
        await asyncio.gather(*poller._calls)
        asked = sum(len(c) for c in book.calls)
        # Every heap entry looked at was a job asked about: nothing scanned the other jobs.
        assert len(book.calls) > 10 and poller.examined == asked
        await poller.aclose()

    run(main())


def test_a_status_call_that_hangs_does_not_hold_up_other_jobs() -> None:
    async def main() -> None:
        book = _Book(hang={"slow"})
        poller = _poller(book, call_timeout=30.0)
        await poller.start()
        with poller.watch(_target("slow"), None) as slow:
            await book.asked.wait()  # the slow job's call has gone out and hangs
            with poller.watch(_target("fast"), None) as fast:
                first = await fast.next(5.0)
                book.done.add("fast")
                second = await fast.next(5.0)
            assert first is not None and first.state is JobState.INPROGRESS
            assert second is not None and second.state is JobState.SUCCEED
            assert slow.read_at is None  # never answered, so never read
            await slow.next(120.0)  # the hung call is given up and asked again
            assert sum(c == ["slow"] for c in book.calls) >= 2
        await poller.aclose()

    run(main())


def test_leaving_a_watch_frees_what_the_poller_kept() -> None:
    async def main() -> None:
        book = _Book()
        poller = _poller(book)
        await poller.start()
        with poller.watch(_target("a"), None) as watch:
            await watch.next(10.0)
            assert poller.watching == 1
        assert poller.watching == 0
        try:
            with poller.watch(_target("b"), None) as watch:
                raise RuntimeError("the driver failed")
        except RuntimeError:
            pass
        assert poller.watching == 0
        calls = len(book.calls)
        await asyncio.sleep(10.0)
        assert len(book.calls) == calls  # nobody is asked about any more
        await poller.aclose()

    run(main())


# -- Through the job runner ----------------------------------------------------------------------


class _TimelineBackend(LocalBackend):
    """The local backend (jobs really run and have results), whose `statuses` answers are
    decided by `script(backend_id, loop time since the first submit, real status)`: a status,
    an exception to raise, or "hang" for a read that does not answer before `script` says."""

    def __init__(self, script: Callable[[str, float, BackendStatus], object]) -> None:
        super().__init__(LocalBackendConfig(delay=0.05))
        self.script = script
        self.began: float | None = None
        self.cancelled: list[tuple[str, float]] = []
        self.reads_after: list[float] = []

    def clock(self) -> float:
        loop = asyncio.get_running_loop()
        if self.began is None:
            self.began = loop.time()
        return loop.time() - self.began

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        now = self.clock()
        real = await super().statuses(targets)
        answer: dict[str, BackendStatus] = {}
        for backend_id, status in real.items():
            outcome = self.script(backend_id, now, status)
            while outcome == "hang":
                await asyncio.sleep(1.0)
                outcome = self.script(backend_id, self.clock(), status)
            if isinstance(outcome, Exception):
                raise outcome
            assert isinstance(outcome, BackendStatus)
            answer[backend_id] = outcome
        self.reads_after.append(now)
        return answer

    async def cancel(self, backend_id: str) -> None:
        self.cancelled.append((backend_id, self.clock()))
        await super().cancel(backend_id)


async def _run_jobs(
    tmp_path: Path, backend: _TimelineBackend, count: int = 1, **config: Any
) -> tuple[list[Job], RecordingAdapter, Any]:
    settings: dict[str, Any] = {
        "poll_interval": 0.5,
        "poll_max_interval": 1.0,
        "status_interval": 10.0,
        "created_timeout": 300.0,
        "job_timeout": 1200.0,
        "max_in_flight": 100,
    }
    settings.update(config)
    app = make_app(fast_config(tmp_path, **settings), backend)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        backend.clock()
        accepted = []
        for n in range(count):
            job = await app.dispatcher.handle_text(
                chat_caller(f"user{n}"),
                "img2img x",
                [adapter.attach("a.png", png())],
                RecordingResponder(),
            )
            assert job is not None
            accepted.append(job.id)
        await app.runner.wait_idle()
        jobs = [await app.store.get(i) for i in accepted]
        poller = app.poller
    return [j for j in jobs if j is not None], adapter, poller


def _as(state: JobState) -> Callable[[BackendStatus], BackendStatus]:
    return lambda status: BackendStatus(status.backend_id, state)


def test_one_status_read_that_hangs_does_not_fail_the_other_jobs(tmp_path: Path) -> None:
    # The first job's read hangs as a direct ESD read does (30 s × retries, here 10 minutes);
    # the others finish on the backend at once and must be delivered, not failed as "never
    # started" when `created_timeout` passes.
    slow: list[str] = []

    def script(backend_id: str, now: float, status: BackendStatus) -> object:
        if not slow:
            slow.append(backend_id)
        if backend_id == slow[0] and now < 600.0:
            return "hang"
        return status

    backend = _TimelineBackend(script)
    jobs, adapter, poller = run(_run_jobs(tmp_path, backend, count=25))
    assert [j.state for j in jobs] == [JobState.SUCCEED] * 25
    assert len(adapter.results()) == 25 and backend.cancelled == []
    assert poller.watching == 0


def test_a_job_is_not_declared_dead_while_its_status_cannot_be_read(tmp_path: Path) -> None:
    # The backend is unreachable for longer than both deadlines, then says the job succeeded.
    def script(backend_id: str, now: float, status: BackendStatus) -> object:
        if now < 2000.0:
            return BackendUnavailableError("ESD is unreachable")
        return status

    backend = _TimelineBackend(script)
    [job], adapter, poller = run(_run_jobs(tmp_path, backend))
    assert job.state is JobState.SUCCEED and adapter.results()[0].error is None
    assert backend.cancelled == [] and poller.watching == 0


def test_never_started_is_said_only_after_created_throughout(tmp_path: Path) -> None:
    # `created`, then unreadable past the deadline, then `created` again: the job is failed as
    # never started by the first read after the outage, not by the bot's clock.
    def script(backend_id: str, now: float, status: BackendStatus) -> object:
        if 100.0 <= now < 1000.0:
            return BackendUnavailableError("ESD is unreachable")
        return BackendStatus(backend_id, JobState.CREATED)

    backend = _TimelineBackend(script)
    [job], _, poller = run(_run_jobs(tmp_path, backend))
    assert job.state is JobState.FAILED and "never started" in (job.error or "")
    [(_, cancelled_at)] = backend.cancelled
    assert any(1000.0 <= t <= cancelled_at for t in backend.reads_after)
    assert poller.watching == 0


def test_a_job_seen_running_gets_the_running_deadline(tmp_path: Path) -> None:
    # Unreadable until after `created_timeout`, then `inprogress` for a while, then done: the
    # deadline of a running job applies (old code: "never started" at 300 s).
    def script(backend_id: str, now: float, status: BackendStatus) -> object:
        if now < 400.0:
            return BackendUnavailableError("ESD is unreachable")
        if now < 900.0:
            return BackendStatus(backend_id, JobState.INPROGRESS)
        return status

    backend = _TimelineBackend(script)
    [job], _, poller = run(_run_jobs(tmp_path, backend))
    assert job.state is JobState.SUCCEED and poller.watching == 0


def test_a_running_job_past_its_deadline_times_out_and_is_freed(tmp_path: Path) -> None:
    def script(backend_id: str, now: float, status: BackendStatus) -> object:
        return BackendStatus(backend_id, JobState.INPROGRESS)

    backend = _TimelineBackend(script)
    [job], _, poller = run(_run_jobs(tmp_path, backend, job_timeout=600.0))
    assert job.state is JobState.FAILED and "did not finish" in (job.error or "")
    assert [i for i, _ in backend.cancelled] == [job.backend_id]
    assert poller.watching == 0  # the timeout path frees the poller's bookkeeping too


def test_many_jobs_due_at_once_are_asked_about_in_calls_of_at_most_max_batch() -> None:
    # One call's answer is handled in one step of the event loop: 10,000 jobs due together
    # stood the loop still for a quarter of a second (issue 11).
    async def main() -> list[list[str]]:
        book = _Book()
        poller = _poller(book, max_batch=40)
        await poller.start()
        watches = [poller.watch(_target(f"job{n}"), None) for n in range(100)]
        try:
            for watch in watches:
                assert await watch.next(60.0) is not None  # every job read once
            return book.calls
        finally:
            for watch in watches:
                watch.close()
            await poller.aclose()

    calls = run(main())
    assert all(len(ids) <= 40 for ids in calls)
    assert {i for ids in calls for i in ids} == {f"job{n}" for n in range(100)}
