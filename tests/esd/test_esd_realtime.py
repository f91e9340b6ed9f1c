"""Real-time endpoints: the finished job in the start answer, 504 then poll, the in-flight cap."""

from __future__ import annotations

import asyncio

import pytest
from scenario_kit import png

from bot.errors import BackendError, JobFailedError
from bot.model import JobState
from cloud.esd import EsdBackend
from cloud.esd_server import running_server
from tests.esd.esd_kit import REALTIME, esd_config, params, server_config, settle, state_of, target


async def test_a_quick_job_comes_back_finished_from_the_start() -> None:
    config = server_config(job_seconds=(0.0, 0.0), realtime_gateway_timeout=30.0)
    async with running_server(config) as url, EsdBackend(esd_config(url)) as esd:
        state = state_of(url)
        submitted = await esd.submit("bot1", params(endpoint=REALTIME, count=2), png(), None)
        # The endpoint's own type decides, whatever the configured default (Async) is.
        assert state.jobs[submitted.backend_id].inference_type == "Real-time"
        status = (await esd.statuses([target(submitted.backend_id)]))[submitted.backend_id]
        assert status.state is JobState.SUCCEED
        output = await esd.results(submitted.backend_id)
        assert len(output.images) == 2 and output.infotext
        # Known from the start answer: no status request, no second read of the job.
        assert state.requests["list_inferences"] == state.requests["get_inference"] == 0
        assert esd.slots.in_flight(REALTIME) == 0


async def test_a_long_job_answers_504_and_is_polled(server: str, backend: EsdBackend) -> None:
    state = state_of(server)
    submitted = await backend.submit("bot1", params(endpoint=REALTIME), png(), None)
    assert state.requests["start_inference"] == 1  # a 504 is not a reason to start again
    status = (await backend.statuses([target(submitted.backend_id)]))[submitted.backend_id]
    # ESD's row stays `created` with a `startTime` while the endpoint works: shown as running.
    assert status.state is JobState.INPROGRESS
    assert backend.slots.in_flight(REALTIME) == 1
    await state.finish(submitted.backend_id)
    assert (await settle(backend, submitted.backend_id)).state is JobState.SUCCEED
    assert backend.slots.in_flight(REALTIME) == 0
    assert len((await backend.results(submitted.backend_id)).images) == 1


async def test_a_failing_job_is_refused_with_its_reason_and_frees_its_slot() -> None:
    faults = server_config().faults.__class__(fail_rate=1.0)
    config = server_config(job_seconds=(0.0, 0.0), realtime_gateway_timeout=30.0, faults=faults)
    async with running_server(config) as url, EsdBackend(esd_config(url)) as esd:
        with pytest.raises(JobFailedError) as caught:
            await esd.submit("bot1", params(endpoint=REALTIME), png(), None)
        # The 400 carries `str(container output)`, a Python repr: the bot shows its reason.
        assert caught.value.user_message == "OutOfMemoryError: injected failure: fail_rate"
        assert esd.slots.in_flight(REALTIME) == 0
        assert [job.starts for job in state_of(url).jobs.values()] == [1]


async def test_a_job_with_a_null_output_says_the_endpoint_returned_no_images() -> None:
    faults = server_config().faults.__class__(fail_silent_rate=1.0)
    config = server_config(job_seconds=(0.0, 0.0), realtime_gateway_timeout=30.0, faults=faults)
    async with running_server(config) as url, EsdBackend(esd_config(url)) as esd:
        with pytest.raises(JobFailedError) as caught:
            await esd.submit("bot1", params(endpoint=REALTIME), png(), None)
        assert caught.value.user_message == "the endpoint returned no images"


async def test_a_job_that_fails_after_a_504_is_read_failed_from_sagemaker_raw() -> None:
    # ESD leaves the row `created` and stores `sagemakerRaw` (start_inference_job.py).
    faults = server_config().faults.__class__(fail_rate=1.0)
    async with (
        running_server(server_config(faults=faults)) as url,
        EsdBackend(esd_config(url)) as esd,
    ):
        state = state_of(url)
        submitted = await esd.submit("bot1", params(endpoint=REALTIME), png(), None)
        status = (await esd.statuses([target(submitted.backend_id)]))[submitted.backend_id]
        assert status.state is JobState.INPROGRESS
        await state.finish(submitted.backend_id)
        status = await settle(esd, submitted.backend_id)
        assert (status.state, status.reason) == (
            JobState.FAILED,
            "OutOfMemoryError: injected failure: fail_rate",
        )
        assert state.jobs[submitted.backend_id].status is JobState.CREATED
        assert state.jobs[submitted.backend_id].starts == 1
        assert esd.slots.in_flight(REALTIME) == 0


async def test_at_most_the_cap_of_jobs_run_per_endpoint(server: str) -> None:
    state = state_of(server)
    async with EsdBackend(esd_config(server, realtime_max_in_flight=2)) as esd:
        first = await esd.submit("bot1", params(endpoint=REALTIME), png(), None)
        second = await esd.submit("bot2", params(endpoint=REALTIME), png(), None)
        third = asyncio.create_task(esd.submit("bot3", params(endpoint=REALTIME), png(), None))
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert not third.done()
        assert state.requests["create_inference"] == 2
        # The first job ends; once the backend has seen it end, the third may go.
        await state.finish(first.backend_id)
        await settle(esd, first.backend_id)
        submitted = await third
        assert state.requests["create_inference"] == 3
        assert esd.slots.in_flight(REALTIME) == 2
        # Cancelling frees a slot too.
        await esd.cancel(second.backend_id)
        assert esd.slots.in_flight(REALTIME) == 1
        await esd.cancel(submitted.backend_id)
        assert esd.slots.in_flight(REALTIME) == 0


async def test_a_refused_submission_gives_its_slot_back(server: str) -> None:
    async with EsdBackend(esd_config(server, realtime_max_in_flight=1)) as esd:
        for _ in range(2):
            with pytest.raises(BackendError):
                await esd.submit(
                    "bot1", params(endpoint=REALTIME, model="nope.safetensors"), png(), None
                )
        await esd.submit("bot2", params(endpoint=REALTIME), png(), None)
        assert esd.slots.in_flight(REALTIME) == 1
