"""Every error shape ESD has, each turned into a message users understand (issue 4 item 5).

Most come from the ESD-compatible server and its fault injection; the few shapes it has no
reason to produce (a Lambda permission refusal, API Gateway's 504 on a read, a start whose
outcome is unknown) come from `ScriptedEsd`, a tiny aiohttp app on loopback that answers what
each test scripts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from scenario_kit import png

from bot.errors import BackendError, BackendUnavailableError, ConfigError
from bot.model import JobState
from bot.ports import LOST_JOB
from cloud.esd import EsdBackend
from cloud.esd.client import EsdClient, OutcomeUnknownError
from cloud.esd_server import running_server
from tests.esd.esd_kit import (
    ASYNC,
    KEY,
    esd_config,
    params,
    server_config,
    state_of,
    target,
    with_faults,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


# -- From the ESD-compatible server ---------------------------------------------------------------


async def test_wrong_key_fails_start_up_with_the_setting_named(server: str) -> None:
    with pytest.raises(ConfigError, match=r"the ESD API key was refused \(check ESD_API_KEY\)"):
        async with EsdBackend(esd_config(server, api_key="wrong-key-123")):
            pass
    async with EsdClient(esd_config(server, api_key="wrong-key-123")) as client:
        with pytest.raises(BackendError) as caught:
            await client.get_inference("x")
    assert caught.value.status == 403
    assert "wrong-key-123" not in str(caught.value) + str(caught.value.user_message)


async def test_unknown_user_fails_start_up_with_the_user_named(server: str) -> None:
    with pytest.raises(
        ConfigError, match=r"ESD does not know the user `ghost` \(check ESD_USERNAME\)"
    ):
        async with EsdBackend(esd_config(server, username="ghost")):
            pass
    async with EsdClient(esd_config(server, username="ghost")) as client:
        with pytest.raises(BackendError) as caught:
            await client.list_endpoints()
    assert caught.value.status == 401


async def test_wrong_path_is_named_as_a_url_problem(server: str) -> None:
    with pytest.raises(ConfigError, match=r"no such route.*ESD_API_URL"):
        async with EsdBackend(esd_config(server + "v2/")):
            pass


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"model": "nope.safetensors"},
            "checkpoint with name nope.safetensors, type Stable-diffusion is not found",
        ),
        ({"vae": "nope.vae.pt"}, "checkpoint with name nope.vae.pt, type VAE is not found"),
        (
            {"endpoint": "sd-async-gone"},
            "endpoint `sd-async-gone` is not on ESD (see `endpoints`)",
        ),
    ],
)
async def test_400_messages_pass_through(
    backend: EsdBackend, change: dict[str, str], message: str
) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.submit("bot1", params(**change), png(), None)
    assert caught.value.status == 400
    assert caught.value.user_message == message


async def test_endpoint_not_ready_passes_through(server: str, backend: EsdBackend) -> None:
    state_of(server).set_endpoint_status(ASYNC, "Updating")
    with pytest.raises(BackendError) as caught:
        await backend.submit("bot1", params(), png(), None)
    assert caught.value.user_message == "sagemaker endpoint is not ready with status: Updating"


async def test_unknown_job_is_404(backend: EsdBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.results("no-such-job")
    assert caught.value.status == 404
    assert caught.value.user_message == "inference with id no-such-job not found"


async def test_a_job_deleted_on_the_backend_fails_with_that_reason(
    server: str, backend: EsdBackend
) -> None:
    submitted = await backend.submit("bot1", params(), png(), None)
    await state_of(server).delete_jobs([submitted.backend_id])
    status = (await backend.statuses([target(submitted.backend_id)]))[submitted.backend_id]
    assert status.state is JobState.FAILED
    assert status.reason == LOST_JOB


async def test_5xx_is_retried_then_unavailable(server: str, backend: EsdBackend) -> None:
    state = state_of(server)
    with_faults(server, error_rate=1.0)
    before = state.requests["list_endpoints"]
    with pytest.raises(BackendUnavailableError) as caught:
        await backend.endpoints()
    assert state.requests["list_endpoints"] - before == 4  # the call and three retries
    assert caught.value.status in (500, 502, 503)
    assert caught.value.user_message is not None and "GET endpoints" in caught.value.user_message


async def test_a_share_of_5xx_is_absorbed_by_retries(server: str, backend: EsdBackend) -> None:
    with_faults(server, error_rate=0.4, seed=3)
    submitted = await backend.submit("bot1", params(), png(), None)
    with_faults(server, error_rate=0.4, seed=4)
    assert [e.name for e in await backend.endpoints()]
    assert submitted.backend_id in state_of(server).jobs
    assert len(await backend.history("img2img", 10)) == 1


async def test_throttling_with_a_long_retry_after_gives_up_at_once(
    server: str, backend: EsdBackend
) -> None:
    state = state_of(server)
    with_faults(server, throttle_rate=1.0)
    before = state.requests["get_inference"]
    with pytest.raises(BackendUnavailableError) as caught:
        await backend.results("x")
    # Retry-After: 1 is over this client's cap of 0.5 s: the poller's own back-off takes over.
    assert state.requests["get_inference"] - before == 1
    assert (caught.value.status, caught.value.user_message) == (
        429,
        "ESD is throttling requests right now",
    )


async def test_hanging_answers_time_out_and_are_retried() -> None:
    config = server_config(
        faults=server_config().faults.__class__(timeout_rate=1.0, hang_seconds=5.0)
    )
    async with running_server(config) as url:
        async with EsdClient(esd_config(url, timeout=0.2, retries=1)) as client:
            with pytest.raises(OutcomeUnknownError) as caught:
                await client.list_endpoints()
        assert state_of(url).requests["list_endpoints"] == 2
        assert "timed out" in (caught.value.user_message or "")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_esd_names_the_host_and_never_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _closed_port()
    caplog.set_level(logging.DEBUG)
    # Start-up survives it (ESD may come back); calls say where they could not get to.
    async with EsdBackend(esd_config(f"http://127.0.0.1:{port}/prod/")) as esd:
        with pytest.raises(BackendUnavailableError) as caught:
            await esd.endpoints()
        with pytest.raises(BackendUnavailableError):
            await esd.statuses([target("job-1"), target("job-2"), target("job-3")])
    message = caught.value.user_message or ""
    assert message.startswith(f"cannot reach ESD at 127.0.0.1:{port} (")
    assert KEY not in str(caught.value) + message + caplog.text


async def test_statuses_raise_when_nothing_could_be_learnt(
    server: str, backend: EsdBackend
) -> None:
    submitted = await backend.submit("bot1", params(), png(), None)
    with_faults(server, error_rate=1.0)
    with pytest.raises(BackendUnavailableError):
        await backend.statuses([target(submitted.backend_id)])
    with_faults(server, error_rate=0.0)
    status = (await backend.statuses([target(submitted.backend_id)]))[submitted.backend_id]
    assert status.state is JobState.INPROGRESS


# -- Scripted shapes -----------------------------------------------------------------------------

Reply = tuple[int, Any, dict[str, str]]


class ScriptedEsd:
    """An ESD stand-in answering scripted replies per route, then a default."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.calls: Counter[str] = Counter()
        self.headers: dict[str, dict[str, str]] = {}
        self.default: dict[str, Reply] = {
            "GET ping": (200, {"statusCode": 200, "message": "pong"}, {"x-api-version": "1.7.0"}),
            "GET endpoints": (200, {"statusCode": 200, "data": {"endpoints": []}}, {}),
            "POST inferences": (
                201,
                {
                    "statusCode": 201,
                    "data": {"inference": {"id": "job-1", "api_params_s3_upload_url": ""}},
                },
                {},
            ),
            "PUT upload": (200, "", {}),
            "PUT start": (202, {"statusCode": 202, "data": {"InferenceJobId": "job-1"}}, {}),
            "GET job": (
                200,
                {"statusCode": 200, "data": {"InferenceJobId": "job-1", "status": "created"}},
                {},
            ),
            "DELETE inferences": (204, "", {}),
            "GET checkpoints": (200, {"statusCode": 200, "data": {"page": 1, "pages": 1}}, {}),
        }
        self.url = ""

    def then(self, route: str, *replies: Reply) -> None:
        self.script.setdefault(route, []).extend(replies)

    async def _answer(self, request: web.Request, route: str) -> web.StreamResponse:
        self.calls[route] += 1
        self.headers[route] = dict(request.headers)
        queue = self.script.get(route)
        status, body, headers = queue.pop(0) if queue else self.default[route]
        if route == "POST inferences" and isinstance(body, dict) and "data" in body:
            body = json.loads(json.dumps(body))
            body["data"]["inference"]["api_params_s3_upload_url"] = (
                f"{self.url}s3/p.json?X-Amz-Signature=zzz"
            )
        if isinstance(body, str):
            return web.Response(status=status, text=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        routes = {
            ("GET", "/prod/ping"): "GET ping",
            ("GET", "/prod/endpoints"): "GET endpoints",
            ("POST", "/prod/inferences"): "POST inferences",
            ("PUT", "/prod/s3/p.json"): "PUT upload",
            ("PUT", "/prod/inferences/job-1/start"): "PUT start",
            ("GET", "/prod/inferences/job-1"): "GET job",
            ("DELETE", "/prod/inferences"): "DELETE inferences",
            ("GET", "/prod/checkpoints"): "GET checkpoints",
        }
        for (method, path), route in routes.items():

            async def handler(request: web.Request, route: str = route) -> web.StreamResponse:
                return await self._answer(request, route)

            app.router.add_route(method, path, handler)
        return app


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedEsd]:
    esd = ScriptedEsd()
    runner = web.AppRunner(esd.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    esd.url = f"http://127.0.0.1:{runner.addresses[0][1]}/prod/"
    try:
        yield esd
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def client_for(esd: ScriptedEsd, **overrides: Any) -> AsyncIterator[EsdClient]:
    async with EsdClient(esd_config(esd.url, **overrides)) as client:
        yield client


async def test_api_headers_on_api_calls_and_none_on_storage(scripted: ScriptedEsd) -> None:
    async with EsdBackend(esd_config(scripted.url)) as esd:
        await esd.submit("bot1", params(), png(), None)
    api = scripted.headers["POST inferences"]
    assert (api["x-api-key"], api["username"], api["Content-Type"]) == (
        KEY,
        "api",
        "application/json",
    )
    storage = {name.lower() for name in scripted.headers["PUT upload"]}
    assert not storage & {"x-api-key", "username", "content-type"}


async def test_permission_refusal_says_which(scripted: ScriptedEsd) -> None:
    message = "User api has no permissions: ['sagemaker_endpoint:list']"
    scripted.then("GET endpoints", (403, {"statusCode": 403, "message": message}, {}))
    async with client_for(scripted) as client:
        with pytest.raises(BackendError) as caught:
            await client.list_endpoints()
    assert caught.value.user_message == f"the ESD user `api` is not allowed to do this: {message}"


async def test_504_on_a_read_is_retried_then_unavailable(scripted: ScriptedEsd) -> None:
    gateway: Reply = (504, {"message": "Endpoint request timed out"}, {})
    scripted.then("GET endpoints", gateway, gateway, gateway, gateway)
    async with client_for(scripted) as client:
        with pytest.raises(BackendUnavailableError) as caught:
            await client.list_endpoints()
    assert scripted.calls["GET endpoints"] == 4
    assert caught.value.user_message == "ESD timed out (504 from API Gateway) on GET endpoints"


async def test_retry_after_is_honoured(scripted: ScriptedEsd) -> None:
    scripted.then("GET endpoints", (429, {"message": "Too Many Requests"}, {"Retry-After": "0"}))
    async with client_for(scripted, retries=1) as client:
        page = await client.list_endpoints()
    assert page.endpoints == () and scripted.calls["GET endpoints"] == 2


async def test_non_json_5xx_is_unavailable_and_logged_redacted(
    scripted: ScriptedEsd, caplog: pytest.LogCaptureFixture
) -> None:
    scripted.then("GET endpoints", (500, f"<html>proxy error for key {KEY}</html>", {}))
    async with client_for(scripted, retries=0) as client:
        with pytest.raises(BackendUnavailableError) as caught:
            await client.list_endpoints()
    assert caught.value.user_message == "ESD failed (500) on GET endpoints"
    assert "proxy error" in caplog.text and KEY not in caplog.text


async def test_server_messages_never_echo_the_key(scripted: ScriptedEsd) -> None:
    scripted.then(
        "GET endpoints", (400, {"statusCode": 400, "message": f"bad key {KEY} in query"}, {})
    )
    async with client_for(scripted) as client:
        with pytest.raises(BackendError) as caught:
            await client.list_endpoints()
    assert KEY not in (caught.value.user_message or "") + str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_start_with_unknown_outcome_is_never_repeated(
    scripted: ScriptedEsd, status: int
) -> None:
    # ESD has no guard against a second start (inferences/start_inference_job.py): a repeat
    # could run the job twice. The job is followed as started instead.
    scripted.then("PUT start", (status, {"message": "Internal server error"}, {}))
    async with EsdBackend(esd_config(scripted.url)) as esd:
        submitted = await esd.submit("bot1", params(), png(), None)
    assert submitted.backend_id == "job-1"
    assert (scripted.calls["PUT start"], scripted.calls["GET job"]) == (1, 0)


async def test_start_throttled_is_repeated_as_it_was_never_acted_on(scripted: ScriptedEsd) -> None:
    scripted.then("PUT start", (429, {"message": "Too Many Requests"}, {"Retry-After": "0"}))
    async with EsdBackend(esd_config(scripted.url)) as esd:
        await esd.submit("bot1", params(), png(), None)
    assert (scripted.calls["PUT start"], scripted.calls["GET job"]) == (2, 0)


async def test_a_failed_upload_removes_the_orphan_job(scripted: ScriptedEsd) -> None:
    scripted.then("PUT upload", (403, "<Error><Code>AccessDenied</Code></Error>", {}))
    async with EsdBackend(esd_config(scripted.url)) as esd:
        with pytest.raises(BackendError) as caught:
            await esd.submit("bot1", params(), png(), None)
    assert caught.value.user_message == "ESD's storage refused the job's payload (403)"
    assert (scripted.calls["DELETE inferences"], scripted.calls["PUT start"]) == (1, 0)


async def test_latency_is_tolerated_until_it_exceeds_the_timeout(server: str) -> None:
    with_faults(server, latency=0.05)
    async with EsdClient(esd_config(server, timeout=2.0)) as client:
        assert (await client.ping()).version == "1.7.0"
    with_faults(server, latency=1.0)
    async with EsdClient(esd_config(server, timeout=0.1, retries=0)) as client:
        with pytest.raises(BackendUnavailableError) as caught:
            await client.list_endpoints()
    assert caught.value.user_message == f"ESD at {esd_config(server).host} timed out"
