"""`A1111Backend` against the fake WebUI: payloads, catalogue, queue, progress, restarts, errors."""

from __future__ import annotations

import asyncio
import io
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
from PIL import Image
from scenario_kit import mask_png, png

from bot.errors import BackendError, BackendUnavailableError
from bot.model import BackendStatus, GenerationParams, InterrogateParams, JobState
from bot.ports import LOST_JOB, PollTarget
from cloud.a1111 import A1111Backend
from cloud.a1111.backend import CUT_TWICE, RESUBMITTED
from cloud.esd.a1111 import img2img_payload
from commands.spec import Method, Resize, Sampler
from tests.a1111.conftest import webui_config
from tests.a1111.fake_webui import OOM, ApiError, FakeWebUI, oom

if TYPE_CHECKING:
    from pathlib import Path

PARAMS = GenerationParams(
    prompt="a hat",
    negative="blurry",
    strength=0.6,
    steps=8,
    cfg=6.5,
    sampler=Sampler.EULER_A,
    seed=1234,
    width=96,
    height=64,
    count=2,
    resize=Resize.CROP,
    model="dreamshaper_8.safetensors",
    vae="vae-ft-mse-840000-ema-pruned.safetensors",
    endpoint="webui",
)


def target(backend_id: str) -> PollTarget:
    from datetime import UTC, datetime

    return PollTarget(backend_id, False, datetime.now(UTC))


async def status_of(backend: A1111Backend, backend_id: str) -> BackendStatus:
    answer = await backend.statuses([target(backend_id)])
    return answer[backend_id]


async def until(backend: A1111Backend, backend_id: str, *states: JobState) -> BackendStatus:
    """Ask as the poller does until the job is in one of `states` (10 s at most)."""
    async with asyncio.timeout(10):
        while True:
            status = await status_of(backend, backend_id)
            if status.state in states:
                return status
            await asyncio.sleep(0.01)


async def test_img2img_sends_the_esd_payload_with_model_and_vae_overrides(
    backend: A1111Backend, webui: FakeWebUI
) -> None:
    init, mask = png(96, 64), mask_png(96, 64)
    submitted = await backend.submit("job1", PARAMS, init, mask)
    status = await until(backend, submitted.backend_id, JobState.SUCCEED, JobState.FAILED)
    assert status.state is JobState.SUCCEED, status
    [received] = webui.received
    expected = img2img_payload(PARAMS, init, mask)
    # Every field of the shared builder, unchanged, except the per-job overrides.
    for key, value in expected.items():
        if key != "override_settings":
            assert received.body[key] == value, key
    assert received.body["override_settings"] == {
        **expected["override_settings"],  # the panel's settings (clip skip) stay
        "sd_model_checkpoint": "dreamshaper_8.safetensors",
        "sd_vae": "vae-ft-mse-840000-ema-pruned.safetensors",
    }
    assert received.body["override_settings_restore_afterwards"] is True
    assert received.body["force_task_id"] == submitted.backend_id
    assert (received.model, received.vae) == (PARAMS.model, PARAMS.vae)
    assert webui.loaded_model == "sdbot-preview.safetensors"  # restored afterwards
    output = await backend.results(submitted.backend_id)
    assert len(output.images) == 2
    assert Image.open(io.BytesIO(output.images[0])).size == (96, 64)
    assert output.infotext is not None
    assert output.infotext.splitlines()[0] == "a hat"
    assert "Seed: 1234" in output.infotext and "Model: dreamshaper_8" in output.infotext


@pytest.mark.parametrize(("method", "model"), [("clip", "clip"), ("deepbooru", "deepdanbooru")])
async def test_interrogate_both_ways(
    backend: A1111Backend, webui: FakeWebUI, method: str, model: str
) -> None:
    submitted = await backend.interrogate(
        "job1", InterrogateParams(Method(method), "webui"), png(40, 30)
    )
    await until(backend, submitted.backend_id, JobState.SUCCEED)
    [received] = webui.received
    assert (received.route, received.body["model"]) == ("interrogate", model)
    assert received.body["image"].startswith("data:image/png;base64,")
    output = await backend.results(submitted.backend_id)
    assert output.caption and output.images == ()
    history = await backend.history(f"interrogate_{method}", 5)
    assert [row.backend_id for row in history] == [submitted.backend_id]


