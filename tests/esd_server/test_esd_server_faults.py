"""Fault injection: every fault shows up as specified, and seeded sequences replay exactly."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from bot.errors import ConfigError
from cloud.esd.wire import esd_time
from cloud.esd_server import EndpointSpec, Faults, ServerConfig
from tests.esd_server.esd_server_kit import Api, img2img_payload

if TYPE_CHECKING:
    from tests.esd_server.esd_server_kit import MakeApi


def with_faults(**faults: Any) -> ServerConfig:
    return ServerConfig(job_seconds=(60, 60), faults=Faults(**faults))


async def ping_statuses(api: Api, count: int) -> list[int]:
    return [
        (await api.call("GET", "ping", headers=api.headers(user=False))).status
        for _ in range(count)
    ]


async def test_throttling_is_api_gateways_429_with_retry_after(make_api: MakeApi) -> None:
    api = await make_api(with_faults(throttle_rate=1.0))
    reply = await api.call("GET", "endpoints")
    assert reply.status == 429
    assert reply.body["message"] == "Too Many Requests"
    assert reply.headers["Retry-After"] == "1"
    assert "x-api-version" not in reply.headers


async def test_errors_are_gateway_5xx_bodies(make_api: MakeApi) -> None:
    api = await make_api(with_faults(error_rate=1.0))
    seen = set()
    for _ in range(30):
        reply = await api.call("GET", "ping")
        assert reply.status in (500, 502, 503)
        assert set(reply.body) == {"message", "requestId"}
        assert "x-api-version" not in reply.headers
        seen.add(reply.status)
    assert seen == {500, 502, 503}


async def test_api_faults_come_after_the_key_check(make_api: MakeApi) -> None:
    api = await make_api(with_faults(error_rate=1.0))
    reply = await api.call("GET", "ping", headers={})
    assert reply.status == 403


async def test_fault_sequences_replay_from_the_seed(make_api: MakeApi) -> None:
    first = await make_api(with_faults(error_rate=0.3, throttle_rate=0.2, seed=7))
    second = await make_api(with_faults(error_rate=0.3, throttle_rate=0.2, seed=7))
    sequence = await ping_statuses(first, 40)
    assert await ping_statuses(second, 40) == sequence
    assert {200, 429} <= set(sequence) and set(sequence) & {500, 502, 503}
    # Assigning faults at run time restarts the sequence from their seed.
    first.state.faults = first.state.faults
    assert await ping_statuses(first, 40) == sequence
    first.state.faults = dataclasses.replace(first.state.faults, seed=8)
    assert await ping_statuses(first, 40) != sequence


async def test_a_hang_outlasts_the_clients_timeout(make_api: MakeApi) -> None:
    api = await make_api(with_faults(timeout_rate=1.0, hang_seconds=60.0))
    with pytest.raises(asyncio.TimeoutError):
        await api.call("GET", "ping", timeout=0.2)
    # Back to normal: the next answer is immediate. The hang still pending ends at shutdown.
    api.state.faults = Faults()
    assert (await api.call("GET", "ping")).status == 200


async def test_latency_delays_every_answer(make_api: MakeApi) -> None:
    api = await make_api(with_faults(latency=60.0))
    with pytest.raises(asyncio.TimeoutError):
        await api.call("GET", "ping", timeout=0.2)
    with pytest.raises(asyncio.TimeoutError):
        await api.call("GET", "ping", headers={}, timeout=0.2)  # refusals are late as well


async def test_fail_rate_fails_jobs_with_a_reason(make_api: MakeApi) -> None:
    api = await make_api(with_faults(fail_rate=1.0))
    job_id = await api.submit()
    await api.state.finish(job_id)
    job = await api.job(job_id)
    assert job["status"] == "failed"
    assert "Received server error (500)" in job["sagemakerRaw"]
    assert job["img_presigned_urls"] == []


async def test_fail_silent_rate_fails_jobs_without_sagemaker_raw(make_api: MakeApi) -> None:
    api = await make_api(with_faults(fail_silent_rate=1.0))
    job_id = await api.submit()
    await api.state.finish(job_id)
    job = await api.job(job_id)
    assert job["status"] == "failed"
    assert "sagemakerRaw" not in job
    listed = await api.call("GET", "inferences", params={"type": "img2img"})
    assert listed.data["inferences"][0]["sagemakerRaw"] == {}


async def test_stuck_jobs_stay_created_while_others_finish(make_api: MakeApi) -> None:
    api = await make_api(ServerConfig(job_seconds=(0.0, 0.0), faults=Faults(stuck_rate=1.0)))
    stuck = await api.create()
    await api.upload(stuck, img2img_payload())
    started = await api.start(stuck["id"])
    assert started.status == 202
    assert started.data["status"] == "created"
    api.state.faults = Faults()
    other = await api.submit()
    task = api.state.jobs[other].task
    assert task is not None
    await asyncio.wait([task])
    assert (await api.job(other))["status"] == "succeed"
    assert (await api.job(stuck["id"]))["status"] == "created"
    # `finish` releases even a stuck job (tests that want the job to end after all).
    await api.state.finish(stuck["id"])
    assert (await api.job(stuck["id"]))["status"] == "succeed"


async def test_job_outcomes_replay_from_the_seed(make_api: MakeApi) -> None:
    config = with_faults(fail_rate=0.3, fail_silent_rate=0.2, seed=3)
    outcomes = []
    for _ in range(2):
        api = await make_api(config)
        statuses = []
        for _ in range(12):
            job_id = await api.submit()
            await api.state.finish(job_id)
            job = await api.job(job_id)
            statuses.append((job["status"], "sagemakerRaw" in job))
        outcomes.append(statuses)
    assert outcomes[0] == outcomes[1]
    assert {("succeed", False), ("failed", True), ("failed", False)} == set(outcomes[0])


async def test_a_cold_start_waits_then_scales_the_endpoint_out(make_api: MakeApi) -> None:
    endpoints = (EndpointSpec("sd-async-local", "Async", instance_count=0),)
    api = await make_api(
        ServerConfig(job_seconds=(0.0, 0.0), cold_start_seconds=60.0, endpoints=endpoints)
    )
    job_id = await api.submit()
    assert (await api.job(job_id))["status"] == "inprogress"
    rows = (await api.call("GET", "endpoints")).data["endpoints"]
    assert {row["endpoint_name"]: row for row in rows}["sd-async-local"][
        "current_instance_count"
    ] == "0"
    await api.state.finish(job_id)
    assert (await api.job(job_id))["status"] == "succeed"
    rows = (await api.call("GET", "endpoints")).data["endpoints"]
    assert {row["endpoint_name"]: row for row in rows}["sd-async-local"][
        "current_instance_count"
    ] == "1"


class HandClock:
    """The server's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.moment = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.moment


