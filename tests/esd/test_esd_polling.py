"""Batched status (SPEC §4.1): list pages for many jobs, direct reads only where needed.

Request counts come from the server's per-route counters, so these tests measure what the
backend asks, not how long it takes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest
from scenario_kit import png

from bot.errors import JobFailedError
from bot.model import BackendStatus, InterrogateParams, JobState
from cloud.esd import EsdBackend
from cloud.esd.client import EsdClient
from cloud.esd.polling import StatusBook
from cloud.esd_server import running_server
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
            silent = [
                s for s in changed.values() if s.state is JobState.FAILED and s.reason is None
            ]
            # Pages, plus one read for each failure whose list item carries no reason.
            assert spent["list_inferences"] <= pages
            assert spent["get_inference"] == len(silent)
            ended.update(changed)
        failed = [s for s in ended.values() if s.state is JobState.FAILED]
        assert 0 < sum(1 for s in failed if s.reason is None) < len(failed) < 40


async def test_a_fresh_scan_answers_every_batch_of_due_jobs(server: str) -> None:
    async with EsdBackend(esd_config(server, page_size=20, list_interval=3600.0)) as esd:
        ids = await _submit_many(esd, 60)
        before = _status_requests(server)
        for start in range(0, 60, 7):  # the poller asks about whoever is due, a few at a time
            answer = await esd.statuses([target(i) for i in ids[start : start + 7]])
            assert len(answer) == len(ids[start : start + 7])
        spent = _status_requests(server) - before
        assert spent["list_inferences"] == 3 and spent["get_inference"] == 0


async def test_jobs_that_fell_off_the_pages_are_read_directly_in_turn(server: str) -> None:
    config = esd_config(server, page_size=10, status_pages=1, max_direct_per_round=8)
    async with EsdBackend(config) as esd:
        ids = await _submit_many(esd, 30)
        targets = [target(i) for i in ids]
        before = _status_requests(server)
        first = await esd.statuses(targets)
        spent = _status_requests(server) - before
        assert (spent["list_inferences"], spent["get_inference"]) == (1, 8)
        assert len(first) == 18
        answered = set(first)
        for _ in range(3):
            answered |= set(await esd.statuses(targets))
        assert answered == set(ids)  # rotation reaches every job


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
    assert status.reason is not None and "injected failure" in status.reason
    with pytest.raises(JobFailedError) as caught:
        await backend.results(submitted.backend_id)
    assert caught.value.user_message == status.reason


async def test_failed_job_without_reason(server: str, backend: EsdBackend) -> None:
    with_faults(server, fail_silent_rate=1.0)
    submitted = await backend.submit("bot1", params(), png(), None)
    await state_of(server).finish(submitted.backend_id)
    status = await settle(backend, submitted.backend_id)
    assert (status.state, status.reason) == (JobState.FAILED, None)
    with pytest.raises(JobFailedError) as caught:
        await backend.results(submitted.backend_id)
    assert caught.value.user_message == "the backend gave no reason"


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
        caption = await first.interrogate("bot-i", InterrogateParams("clip", ASYNC), png())
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