async def test_catalogue_from_the_webui_routes(backend: A1111Backend, webui: FakeWebUI) -> None:
    models = await backend.models()
    by_type: dict[str, list[str]] = {}
    for m in models:
        by_type.setdefault(m.type, []).append(m.name)
    # Titles carry "[hash]"; the names are what `sd_model_checkpoint` takes.
    assert by_type["Stable-diffusion"] == ["sdbot-preview.safetensors", "dreamshaper_8.safetensors"]
    assert by_type["VAE"] == ["vae-ft-mse-840000-ema-pruned.safetensors"]
    assert by_type["Lora"] == ["add_detail"]
    assert by_type["embeddings"] == ["easynegative"]
    assert "Euler a" in await backend.samplers()
    [endpoint] = await backend.endpoints()
    assert (endpoint.name, endpoint.status, endpoint.type) == ("webui", "InService", "Async")


async def test_no_lora_extension_means_no_loras(tmp_path: Path) -> None:
    async with FakeWebUI(loras=None) as fake:
        backend = A1111Backend(webui_config(fake.url, tmp_path))
        await backend.start()
        try:
            assert await backend.models("Lora") == []
            assert len(await backend.models("Stable-diffusion")) == 2
        finally:
            await backend.aclose()


async def test_progress_and_preview_of_the_running_job(
    backend: A1111Backend, webui: FakeWebUI
) -> None:
    webui.hold()
    submitted = await backend.submit("job1", PARAMS, png(96, 64), None)
    await webui.wait_for("step")
    async with asyncio.timeout(10):
        while (status := await status_of(backend, submitted.backend_id)).preview is None:
            await asyncio.sleep(0.01)
    assert status.state is JobState.INPROGRESS
    assert status.progress is not None and 0 < status.progress < 1
    assert Image.open(io.BytesIO(status.preview)).size == (32, 32)
    webui.release()
    done = await until(backend, submitted.backend_id, JobState.SUCCEED)
    assert done.progress is None and done.preview is None


async def test_jobs_of_several_users_queue_and_run_one_at_a_time(
    backend: A1111Backend, webui: FakeWebUI
) -> None:
    webui.hold()
    ids = []
    for n in range(3):
        params = replace(PARAMS, prompt=f"user {n}", count=1)
        ids.append((await backend.submit(f"job{n}", params, png(96, 64), None)).backend_id)
    await webui.wait_for("step")
    first, second, third = [await status_of(backend, i) for i in ids]
    assert first.state is JobState.INPROGRESS and first.queue_position is None
    assert (second.state, second.queue_position) == (JobState.CREATED, 1)
    assert (third.state, third.queue_position) == (JobState.CREATED, 2)
    assert len(webui.received) == 1  # the bot holds the queue, not the WebUI
    webui.release()
    for backend_id in ids:
        await until(backend, backend_id, JobState.SUCCEED)
    assert [r.body["prompt"] for r in webui.received] == ["user 0", "user 1", "user 2"]
    assert webui.most_running == 1


async def test_concurrency_two_keeps_two_requests_open(webui: FakeWebUI, tmp_path: Path) -> None:
    backend = A1111Backend(webui_config(webui.url, tmp_path, concurrency=2))
    await backend.start()
    try:
        webui.hold()
        ids = [
            (await backend.submit(f"j{n}", replace(PARAMS, count=1), png(), None)).backend_id
            for n in range(3)
        ]
        await webui.wait_for("waiting")  # the second request waits in the WebUI's own lock
        assert (await status_of(backend, ids[2])).queue_position == 1
        webui.release()
        for backend_id in ids:
            await until(backend, backend_id, JobState.SUCCEED)
        assert webui.most_running == 1  # the WebUI itself still runs one at a time
    finally:
        await backend.aclose()


