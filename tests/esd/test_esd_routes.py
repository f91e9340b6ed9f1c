"""Every ESD route through `EsdBackend` against the ESD-compatible server on loopback."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import pytest
from PIL import Image
from scenario_kit import mask_png, png

from bot.errors import BackendError
from bot.model import InterrogateParams, JobState
from bot.ports import Backend
from cloud.esd import EsdBackend
from cloud.esd.interrogate import NEEDS_SAGEMAKER, UnsupportedInterrogator
from cloud.esd_server import EndpointSpec, running_server
from cloud.esd_server import app as server_app
from cloud.esd_server.config import UserSpec
from commands.spec import Method
from tests.esd.esd_kit import (
    ASYNC,
    CHECKPOINT,
    REALTIME,
    esd_config,
    params,
    server_config,
    settle,
    state_of,
)

if TYPE_CHECKING:
    from pathlib import Path


def test_the_backend_is_a_backend() -> None:
    def accepts(backend: Backend) -> str:
        return backend.name

    assert accepts(EsdBackend(esd_config("http://127.0.0.1:9/prod/"))) == "esd"


async def test_endpoints_are_the_sd_ones_with_states(server: str, backend: EsdBackend) -> None:
    state_of(server).set_endpoint_status(REALTIME, "Updating")
    state_of(server).set_instance_count(ASYNC, 0)
    found = {e.name: e for e in await backend.endpoints()}
    assert set(found) == {ASYNC, REALTIME}  # the ComfyUI endpoint is left out
    assert (found[ASYNC].status, found[ASYNC].type, found[ASYNC].instance_count) == (
        "InService",
        "Async",
        0,
    )
    assert (found[REALTIME].status, found[REALTIME].type) == ("Updating", "Real-time")
    assert found[ASYNC].instance_type == "ml.g5.xlarge"


async def test_endpoints_follow_every_page() -> None:
    specs = tuple(EndpointSpec(f"sd-async-{n:03d}", "Async") for n in range(120))
    async with (
        running_server(server_config(endpoints=specs)) as url,
        EsdBackend(esd_config(url)) as esd,
    ):
        names = [e.name for e in await esd.endpoints()]
        assert sorted(names) == [s.name for s in specs]
        assert state_of(url).requests["list_endpoints"] >= 4  # 121 rows at 50 a page, plus start-up


def _models_dir(tmp_path: Path) -> Path:
    for folder, names in {
        "Lora": [f"style{n:03d}.safetensors" for n in range(130)],
        "VAE": ["clear.vae.pt"],
        "embeddings": ["bad-hands.pt", "easy-negative.safetensors"],
        "hypernetworks": ["grain.pt"],
    }.items():
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"x")
    return tmp_path


async def test_models_per_type_through_every_page(tmp_path: Path) -> None:
    config = server_config(models_dir=_models_dir(tmp_path))
    async with running_server(config) as url, EsdBackend(esd_config(url)) as esd:
        loras = await esd.models("Lora")
        assert len(loras) == 130 and {m.type for m in loras} == {"Lora"}
        everything = await esd.models()
        assert {m.type for m in everything} == {
            "Stable-diffusion",
            "Lora",
            "VAE",
            "embeddings",
            "hypernetworks",
        }
        assert len(everything) == 135
        assert [m.name for m in await esd.models("Stable-diffusion")] == [CHECKPOINT]


async def test_img2img_create_upload_start_poll_results(server: str, backend: EsdBackend) -> None:
    state = state_of(server)
    submitted = await backend.submit("bot1", params(count=2), png(96, 64), mask_png(96, 64))
    assert (submitted.endpoint, submitted.cold_start) == (ASYNC, False)
    job = state.jobs[submitted.backend_id]
    assert (job.task_type, job.inference_type, job.endpoint.name) == ("img2img", "Async", ASYNC)
    assert job.used_models["Stable-diffusion"][0]["model_name"] == CHECKPOINT
    assert job.used_models["VAE"][0]["model_name"] == "Automatic"
    # The payload reached storage through the presigned URL (which refuses API headers).
    uploaded = json.loads(state.storage.objects[job.input_key])
    assert uploaded["init_images"][0].startswith("data:image/png;base64,")
    assert uploaded["mask"].startswith("data:image/png;base64,")
    assert uploaded["batch_size"] == 2
    await state.finish(submitted.backend_id)
    status = await settle(backend, submitted.backend_id)
    assert status.state is JobState.SUCCEED
    output = await backend.results(submitted.backend_id)
    assert len(output.images) == 2
    for image in output.images:
        with Image.open(io.BytesIO(image)) as opened:
            assert (opened.format, opened.size) == ("PNG", (96, 64))
    assert output.infotext is not None and "Seed: 1234" in output.infotext
    assert state.requests["s3_get"] == 3  # two images and the _param.json


async def test_prompt_networks_and_named_embeddings_go_in_models(tmp_path: Path) -> None:
    config = server_config(models_dir=_models_dir(tmp_path))
    async with running_server(config) as url, EsdBackend(esd_config(url)) as esd:
        p = params(prompt="a fox <lora:style007:0.7> <hypernet:grain:1>", vae="clear.vae.pt")
        submitted = await esd.submit("bot1", p, png(), None)
        used = state_of(url).jobs[submitted.backend_id].used_models
        assert [m["model_name"] for m in used["Lora"]] == ["style007.safetensors"]
        assert [m["model_name"] for m in used["hypernetworks"]] == ["grain.pt"]
        assert [m["model_name"] for m in used["VAE"]] == ["clear.vae.pt"]
        # Only the embeddings the prompts name: ESD scans its checkpoint table once per name
        # inside API Gateway's 29 s (inferences/create_inference_job.py).
        assert "embeddings" not in used
        p = params(prompt="a fox, Bad-Hands", negative="easy-negative, blurry, bad-handsome")
        submitted = await esd.submit("bot1b", p, png(), None)
        used = state_of(url).jobs[submitted.backend_id].used_models
        assert sorted(m["model_name"] for m in used["embeddings"]) == [
            "bad-hands.pt",
            "easy-negative.safetensors",
        ]
        p = params(prompt="a fox", negative="bad-handsome, easy-negatives")
        submitted = await esd.submit("bot1c", p, png(), None)
        assert "embeddings" not in state_of(url).jobs[submitted.backend_id].used_models
        with pytest.raises(BackendError) as caught:
            await esd.submit("bot2", params(prompt="<lora:nope:1>"), png(), None)
        assert (
            caught.value.user_message
            == "LoRA not found on the backend: `nope` (see `models type=lora`)"
        )


async def test_interrogate_both_methods(server: str, backend: EsdBackend) -> None:
    state = state_of(server)
    for method, task in (("clip", "interrogate_clip"), ("deepbooru", "interrogate_deepbooru")):
        submitted = await backend.interrogate(
            f"bot-{method}", InterrogateParams(Method(method), ASYNC), png()
        )
        job = state.jobs[submitted.backend_id]
        assert job.task_type == task
        assert json.loads(state.storage.objects[job.input_key])["model"] == (
            "clip" if method == "clip" else "deepdanbooru"
        )
        await state.finish(submitted.backend_id)
        status = await settle(backend, submitted.backend_id, interrogate=True)
        assert status.state is JobState.SUCCEED
        output = await backend.results(submitted.backend_id)
        assert output.images == () and output.caption
    assert "," in (output.caption or "")  # DeepBooru answers tags


async def test_interrogate_without_advertisement_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    silent = server_app._ADVERTISEMENT.model_copy(update={"interrogate": False})
    monkeypatch.setattr(server_app, "_ADVERTISEMENT", silent)
    async with EsdBackend(esd_config(server)) as esd:
        with pytest.raises(BackendError) as caught:
            await esd.interrogate("bot1", InterrogateParams(Method.CLIP, ASYNC), png())
    assert caught.value.user_message == NEEDS_SAGEMAKER
    assert "ESD_BUCKET" in NEEDS_SAGEMAKER
    assert state_of(server).requests["create_inference"] == 0


async def test_an_injected_interrogator_is_used(server: str) -> None:
    async with EsdBackend(esd_config(server), interrogator=UnsupportedInterrogator()) as esd:
        with pytest.raises(BackendError) as caught:
            await esd.interrogate("bot1", InterrogateParams(Method.CLIP, ASYNC), png())
        assert caught.value.user_message == NEEDS_SAGEMAKER
        blip = InterrogateParams("blip", ASYNC)  # type: ignore[arg-type]  # not a Method
        with pytest.raises(BackendError) as unknown:
            await esd.interrogate("bot1", blip, png())
        assert (
            unknown.value.user_message == "unknown interrogate method: blip (use clip or deepbooru)"
        )


async def test_history_pages_newest_first_with_endpoint_and_model(server: str) -> None:
    async with EsdBackend(esd_config(server, page_size=3)) as esd:
        ids = [(await esd.submit(f"bot{n}", params(), png(), None)).backend_id for n in range(7)]
        rows = await esd.history("img2img", 5)
        assert [r.backend_id for r in rows] == ids[::-1][:5]
        assert {(r.task_type, r.state, r.endpoint, r.model) for r in rows} == {
            ("img2img", "inprogress", ASYNC, CHECKPOINT)
        }
        assert all(r.created_at is not None and r.created_at.tzinfo is not None for r in rows)
        assert len(await esd.history("img2img", 100)) == 7
        assert await esd.history("interrogate_clip", 10) == []


async def test_cancel_deletes_the_job(server: str, backend: EsdBackend) -> None:
    state = state_of(server)
    submitted = await backend.submit("bot1", params(), png(), None)
    await backend.cancel(submitted.backend_id)
    assert submitted.backend_id not in state.jobs
    assert state.requests["delete_inferences"] == 1
    await backend.cancel("no-such-job")  # ESD skips unknown ids, so does the backend


async def test_every_inpaint_payload_reaches_the_container(
    server: str, backend: EsdBackend
) -> None:
    state = state_of(server)
    for extra in (
        {"fill": "fill"},
        {"area": "masked", "padding": 8},
        {"invert": True},
        {"mask_blur": 0},
    ):
        submitted = await backend.submit("bot", params(**extra), png(), mask_png())
        await state.finish(submitted.backend_id)
        status = await settle(backend, submitted.backend_id)
        assert status.state is JobState.SUCCEED, status
        assert len((await backend.results(submitted.backend_id)).images) == 1


async def test_listings_name_the_user_so_a_list_only_user_sees_its_roles_resources() -> None:
    # ESD shows a user holding only `sagemaker_endpoint:list` / `checkpoint:list` the rows of
    # the `username` query user's roles, and nothing without the parameter
    # (endpoints/list_endpoints.py, checkpoints/list_checkpoints.py).
    config = server_config(
        users=(UserSpec("api"), UserSpec("bot", ("lister",))), owner_roles=("lister",)
    )
    async with running_server(config) as url, EsdBackend(esd_config(url, username="bot")) as esd:
        assert {e.name for e in await esd.endpoints()} == {
            "sd-async-local",
            "sd-real-time-local",
        }
        assert [m.name for m in await esd.models("Stable-diffusion")] == [
            "sdbot-preview.safetensors"
        ]


async def test_any_users_job_is_read_by_its_id_and_an_unknown_id_is_none() -> None:
    # `GET /inferences/{id}` checks no permission (§4.4): the bot's user reads a job another
    # ESD user (a WebUI user) started, and ESD answers 404 for an id it has no row of.
    config = server_config(users=(UserSpec("api"), UserSpec("webui-user")))
    async with (
        running_server(config) as url,
        EsdBackend(esd_config(url, username="webui-user")) as theirs,
        EsdBackend(esd_config(url)) as ours,
    ):
        backend_id = (await theirs.submit("x", params(), png(), None)).backend_id
        row = await ours.job(backend_id)
        assert row is not None and row.backend_id == backend_id
        assert (row.task_type, row.state, row.endpoint, row.model, row.owner) == (
            "img2img",
            "inprogress",
            ASYNC,
            CHECKPOINT,
            "webui-user",
        )
        await state_of(url).finish(backend_id)
        done = await ours.job(backend_id)
        assert done is not None and done.state == "succeed" and done.reason is None
        assert len((await ours.results(backend_id)).images) == 1
        reads = state_of(url).requests["get_inference"]
        assert await ours.job("0f0f0f0f-0000-4000-8000-000000000000") is None
        assert state_of(url).requests["get_inference"] == reads + 1
