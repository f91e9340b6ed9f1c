"""Batched status (SPEC §4.1): list pages for many jobs, direct reads only where needed.

Request counts come from the server's per-route counters, so these tests measure what the
backend asks, not how long it takes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from scenario_kit import png

from bot.errors import JobFailedError
from bot.model import BackendStatus, InterrogateParams, JobState
from cloud.esd import EsdBackend
from cloud.esd.client import EsdClient
from cloud.esd.payloads import NO_IMAGES
from cloud.esd.polling import StatusBook
from cloud.esd_server import running_server
from commands.spec import Method
from tests.esd.esd_kit import (
    ASYNC,
    esd_config,
    params,
    server_config,
    settle,
    state_of,
    target,
    with_faults,
)

_STATUS_ROUTES = ("list_inferences", "get_inference")


def _status_requests(url: str) -> Counter[str]:
    requests = state_of(url).requests
    return Counter({route: requests[route] for route in _STATUS_ROUTES})


async def _submit_many(esd: EsdBackend, count: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 25):
        batch = await asyncio.gather(
            *(
                esd.submit(f"bot{n}", params(seed=n), png(32, 32), None)
                for n in range(start, min(count, start + 25))
            )
        )
        ids.extend(s.backend_id for s in batch)
    return ids


async def test_200_jobs_in_flight_cost_a_few_pages_per_round() -> None:
    faults = server_config().faults.__class__(fail_rate=0.05, fail_silent_rate=0.05, seed=11)
    async with (
        running_server(server_config(faults=faults)) as url,
        EsdBackend(esd_config(url, page_size=50)) as esd,
    ):
        state = state_of(url)
        ids = await _submit_many(esd, 200)
        targets = [target(i) for i in ids]

        before = _status_requests(url)
        first = await esd.statuses(targets)
        spent = _status_requests(url) - before
        assert len(first) == 200 and {s.state for s in first.values()} == {JobState.INPROGRESS}
        pages = spent["list_inferences"]
        assert pages == 4 and spent["get_inference"] == 0

        ended: dict[str, BackendStatus] = {}
        for finished in (ids[:40], ids[40:]):
            for job_id in finished:
                await state.finish(job_id)
            before = _status_requests(url)
            answer = await esd.statuses([t for t in targets if t.backend_id not in ended])
            spent = _status_requests(url) - before
            changed = {i: s for i, s in answer.items() if s.state.terminal}
            assert set(changed) == set(finished)
            # Pages only: a failure without `sagemakerRaw` needs no read to be explained.
            assert spent["list_inferences"] <= pages
            assert spent["get_inference"] == 0
            ended.update(changed)
        failed = [s for s in ended.values() if s.state is JobState.FAILED]
        assert 0 < sum(1 for s in failed if s.reason == NO_IMAGES) < len(failed) < 40


async def test_a_fresh_scan_answers_every_batch_of_due_jobs(server: str) -> None:
    async with EsdBackend(esd_config(server, page_size=20, list_interval=3600.0)) as esd:
        ids = await _submit_many(esd, 60)
        before = _status_requests(server)
        for start in range(0, 60, 7):  # the poller asks about whoever is due, a few at a time
            answer = await esd.statuses([target(i) for i in ids[start : start + 7]])
            assert len(answer) == len(ids[start : start + 7])
        spent = _status_requests(server) - before
        assert spent["list_inferences"] == 3 and spent["get_inference"] == 0


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _book(client: Any, clock: _FakeClock) -> StatusBook:
    async def instances(name: str) -> int | None:
        return 1

    return StatusBook(
        client,
        on_terminal=lambda job: None,
        on_dropped=lambda job_id: None,
        instances=instances,
        list_interval=client.config.list_interval,
        clock=clock,
    )


async def _scans_done(book: StatusBook) -> None:
    """Let the scans under way (in the background with events flowing) finish."""
    await asyncio.gather(*book._scanning.values())


async def _tracked_book(
    server: str, count: int, clock: _FakeClock, **config: Any
) -> tuple[EsdClient, StatusBook, list[str]]:
    """`count` jobs submitted on the server, followed by a fresh book on `clock`."""
    async with EsdBackend(esd_config(server)) as esd:
        ids = await _submit_many(esd, count)
    client = EsdClient(esd_config(server, **config))
    await client.start()
    book = _book(client, clock)
    for job_id in ids:
        book.track(job_id, "img2img", submitted_at=datetime.now(UTC))
    return client, book, ids


async def test_jobs_beyond_the_page_budget_are_read_within_a_per_second_budget(
    server: str,
) -> None:
    clock = _FakeClock()
    client, book, ids = await _tracked_book(
        server,
        30,
        clock,
        page_size=10,
        status_pages=1,
        list_interval=1.0,
        list_pages_per_second=1.0,
        direct_per_second=4.0,
    )
    targets = [target(i) for i in ids]
    try:
        answered: set[str] = set()
        before = _status_requests(server)
        for tick in range(24):  # the poller asks about every job 4 times a second, for 6 s
            clock.now = tick * 0.25
            answered |= set(await book.statuses(targets))
        spent = _status_requests(server) - before
        # One page a second; four reads a second however often the poller asks.
        assert spent["list_inferences"] <= 6
        assert spent["get_inference"] <= 4 + 4 * 6
        assert answered == set(ids)  # rotation reaches every job beyond the page
    finally:
        await client.aclose()


async def test_list_traffic_stays_at_a_page_a_second_whatever_the_jobs_in_flight(
    server: str,
) -> None:
    clock = _FakeClock()
    client, book, ids = await _tracked_book(
        server, 200, clock, page_size=50, list_interval=1.0, list_pages_per_second=1.0
    )
    targets = [target(i) for i in ids]
    try:
        before = _status_requests(server)
        answers: Counter[str] = Counter()
        for tick in range(40):  # 20 s of polls every 0.5 s
            clock.now = tick * 0.5
            answers.update(list(await book.statuses(targets)))
            pages = (_status_requests(server) - before)["list_inferences"]
            # The first walk reads the 4 pages of 200 jobs at once; then a page a second, never
            # more pages than seconds since the book began once the walk is paid back.
            assert pages <= max(4, clock.now)
        spent = _status_requests(server) - before
        assert spent["list_inferences"] == 4 + 15 and spent["get_inference"] == 0
        # Each read answers its jobs once (a reused row is no new read for the core's
        # deadlines): 19 pages of 50 jobs, every job about every 4 s.
        assert sum(answers.values()) == 50 * spent["list_inferences"]
        assert set(answers) == set(ids) and min(answers.values()) >= 4
    finally:
        await client.aclose()


async def test_with_events_flowing_even_the_first_backstop_scan_keeps_to_its_page_rate(
    server: str,
) -> None:
    # With completion events the scans are a backstop at `events_pages_per_second`. The first
    # one came one backstop interval after the book first looked, whatever its pages: 2,000
    # jobs' 4 pages 45 s in, 0.05 pages a second over a run of 80 s against 0.02 promised.
    clock = _FakeClock()
    client, book, ids = await _tracked_book(
        server, 200, clock, page_size=50, list_interval=1.0, list_pages_per_second=1.0
    )
    book.follow_events(backstop_interval=5.0, backstop_pages_per_second=0.1)
    book.events_flowing(True)
    targets = [target(i) for i in ids]
    try:
        before = _status_requests(server)
        scans: dict[float, int] = {}
        answered: dict[float, int] = {}
        for second in range(100):  # the poller asks about every job once a second
            clock.now = float(second)
            pages = (_status_requests(server) - before)["list_inferences"]
            answer = await book.statuses(targets)
            if answer:
                answered[clock.now] = len(answer)
            await _scans_done(book)
            spent = _status_requests(server) - before
            if spent["list_inferences"] > pages:
                scans[clock.now] = spent["list_inferences"] - pages
            # Never ahead of the page rate: 4 pages need 40 s at 0.1 a second.
            assert spent["list_inferences"] <= 0.1 * clock.now
            assert spent["get_inference"] == 0
        # The first backstop walk reads the 4 pages at 40 s; then a page every 10 s.
        assert scans == {40.0: 4, 80.0: 1, 90.0: 1}
        # A poll never waits for a backstop read (a job an event ended would wait with it):
        # the jobs answer from it at their next poll, each page's 50 jobs once.
        assert answered == {41.0: 200, 81.0: 50, 91.0: 50}
    finally:
        await client.aclose()


async def test_calls_made_at_once_share_one_scan(server: str) -> None:
    # The poller runs several status calls at once; each used to start a scan of its own.
    clock = _FakeClock()
    client, book, ids = await _tracked_book(server, 60, clock, page_size=20)
    try:
        before = _status_requests(server)
        answers = await asyncio.gather(
            *(book.statuses([target(i) for i in ids[n::4]]) for n in range(4))
        )
        spent = _status_requests(server) - before
        assert sum(len(a) for a in answers) == 60
        assert (spent["list_inferences"], spent["get_inference"]) == (3, 0)
    finally:
        await client.aclose()


class _SkewedClock:
    def __init__(self, skew: timedelta) -> None:
        self.skew = skew

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew


@pytest.mark.parametrize("minutes", [-20, -5, 5, 20])
async def test_a_scan_does_not_depend_on_esd_clock(server: str, minutes: int) -> None:
    # ESD stamps `createTime` with its own clock: far behind the bot's, the old scan stopped at
    # page 1 and read every other job one by one.
    state_of(server).clock = _SkewedClock(timedelta(minutes=minutes))
    clock = _FakeClock()
    client, book, ids = await _tracked_book(server, 60, clock, page_size=20)
    try:
        before = _status_requests(server)
        answer = await book.statuses([target(i) for i in ids])
        spent = _status_requests(server) - before
        assert len(answer) == 60
        assert (spent["list_inferences"], spent["get_inference"]) == (3, 0)
    finally:
        await client.aclose()


class _SlowReads:
    """An `EsdClient` whose direct reads of some jobs hang until released."""

    def __init__(self, client: EsdClient, slow: set[str]) -> None:
        self._client = client
        self.config = client.config
        self.slow = slow
        self.release = asyncio.Event()

    async def list_inferences(self, *args: Any, **kwargs: Any) -> Any:
        return await self._client.list_inferences(*args, **kwargs)

    async def get_inference(self, job_id: str) -> Any:
        if job_id in self.slow:
            await self.release.wait()
        return await self._client.get_inference(job_id)


async def test_a_slow_direct_read_does_not_hold_up_the_answer(server: str) -> None:
    clock = _FakeClock()
    client, _, ids = await _tracked_book(server, 2, clock)
    slow = _SlowReads(client, {ids[0]})
    book = _book(slow, clock)  # two jobs: read one by one, not from a page
    for job_id in ids:
        book.track(job_id, "img2img", submitted_at=datetime.now(UTC))
    targets = [target(i) for i in ids]
    try:
        first = await book.statuses(targets)
        assert set(first) == set(ids[1:])  # answered without waiting for the slow read
        slow.release.set()
        await asyncio.sleep(0)
        clock.now = 10.0
        second = await book.statuses(targets)
        assert ids[0] in second  # the read finished in the background and answers now
    finally:
        await client.aclose()


async def test_a_few_jobs_are_read_directly(server: str, backend: EsdBackend) -> None:
    submitted = await backend.submit("bot1", params(), png(), None)
    before = _status_requests(server)
    await backend.statuses([target(submitted.backend_id)])
    spent = _status_requests(server) - before
    assert (spent["list_inferences"], spent["get_inference"]) == (0, 1)


async def test_failed_job_with_reason(server: str, backend: EsdBackend) -> None:
    with_faults(server, fail_rate=1.0)
    submitted = await backend.submit("bot1", params(), png(), None)
    await state_of(server).finish(submitted.backend_id)
    status = await settle(backend, submitted.backend_id)
    assert status.state is JobState.FAILED
    # `sagemakerRaw` is the Python repr of SageMaker's notification; its failureReason is shown.
    assert status.reason is not None and status.reason.startswith("ClientError: Received server")
    assert "injected failure" in status.reason
    with pytest.raises(JobFailedError) as caught:
        await backend.results(submitted.backend_id)
    assert caught.value.user_message == status.reason


async def test_failed_job_without_reason(server: str, backend: EsdBackend) -> None:
    with_faults(server, fail_silent_rate=1.0)
    submitted = await backend.submit("bot1", params(), png(), None)
    await state_of(server).finish(submitted.backend_id)
    status = await settle(backend, submitted.backend_id)
    assert (status.state, status.reason) == (JobState.FAILED, NO_IMAGES)
    with pytest.raises(JobFailedError) as caught:
        await backend.results(submitted.backend_id)
    assert caught.value.user_message == "the endpoint returned no images"


async def test_stuck_jobs_stay_created(server: str, backend: EsdBackend) -> None:
    with_faults(server, stuck_rate=1.0)
    submitted = await backend.submit("bot1", params(), png(), None)
    for _ in range(3):
        status = (await backend.statuses([target(submitted.backend_id)]))[submitted.backend_id]
        assert status.state is JobState.CREATED


async def test_cold_start_is_reported_until_the_endpoint_has_an_instance() -> None:
    async with (
        running_server(server_config(cold_start_seconds=600.0)) as url,
        EsdBackend(esd_config(url)) as esd,
    ):
        state = state_of(url)
        state.set_instance_count(ASYNC, 0)
        submitted = await esd.submit("bot1", params(), png(), None)
        assert submitted.cold_start
        status = (await esd.statuses([target(submitted.backend_id)]))[submitted.backend_id]
        assert (status.state, status.cold_start) == (JobState.INPROGRESS, True)
        state.set_instance_count(ASYNC, 1)  # scaled out
        status = (await esd.statuses([target(submitted.backend_id)]))[submitted.backend_id]
        assert (status.state, status.cold_start) == (JobState.INPROGRESS, False)
        await state.finish(submitted.backend_id)
        assert (await settle(esd, submitted.backend_id)).state is JobState.SUCCEED


async def test_jobs_of_an_earlier_run_are_followed(server: str) -> None:
    async with EsdBackend(esd_config(server)) as first:
        ids = await _submit_many(first, 5)
        caption = await first.interrogate("bot-i", InterrogateParams(Method.CLIP, ASYNC), png())
    state = state_of(server)
    for job_id in [*ids, caption.backend_id]:
        await state.finish(job_id)
    async with EsdBackend(esd_config(server)) as second:  # a restarted bot: nothing remembered
        before = _status_requests(server)
        answer = await second.statuses(
            [*(target(i) for i in ids), target(caption.backend_id, interrogate=True)]
        )
        spent = _status_requests(server) - before
        assert {s.state for s in answer.values()} == {JobState.SUCCEED} and len(answer) == 6
        # img2img from one page; the interrogate job's type is unknown, so it is read directly.
        assert (spent["list_inferences"], spent["get_inference"]) == (1, 1)
        assert (await second.results(caption.backend_id)).caption


async def test_jobs_nobody_asks_about_any_more_are_dropped(server: str) -> None:
    now = [0.0]
    dropped: list[str] = []
    async with EsdClient(esd_config(server)) as client:

        async def instances(name: str) -> int | None:
            return 1

        book = StatusBook(
            client,
            on_terminal=lambda job: None,
            on_dropped=dropped.append,
            instances=instances,
            clock=lambda: now[0],
        )
        book.track("job-a", "img2img", submitted_at=datetime.now(UTC))
        now[0] = 3599.0
        assert await book.statuses([]) == {} and dropped == []
        now[0] = 3601.0
        await book.statuses([])
        assert dropped == ["job-a"] and book.in_flight("img2img") == 0


async def test_a_page_esd_cannot_list_falls_back_to_reading_the_jobs(server: str) -> None:
    # ESD answers 400 for a list page holding a captioned interrogate row
    # (inferences/list_inferences.py builds rows as `InferenceJob`, which has no `caption`).
    async with EsdBackend(esd_config(server, direct_threshold=0)) as esd:
        state = state_of(server)
        ids = [
            (
                await esd.interrogate(f"bot-{n}", InterrogateParams(Method.CLIP, ASYNC), png())
            ).backend_id
            for n in range(3)
        ]
        await state.finish(ids[0])
        targets = [target(i, interrogate=True) for i in ids]
        answer = await esd.statuses(targets)
        assert answer[ids[0]].state is JobState.SUCCEED
        assert {answer[i].state for i in ids[1:]} == {JobState.INPROGRESS}
        assert state.requests["list_inferences"] >= 1