async def test_cancel_interrupts_the_running_job_and_drops_a_queued_one(
    backend: A1111Backend, webui: FakeWebUI
) -> None:
    webui.hold()
    running = await backend.submit("a", PARAMS, png(), None)
    queued = await backend.submit("b", PARAMS, png(), None)
    await webui.wait_for("step")
    await backend.cancel(queued.backend_id)
    assert webui.interrupts == 0
    await backend.cancel(running.backend_id)
    assert webui.interrupts == 1
    gone = await backend.statuses([target(running.backend_id), target(queued.backend_id)])
    assert {status.reason for status in gone.values()} == {LOST_JOB}
    await webui.wait_for("waiting", 0)
    assert len(webui.received) == 1  # the queued job never reached the WebUI
    assert webui.received[0].interrupted


async def test_cancel_does_not_interrupt_another_clients_job(
    backend: A1111Backend, webui: FakeWebUI, tmp_path: Path
) -> None:
    other = A1111Backend(webui_config(webui.url, tmp_path / "other"))
    await other.start()
    try:
        webui.hold()
        theirs = await other.submit("x", PARAMS, png(), None)
        await webui.wait_for("step")
        ours = await backend.submit("y", PARAMS, png(), None)
        await webui.wait_for("waiting")
        await backend.cancel(ours.backend_id)  # ours waits in the WebUI: not the running one
        assert webui.interrupts == 0
        webui.release()
        await until(other, theirs.backend_id, JobState.SUCCEED)
    finally:
        await other.aclose()


async def test_a_webui_restart_mid_job_resubmits_once_with_the_same_seed(
    backend: A1111Backend, webui: FakeWebUI
) -> None:
    webui.hold()
    submitted = await backend.submit("job1", PARAMS, png(96, 64), None)
    await webui.wait_for("step")
    await webui.restart()
    await webui.wait_for("started", 2)
    status = await status_of(backend, submitted.backend_id)
    assert status.note == RESUBMITTED
    first, second = webui.received
    assert first.body == second.body and second.body["seed"] == 1234
    # Cut again: the job fails rather than being sent a third time.
    await webui.wait_for("step")
    await webui.restart()
    failed = await until(backend, submitted.backend_id, JobState.FAILED)
    assert failed.reason == CUT_TWICE
    assert len(webui.received) == 2


async def test_a_bot_restart_mid_job_resubmits_once(webui: FakeWebUI, tmp_path: Path) -> None:
    config = webui_config(webui.url, tmp_path)
    before = A1111Backend(config)
    await before.start()
    webui.hold()
    submitted = await before.submit("job1", PARAMS, png(96, 64), None)
    await webui.wait_for("step")
    await before.aclose()  # the bot stops; the WebUI goes on with the orphaned request
    after = A1111Backend(config)
    await after.start()
    try:
        status = await status_of(after, submitted.backend_id)
        assert status.note == RESUBMITTED
        webui.release()
        done = await until(after, submitted.backend_id, JobState.SUCCEED)
        assert done.note == RESUBMITTED
        assert len(webui.received) == 2
        assert webui.received[0].body == webui.received[1].body
        output = await after.results(submitted.backend_id)
        assert len(output.images) == 2
    finally:
        await after.aclose()
    # A third start finds the result on disk and sends nothing.
    again = A1111Backend(config)
    await again.start()
    try:
        assert (await status_of(again, submitted.backend_id)).state is JobState.SUCCEED
        assert len((await again.results(submitted.backend_id)).images) == 2
        assert len(webui.received) == 2
    finally:
        await again.aclose()


