"""`running_server` and `make_app`: the URL, the live state, and a complete cleanup on exit."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
import pytest

from cloud.esd_server import (
    Faults,
    ServerConfig,
    ServerState,
    make_app,
    running_server,
    server_state,
)
from cloud.esd_server import state as state_module
from cloud.esd_server.config import UserSpec
from tests.esd_server.esd_server_kit import KEY, Api, img2img_payload

if TYPE_CHECKING:
    from collections.abc import Callable

# A guard against a shutdown that never ends, far above what one takes (a few milliseconds).
NO_HANG = 30.0


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(NO_HANG):
        while not condition():
            await asyncio.sleep(0.005)


def test_make_app_exposes_its_state() -> None:
    config = ServerConfig(users=(UserSpec("api"), UserSpec("bob")))
    state = server_state(make_app(config))
    assert isinstance(state, ServerState)
    assert state.config is config
    assert state.jobs == {}
    assert set(state.endpoints) == {"sd-async-local", "sd-real-time-local", "comfy-async-local"}
    with pytest.raises(KeyError):
        state.set_endpoint_status("nope", "InService")


async def test_the_url_is_the_prod_stage_on_loopback_and_carries_the_state() -> None:
    async with running_server(ServerConfig()) as url:
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/prod/")
        assert isinstance(url.state, ServerState)
        assert server_state(url.app) is url.state


async def test_exit_stops_jobs_closes_the_port_and_leaves_nothing_running() -> None:
    async with aiohttp.ClientSession() as session:
        async with running_server(ServerConfig(job_seconds=(60, 60))) as url:
            api = Api(url, session, url.state)
            job_id = await api.submit()
            task = api.state.jobs[job_id].task
            assert task is not None and not task.done()
        assert task.cancelled()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url + "ping", headers={"x-api-key": KEY}):
                pass


async def test_exit_ends_hanging_answers_and_real_time_waits() -> None:
    config = ServerConfig(job_seconds=(600, 600), realtime_gateway_timeout=600)
    async with aiohttp.ClientSession() as session:
        server = running_server(config)
        url = await server.__aenter__()
        api = Api(url, session, url.state)
        inference = await api.create(inference_type="Real-time")
        await api.upload(inference, img2img_payload())
        real_time = asyncio.create_task(api.start(inference["id"]), name="real-time-start")
        await until(lambda: api.state.jobs[inference["id"]].task is not None)
        api.state.faults = Faults(timeout_rate=1.0, hang_seconds=600)
        hanging = asyncio.create_task(api.call("GET", "ping"), name="hanging-ping")
        await until(lambda: api.state.requests["ping"] > 0)
        await asyncio.wait_for(server.__aexit__(None, None, None), NO_HANG)
        for pending in (real_time, hanging):
            try:
                reply = await asyncio.wait_for(pending, NO_HANG)
            except aiohttp.ClientError:
                continue  # the connection closed under it: also an end
            assert reply.status in (400, 503)


async def test_a_port_in_use_is_an_error_and_leaves_nothing_behind() -> None:
    async with running_server(ServerConfig()) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(OSError):
            async with running_server(ServerConfig(), port=port):
                pass


async def test_the_job_table_stays_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "MAX_JOBS", 3)
    idle = [(await api.create())["id"] for _ in range(3)]
    newest = (await api.create())["id"]
    assert list(api.state.jobs) == [*idle[1:], newest]  # the oldest idle job made room
    assert (await api.call("GET", f"inferences/{idle[0]}")).status == 404
    await api.call("DELETE", "inferences", json={"inference_id_list": list(api.state.jobs)})
    for _ in range(3):
        await api.submit()
    reply = await api.call(
        "POST",
        "inferences",
        json={"task_type": "img2img", "inference_type": "Async", "models": api.models},
    )
    assert reply.status == 400
    assert reply.body["message"] == "the local backend already holds 3 running jobs"


async def test_the_bucket_stays_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    first = await api.submit()
    await api.state.finish(first)
    monkeypatch.setattr(state_module, "MAX_STORED_BYTES", api.state.storage.stored_bytes + 10)
    second = await api.submit()
    await api.state.finish(second)
    assert first not in api.state.jobs  # evicted with its objects to stay under the cap
    assert (await api.job(second))["status"] == "succeed"
    assert api.state.storage.stored_bytes == sum(map(len, api.state.storage.objects.values()))
    assert not any(first in key for key in api.state.storage.objects)
