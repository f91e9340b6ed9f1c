"""Fault injection: every fault shows up as specified, and seeded sequences replay exactly."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import pytest

from bot.errors import ConfigError
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
