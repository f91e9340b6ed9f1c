"""Tests of the local backend: job life, results, checks, models, cancel, history and closing."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from bot.errors import BackendError, BackendUnavailableError, ConfigError, JobFailedError
from bot.model import Endpoint, EndpointType, GenerationParams, InterrogateParams, JobState, Model
from bot.ports import LOST_JOB, Backend, PollTarget
from cloud.local import LocalBackend, LocalBackendConfig
from cloud.local.preview import caption
from commands.spec import Method, Resize, Sampler

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

ENDPOINT = "local-preview"


def make_params(**changes: Any) -> GenerationParams:
    params = GenerationParams(
        prompt="a red boat",
        negative="",
        strength=0.75,
        steps=20,
        cfg=7.0,
        sampler=Sampler.EULER_A,
        seed=99,
        width=48,
        height=32,
        count=2,
        resize=Resize.JUST_RESIZE,
        model="sdbot-preview.safetensors",
        vae="Automatic",
        endpoint=ENDPOINT,
    )
    return dataclasses.replace(params, **changes)


def png(colour: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def target(backend_id: str, *, interrogate: bool = False) -> PollTarget:
    return PollTarget(backend_id, interrogate, datetime.now(UTC))


async def state_of(backend: LocalBackend, backend_id: str) -> JobState | None:
    status = (await backend.statuses([target(backend_id)])).get(backend_id)
    return None if status is None else status.state


async def states_until_terminal(backend: LocalBackend, backend_id: str) -> list[JobState]:
    """Every state the job shows, in order, polling on each turn of the event loop."""
    seen: list[JobState] = []
    for _ in range(1_000_000):  # a bound, so a stuck job fails the test instead of hanging it
        state = await state_of(backend, backend_id)
        assert state is not None
        if not seen or seen[-1] is not state:
            seen.append(state)
        if state.terminal:
            return seen
        await asyncio.sleep(0)
    raise AssertionError(f"job never finished; states seen: {seen}")


@pytest.fixture
async def backend() -> AsyncIterator[LocalBackend]:
    local = LocalBackend(LocalBackendConfig(delay=0.01))
    await local.start()
    yield local
    await local.aclose()


@pytest.fixture
async def slow_backend() -> AsyncIterator[LocalBackend]:
    """Jobs never finish during a test: for cancel and close."""
    local = LocalBackend(LocalBackendConfig(delay=3600))
    await local.start()
    yield local
    await local.aclose()


def job_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("local-backend-job")]


# -- Life of a job --------------------------------------------------------------------------


def test_local_backend_is_a_backend() -> None:
    # mypy checks the assignment; at run time the name is what the core shows.
    backend: Backend = LocalBackend(LocalBackendConfig())
    assert backend.name == "local"


async def test_img2img_job_goes_created_inprogress_succeed(backend: LocalBackend) -> None:
    submitted = await backend.submit("job1", make_params(), png(), None)
    assert submitted.endpoint == ENDPOINT
    assert not submitted.cold_start
    assert await states_until_terminal(backend, submitted.backend_id) == [
        JobState.CREATED,
        JobState.INPROGRESS,
        JobState.SUCCEED,
    ]
    output = await backend.results(submitted.backend_id)
    assert len(output.images) == 2
    for data in output.images:
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.size) == ("PNG", (48, 32))
    assert output.images[0] != output.images[1]
    assert output.infotext is not None
    assert output.infotext.startswith("a red boat\nSteps: 20")
    assert "Seed: 99," in output.infotext
    assert output.infotext.endswith("Engine: sdbot preview (not Stable Diffusion)")
    assert output.caption is None


async def test_inpaint_job_uses_the_mask(backend: LocalBackend) -> None:
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (0, 0, 20, 40))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    params = make_params(count=1, mask_blur=0, strength=1.0, width=40, height=40)
    submitted = await backend.submit("job1", params, png(), buffer.getvalue())
    await states_until_terminal(backend, submitted.backend_id)
    output = await backend.results(submitted.backend_id)
    assert output.infotext is not None
    assert "Mask blur: 0" in output.infotext
    with Image.open(io.BytesIO(output.images[0])) as image:
        assert image.convert("RGB").getpixel((30, 20)) == (200, 40, 40)  # outside the mask
        assert image.convert("RGB").getpixel((10, 20)) != (200, 40, 40)  # repainted


@pytest.mark.parametrize("method", ["clip", "deepbooru"])
async def test_interrogate_returns_the_caption(backend: LocalBackend, method: str) -> None:
    image = png((30, 30, 230), (60, 40))
    submitted = await backend.interrogate(
        "job1", InterrogateParams(Method(method), ENDPOINT), image
    )
    states = await states_until_terminal(backend, submitted.backend_id)
    assert states[-1] is JobState.SUCCEED
    output = await backend.results(submitted.backend_id)
    assert output.caption == caption(image, method)
    assert output.images == ()
    (row,) = await backend.history(f"interrogate_{method}", 10)
    assert row.backend_id == submitted.backend_id


async def test_unreadable_image_fails_the_job_with_a_reason(backend: LocalBackend) -> None:
    submitted = await backend.submit("job1", make_params(), b"not a png", None)
    assert (await states_until_terminal(backend, submitted.backend_id))[-1] is JobState.FAILED
    status = (await backend.statuses([target(submitted.backend_id)]))[submitted.backend_id]
    assert status.reason is not None
    assert status.reason.startswith("preview engine error:")
    with pytest.raises(JobFailedError):
        await backend.results(submitted.backend_id)


async def test_results_of_an_unfinished_or_unknown_job_are_refused(
    slow_backend: LocalBackend,
) -> None:
    submitted = await slow_backend.submit("job1", make_params(), png(), None)
    with pytest.raises(BackendError, match="no results yet"):
        await slow_backend.results(submitted.backend_id)
    with pytest.raises(BackendError, match="not found"):
        await slow_backend.results("nope")


async def test_statuses_report_a_job_the_backend_does_not_have_as_lost(
    backend: LocalBackend,
) -> None:
    submitted = await backend.submit("job1", make_params(), png(), None)
    answer = await backend.statuses([target(submitted.backend_id), target("unknown")])
    assert answer[submitted.backend_id].state is JobState.CREATED
    assert answer["unknown"].state is JobState.FAILED
    assert answer["unknown"].reason == LOST_JOB


async def test_a_released_job_drops_its_results_and_its_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    backend = LocalBackend(LocalBackendConfig(delay=0.0, state_dir=state))
    await backend.start()
    try:
        submitted = await backend.submit("job1", make_params(), png(), None)
        for _ in range(500):
            if (await backend.statuses([target(submitted.backend_id)]))[
                submitted.backend_id
            ].state.terminal:
                break
            await asyncio.sleep(0.01)
        assert (await backend.results(submitted.backend_id)).images
        assert (state / submitted.backend_id).is_dir()
        await backend.release(submitted.backend_id)
        assert not (state / submitted.backend_id).exists()
        with pytest.raises(BackendError, match="no results"):
            await backend.results(submitted.backend_id)
        # The row stays in the history, and can be read by its id.
        assert [j.backend_id for j in await backend.history("img2img", 10)] == [
            submitted.backend_id
        ]
        row = await backend.job(submitted.backend_id)
        assert row is not None and (row.task_type, row.state) == ("img2img", "succeed")
        assert await backend.job("8d3c7f7e-0000-4000-8000-000000000000") is None
    finally:
        await backend.aclose()


# -- Checks on submission -------------------------------------------------------------------


async def test_unknown_model_is_refused(backend: LocalBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.submit("job1", make_params(model="nope.safetensors"), png(), None)
    assert caught.value.user_message == "model not found: nope.safetensors"
    assert await backend.history("img2img", 10) == []


async def test_unknown_vae_is_refused(backend: LocalBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.submit("job1", make_params(vae="missing.pt"), png(), None)
    assert caught.value.user_message == "VAE not found: missing.pt"


async def test_unknown_endpoint_is_refused_naming_the_available_one(backend: LocalBackend) -> None:
    with pytest.raises(BackendError) as caught:
        await backend.submit("job1", make_params(endpoint="gpu-1"), png(), None)
    assert caught.value.user_message == f"endpoint not found: gpu-1 (available: {ENDPOINT})"
    with pytest.raises(BackendError) as caught:
        await backend.interrogate("job2", InterrogateParams(Method.CLIP, "gpu-1"), png())
    assert caught.value.user_message is not None
    assert "gpu-1" in caught.value.user_message
    assert ENDPOINT in caught.value.user_message


async def test_unknown_interrogate_method_is_refused(backend: LocalBackend) -> None:
    blip = InterrogateParams("blip", ENDPOINT)  # type: ignore[arg-type]  # not a Method
    with pytest.raises(BackendError, match="method"):
        await backend.interrogate("job1", blip, png())


# -- Catalogue ------------------------------------------------------------------------------


async def test_one_endpoint_in_service() -> None:
    local = LocalBackend(LocalBackendConfig(endpoint_name="my-box"))
    assert await local.endpoints() == (
        Endpoint(
            name="my-box",
            status="InService",
            type=EndpointType.ASYNC,
            instance_type="local",
            instance_count=1,
        ),
    )


async def test_builtin_checkpoint_only_without_a_folder(backend: LocalBackend) -> None:
    assert await backend.models() == [Model("sdbot-preview.safetensors", "Stable-diffusion")]
    assert await backend.models("VAE") == []


async def test_models_come_from_the_folder_by_type(tmp_path: Path) -> None:
    for relative in (
        "Stable-diffusion/zeta.ckpt",
        "Stable-diffusion/Alpha v2.safetensors",
        "Lora/style.safetensors",
        "Lora/.gitkeep",
        "VAE/kl-f8.pt",
        "embeddings/bad-hands.pt",
        "ControlNet/canny.pth",  # not a type the bot offers
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    (tmp_path / "Lora" / "nested").mkdir()
    local = LocalBackend(LocalBackendConfig(delay=0.01, models_dir=tmp_path))
    await local.start()
    try:
        assert await local.models() == [
            Model("sdbot-preview.safetensors", "Stable-diffusion"),
            Model("Alpha v2.safetensors", "Stable-diffusion"),
            Model("zeta.ckpt", "Stable-diffusion"),
            Model("style.safetensors", "Lora"),
            Model("kl-f8.pt", "VAE"),
            Model("bad-hands.pt", "embeddings"),
        ]
        assert await local.models("Lora") == [Model("style.safetensors", "Lora")]
        assert await local.models("hypernetworks") == []
        params = make_params(model="zeta.ckpt", vae="kl-f8.pt")
        submitted = await local.submit("job1", params, png(), None)
        assert (await states_until_terminal(local, submitted.backend_id))[-1] is JobState.SUCCEED
    finally:
        await local.aclose()


async def test_start_refuses_a_missing_models_folder(tmp_path: Path) -> None:
    local = LocalBackend(LocalBackendConfig(models_dir=tmp_path / "absent"))
    with pytest.raises(ConfigError, match="absent"):
        await local.start()


@pytest.mark.parametrize("delay", [-1.0, float("nan")])
def test_config_refuses_a_bad_delay(delay: float) -> None:
    with pytest.raises(ConfigError, match="delay"):
        LocalBackendConfig(delay=delay)


# -- Cancel, history, closing ---------------------------------------------------------------


async def test_cancel_stops_the_job_and_forgets_it(slow_backend: LocalBackend) -> None:
    kept = await slow_backend.submit("job1", make_params(), png(), None)
    cancelled = await slow_backend.submit("job2", make_params(), png(), None)
    await slow_backend.cancel(cancelled.backend_id)
    answer = await slow_backend.statuses([target(kept.backend_id), target(cancelled.backend_id)])
    assert answer[kept.backend_id].state is JobState.CREATED
    assert answer[cancelled.backend_id].reason == LOST_JOB  # as ESD's 404 after a DELETE
    assert [row.backend_id for row in await slow_backend.history("img2img", 10)] == [
        kept.backend_id
    ]
    assert len(job_tasks()) == 1
    await slow_backend.cancel("unknown")  # skipped, like ESD's DELETE


async def test_history_is_newest_first_per_task_type(slow_backend: LocalBackend) -> None:
    backend = slow_backend
    ids = [
        (await backend.submit(f"job{i}", make_params(), png(), None)).backend_id for i in range(3)
    ]
    caption_job = await backend.interrogate("job9", InterrogateParams(Method.CLIP, ENDPOINT), png())
    rows = await backend.history("img2img", 10)
    assert [row.backend_id for row in rows] == ids[::-1]
    assert {(row.task_type, row.state, row.endpoint, row.model) for row in rows} == {
        ("img2img", "created", ENDPOINT, "sdbot-preview.safetensors")
    }
    assert all(row.created_at is not None for row in rows)
    assert [row.backend_id for row in await backend.history("img2img", 2)] == ids[:0:-1]
    assert [row.backend_id for row in await backend.history("interrogate_clip", 10)] == [
        caption_job.backend_id
    ]
    assert await backend.history("txt2img", 10) == []
    assert await backend.history("img2img", 0) == []


async def test_history_shows_the_current_state(backend: LocalBackend) -> None:
    submitted = await backend.submit("job1", make_params(), png(), None)
    await states_until_terminal(backend, submitted.backend_id)
    (row,) = await backend.history("img2img", 10)
    assert row.state == "succeed"


async def test_aclose_cancels_running_jobs_and_refuses_new_ones() -> None:
    local = LocalBackend(LocalBackendConfig(delay=3600))
    await local.start()
    first = await local.submit("job1", make_params(), png(), None)
    await local.interrogate("job2", InterrogateParams(Method.DEEPBOORU, ENDPOINT), png())
    assert len(job_tasks()) == 2
    await local.aclose()
    assert job_tasks() == []
    # The table stays readable: the job never finished.
    assert await state_of(local, first.backend_id) in (JobState.CREATED, JobState.INPROGRESS)
    with pytest.raises(BackendUnavailableError):
        await local.submit("job3", make_params(), png(), None)


async def test_aclose_while_rendering_waits_for_the_job_task() -> None:
    local = LocalBackend(LocalBackendConfig(delay=0))
    await local.start()
    params = make_params(width=256, height=256, count=4)
    submitted = await local.submit("job1", params, png(), None)
    for _ in range(1_000_000):  # until the job has left `created` and is rendering
        if await state_of(local, submitted.backend_id) is not JobState.CREATED:
            break
        await asyncio.sleep(0)
    assert await state_of(local, submitted.backend_id) is JobState.INPROGRESS
    await local.aclose()
    assert job_tasks() == []


async def test_cancelling_aclose_itself_propagates(slow_backend: LocalBackend) -> None:
    await slow_backend.submit("job1", make_params(), png(), None)
    closing = asyncio.create_task(slow_backend.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