async def picked_up_at(api: Api, job_id: str, moment: datetime) -> None:
    """Wait (bounded) until the container has written `moment` as the job's startTime."""
    async with asyncio.timeout(30):
        while (await api.job(job_id))["startTime"] != esd_time(moment):
            await asyncio.sleep(0.005)


async def test_async_instances_run_one_job_each_in_the_order_started(make_api: MakeApi) -> None:
    # ESD gives SD endpoints MaxConcurrentInvocationsPerInstance=1 (esd-api.md §8.1, §10.2):
    # two instances run two jobs; the others wait their turn, first started first.
    endpoints = (EndpointSpec("sd-async-local", "Async", instance_count=2, max_instances=2),)
    config = ServerConfig(job_seconds=(60.0, 60.0), endpoints=endpoints, invocations_per_instance=1)
    api = await make_api(config)
    clock = HandClock()
    api.state.clock = clock
    jobs = [await api.submit() for _ in range(4)]
    started = clock.moment
    clock.moment += timedelta(seconds=50)
    await api.state.finish(jobs[0])
    await picked_up_at(api, jobs[2], clock.moment)
    assert (await api.job(jobs[3]))["startTime"] == esd_time(started)  # still waiting
    assert (await api.job(jobs[3]))["status"] == "inprogress"  # as ESD's start Lambda left it
    clock.moment += timedelta(seconds=50)
    await api.state.finish(jobs[1])
    await picked_up_at(api, jobs[3], clock.moment)
    # A third instance takes the next waiting job at once.
    waiting = await api.submit()
    clock.moment += timedelta(seconds=5)
    api.state.set_instance_count("sd-async-local", 3)
    await picked_up_at(api, waiting, clock.moment)
    # A waiting job the test finishes runs at once, without a slot.
    last = await api.submit()
    await api.state.finish(last)
    assert (await api.job(last))["status"] == "succeed"


async def test_without_the_setting_every_started_job_runs_at_once(make_api: MakeApi) -> None:
    api = await make_api(ServerConfig(job_seconds=(60.0, 60.0)))
    clock = HandClock()
    api.state.clock = clock
    jobs = [await api.submit() for _ in range(3)]
    clock.moment += timedelta(seconds=50)
    await api.state.finish(jobs[0])
    for job_id in jobs[1:]:
        assert (await api.job(job_id))["startTime"] == esd_time(
            clock.moment - timedelta(seconds=50)
        )


async def test_endpoints_configured_out_of_service_refuse_jobs(make_api: MakeApi) -> None:
    endpoints = (
        EndpointSpec("sd-async-local", "Async", status="Creating"),
        EndpointSpec("sd-real-time-local", "Real-time", status="Failed"),
    )
    api = await make_api(ServerConfig(endpoints=endpoints))
    for inference_type in ("Async", "Real-time"):
        body = {"task_type": "img2img", "inference_type": inference_type, "models": api.models}
        reply = await api.call("POST", "inferences", json=body)
        assert reply.status == 400
        assert reply.body["message"] == f'no available {inference_type} endpoints for user "api"'


@pytest.mark.parametrize(
    "faults",
    [
        {"error_rate": 1.5},
        {"latency": -1.0},
        {"error_rate": 0.6, "throttle_rate": 0.6},
        {"stuck_rate": 0.5, "fail_rate": 0.3, "fail_silent_rate": 0.3},
        {"seed": 1.5},
    ],
)
def test_bad_fault_settings_are_refused(faults: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Faults(**faults)  # type: ignore[arg-type]  # values of the wrong type on purpose