async def test_a_job_cut_by_two_bot_restarts_is_not_sent_a_third_time(
    webui: FakeWebUI, tmp_path: Path
) -> None:
    config = webui_config(webui.url, tmp_path)
    webui.hold()
    backend_id = ""
    for round_ in range(2):
        b = A1111Backend(config)
        await b.start()
        if round_ == 0:
            backend_id = (await b.submit("job1", PARAMS, png(), None)).backend_id
        else:
            await status_of(b, backend_id)
        await webui.wait_for("started", round_ + 1)
        await b.aclose()
    last = A1111Backend(config)
    await last.start()
    try:
        status = await status_of(last, backend_id)
        assert (status.state, status.reason) == (JobState.FAILED, CUT_TWICE)
        assert len(webui.received) == 2
    finally:
        await last.aclose()
        webui.release()


async def test_a_queued_job_survives_a_bot_restart_without_counting_as_resubmitted(
    webui: FakeWebUI, tmp_path: Path
) -> None:
    config = webui_config(webui.url, tmp_path)
    before = A1111Backend(config)
    await before.start()
    webui.hold()
    await before.submit("a", PARAMS, png(), None)
    queued = await before.submit("b", replace(PARAMS, prompt="second"), png(), None)
    await webui.wait_for("step")
    await before.aclose()
    after = A1111Backend(config)
    await after.start()
    try:
        webui.release()
        status = await until(after, queued.backend_id, JobState.SUCCEED)
        assert status.note is None
        assert [r.body["prompt"] for r in webui.received] == ["a hat", "second"]
    finally:
        await after.aclose()


# -- Errors as the WebUI gives them --------------------------------------------------------------


async def test_422_validation_details_are_named(backend: A1111Backend) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.client.post("/sdapi/v1/img2img", {"steps": "many", "width": [1]}, held=True)
    assert caught.value.status == 422
    assert caught.value.user_message == (
        "the WebUI rejected the request: steps: value is not a valid integer; "
        "width: value is not a valid integer"
    )


async def test_an_out_of_memory_500_fails_the_job_with_advice(
    backend: A1111Backend, webui: FakeWebUI
) -> None:
    webui.fail_next.append(oom())
    submitted = await backend.submit("job1", PARAMS, png(), None)
    status = await until(backend, submitted.backend_id, JobState.FAILED)
    assert status.reason is not None
    assert status.reason.startswith("the WebUI's GPU ran out of memory: try a smaller size")
    assert OOM[:40] in status.reason


async def test_other_500s_and_4xx_carry_the_webui_error(
    backend: A1111Backend, webui: FakeWebUI
) -> None:
    webui.fail_next.append(ApiError(500, "", error="RuntimeError", text="shape mismatch"))
    first = await backend.submit("a", PARAMS, png(), None)
    status = await until(backend, first.backend_id, JobState.FAILED)
    assert status.reason == "the WebUI failed: RuntimeError: shape mismatch"
    nope = replace(PARAMS, sampler="Nope")  # type: ignore[arg-type]  # one the WebUI lacks
    unknown_sampler = await backend.submit("b", nope, png(), None)
    status = await until(backend, unknown_sampler.backend_id, JobState.FAILED)
    assert status.reason == "the WebUI failed: Sampler not found"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_said_plainly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    backend = A1111Backend(webui_config(url, tmp_path, reconnect=0.0))
    await backend.start()
    try:
        with pytest.raises(BackendUnavailableError) as caught:
            await backend.endpoints()
        assert caught.value.user_message is not None
        assert "is not reachable (connection refused)" in caught.value.user_message
        submitted = await backend.submit("job1", PARAMS, png(), None)
        status = await until(backend, submitted.backend_id, JobState.FAILED)
        assert status.reason is not None and "not reachable" in status.reason
    finally:
        await backend.aclose()


async def test_a_job_waits_for_a_webui_that_is_coming_back(
    backend: A1111Backend, webui: FakeWebUI
) -> None:
    await webui.down()
    submitted = await backend.submit("job1", PARAMS, png(), None)
    await webui.up()
    status = await until(backend, submitted.backend_id, JobState.SUCCEED, JobState.FAILED)
    assert status.state is JobState.SUCCEED and status.note is None
    assert len(webui.received) == 1


async def test_basic_auth(tmp_path: Path) -> None:
    async with FakeWebUI(auth="sdbot:pa55-w0rd-x") as fake:
        anonymous = A1111Backend(webui_config(fake.url, tmp_path))
        wrong = A1111Backend(webui_config(fake.url, tmp_path, auth="sdbot:nope-nope"))
        right = A1111Backend(webui_config(fake.url, tmp_path, auth="sdbot:pa55-w0rd-x"))
        for b in (anonymous, wrong, right):
            await b.start()
        try:
            for refused in (anonymous, wrong):
                with pytest.raises(BackendError) as caught:
                    await refused.models("Stable-diffusion")
                assert caught.value.status == 401
                assert "refused the bot's credentials" in str(caught.value.user_message)
            # The Lora extension's route is outside --api-auth, as in the WebUI.
            assert await anonymous.models("Lora")
            assert len(await right.models("Stable-diffusion")) == 2
            assert "pa55" not in repr(right.client) + repr(webui_config(fake.url, tmp_path))
        finally:
            for b in (anonymous, wrong, right):
                await b.aclose()


async def test_a_webui_without_api_says_so(tmp_path: Path) -> None:
    async with FakeWebUI(api=False) as fake:
        backend = A1111Backend(webui_config(fake.url, tmp_path))
        await backend.start()
        try:
            with pytest.raises(BackendError) as caught:
                await backend.endpoints()
            assert caught.value.user_message == (
                f"the WebUI at 127.0.0.1:{fake.port} has no API: start it with --api"
            )
        finally:
            await backend.aclose()


# -- The port: create, record, then start; lost jobs; release ------------------------------------


async def test_the_core_records_the_id_before_anything_is_sent(
    backend: A1111Backend, webui: FakeWebUI, tmp_path: Path
) -> None:
    recorded: list[tuple[str, int]] = []

    async def created(backend_id: str) -> None:
        recorded.append((backend_id, len(webui.received)))

    submitted = await backend.submit("job1", PARAMS, png(), None, created=created)
    assert recorded == [(submitted.backend_id, 0)]
    await until(backend, submitted.backend_id, JobState.SUCCEED)

    async def refused(backend_id: str) -> None:
        raise RuntimeError("the store is down")

    with pytest.raises(RuntimeError):
        await backend.submit("job2", PARAMS, png(), None, created=refused)
    assert len(webui.received) == 1  # the second job never reached the WebUI
    folders = sorted(p.name for p in (tmp_path / "a1111").iterdir())
    assert folders == [submitted.backend_id]


async def test_an_unknown_job_is_reported_lost_and_released_results_are_dropped(
    backend: A1111Backend, tmp_path: Path
) -> None:
    lost = await status_of(backend, "8d3c7f7e-0000-4000-8000-000000000000")
    assert (lost.state, lost.reason) == (JobState.FAILED, LOST_JOB)
    submitted = await backend.submit("job1", PARAMS, png(), None)
    await until(backend, submitted.backend_id, JobState.SUCCEED)
    await backend.release(submitted.backend_id)
    assert not (tmp_path / "a1111" / submitted.backend_id).exists()
    with pytest.raises(BackendError):
        await backend.results(submitted.backend_id)
    assert [row.backend_id for row in await backend.history("img2img", 5)] == [submitted.backend_id]
    # One job by its id, as `job <id>` reads it; an id the backend never queued is None.
    row = await backend.job(submitted.backend_id)
    assert row is not None and (row.task_type, row.state) == ("img2img", "succeed")
    assert await backend.job("8d3c7f7e-0000-4000-8000-000000000000") is None


async def test_batch_count_times_batch_size_images_come_back(backend: A1111Backend) -> None:
    params = replace(PARAMS, count=2, batch_count=2)
    submitted = await backend.submit("job1", params, png(96, 64), None)
    await until(backend, submitted.backend_id, JobState.SUCCEED)
    assert len((await backend.results(submitted.backend_id)).images) == 4
