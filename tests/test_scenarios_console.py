"""End to end through the real console adapter, core, SQLite store and local backend."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from scenario_kit import (
    IMAGE_MODES,
    ConsoleRun,
    job_ids,
    mask_png,
    png,
    run_image_mode,
    saved,
    size_of,
    states,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from bot.model import GenerationParams
    from bot.views import ResultImage

# Backend-neutral: each scenario runs on the local backend and on the WebUI backend.
pytestmark = pytest.mark.usefixtures("scenario_backend")


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[ConsoleRun]:
    async with ConsoleRun(tmp_path) as run:
        yield run


async def test_img2img_runs_to_saved_images(console: ConsoleRun) -> None:
    image = console.write("cat.png", png(200, 150))
    lines = await console.run(f"img2img a watercolor cat image={image} count=2 seed=7")
    [job] = job_ids(lines)
    assert lines[0] == f"job {job} accepted"
    assert states(lines, job)[0] == "created"
    assert states(lines, job)[-1] == "succeed"
    files = saved(lines, job)
    assert len(files) == 2
    assert all(f.parent == console.config.output_dir / job for f in files)
    assert {size_of(f.read_bytes()) for f in files} == {(200, 152)}


@pytest.mark.parametrize(("command", "extra"), IMAGE_MODES)
async def test_every_image_mode_delivers(console: ConsoleRun, command: str, extra: str) -> None:
    await run_image_mode(console, command, extra)


async def test_interrogate_both_methods(console: ConsoleRun) -> None:
    image = console.write("in.png", png(64, 64))
    lines = await console.run(
        f"interrogate image={image}", f"interrogate image={image} method=deepbooru"
    )
    clip, booru = job_ids(lines)
    captions = {
        line.split(":", 1)[0]: line.split(": ", 1)[1]
        for line in lines
        if line.startswith("caption ")
    }
    assert captions[f"caption {clip}"].startswith("a ")
    assert "," in captions[f"caption {booru}"]


async def test_refusals_are_error_lines_and_never_jobs(console: ConsoleRun) -> None:
    image = console.write("in.png", png())
    lines = await console.run(
        "imgtoimg a cat",
        f"img2img a cat image={image} strenght=0.5",
        f"img2img a cat image={image} steps=500",
        f"img2img a cat image={image} steps=2 steps=3",
        "img2img a cat",
        f"inpaint-upload x image={image}",
        f"img2img x image={image} size=100x100",
    )
    assert job_ids(lines) == []
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 7
    assert "did you mean `img2img`" in errors[0]
    assert "did you mean `strength`" in errors[1]
    assert "between 1 and 150" in errors[2]
    assert "needs image" in errors[4]
    assert "needs mask" in errors[5]


async def test_bad_images_are_refused_with_the_file_named(console: ConsoleRun) -> None:
    html = console.write("page.png", b"<!doctype html><html>login</html>")
    empty = console.write("empty.png", b"")
    image = console.write("in.png", png())
    lines = await console.run(
        f"img2img x image={html}",
        f"img2img x image={empty}",
        f"img2img x image={console.tmp_path / 'missing.png'}",
        f"inpaint x image={image}",
    )
    # Console files are read before the ack: a bad one is a refusal, and nothing is stored.
    assert job_ids(lines) == []
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines)
    assert "page.png is not an image" in lines[0]
    assert "empty.png is empty" in lines[1]
    assert "no such file" in lines[2] and "missing.png" in lines[2]
    assert "attach a mask" in lines[3]


async def test_job_jobs_and_filters(console: ConsoleRun) -> None:
    image = console.write("in.png", png())
    lines = await console.run(f"img2img a cat image={image}", f"interrogate image={image}")
    first, second = job_ids(lines)
    listing = await console.run("jobs")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d → interrogate → succeed → " + second, listing[0]
    )
    assert listing[1].endswith(f"→ img2img → succeed → {first}")
    assert await console.run("jobs type=interrogate") == [listing[0]]
    assert await console.run("jobs status=failed") == ["no jobs match"]
    assert len(await console.run("jobs status=succeed since=1h")) == 2
    assert await console.run("jobs until=2020-01-01") == ["no jobs match"]
    assert await console.run("jobs endpoint=local-preview type=img2img") == [listing[1]]
    assert await console.run("jobs model=sdbot-preview.safetensors") == [listing[1]]
    assert await console.run("jobs user=operator all=true") == listing
    assert "error: unknown job type" in (await console.run("jobs type=txt3img"))[0]
    cloud = await console.run("jobs source=cloud type=img2img")
    assert len(cloud) == 1 and "→ img2img → succeed →" in cloud[0]
    details = await console.run(f"job {first[:5]}")
    assert details[0] == listing[1]
    assert any(line.startswith("prompt: a cat") for line in details)
    assert any(line.startswith("saved ") for line in details)


async def test_cancel_stops_a_job_and_it_never_delivers(tmp_path: Path) -> None:
    async with ConsoleRun(tmp_path, local_delay=30.0) as console:
        image = console.write("in.png", png())
        lines = (
            await console.app.dispatcher.handle_text(
                console.adapter.caller, f"img2img slow image={image}", [], _Quiet()
            ),
            None,
        )
        job = lines[0]
        assert job is not None
        out = await console.run(f"cancel {job.id}")
        assert f"job `{job.id}` cancelled" in out[-1]
        stored = await console.app.store.get(job.id)
        assert stored is not None and stored.state.value == "cancelled"
        assert not (console.config.output_dir / job.id).exists()
        again = await console.run(f"cancel {job.id}")
        assert "already cancelled" in again[0]


class _Quiet:
    async def accepted(self, job_id: str) -> None: ...
    async def reply(
        self, text: str, *, private: bool = False, images: Sequence[ResultImage] = ()
    ) -> None: ...
    async def refuse(self, message: str) -> None:
        raise AssertionError(message)


async def test_help_endpoints_models(console: ConsoleRun) -> None:
    overview = await console.run("help")
    text = "\n".join(overview)
    assert "img2img" in text and "interrogate" in text and "Out of scope" in text
    assert "txt2img" in text
    assert any("strength" in line for line in await console.run("help img2img"))
    assert "did you mean" in (await console.run("help inpant"))[0]
    assert "local-preview" in (await console.run("endpoints"))[0]
    assert "sdbot-preview.safetensors" in (await console.run("models type=checkpoint"))[0]
    assert "unknown model type" in (await console.run("models type=loras2"))[0]


async def test_unknown_model_and_endpoint_are_refused_without_reaching_the_backend(
    console: ConsoleRun,
) -> None:
    image = console.write("in.png", png())
    lines = await console.run(
        f"img2img x image={image} model=nope.ckpt", f"img2img x image={image} endpoint=gpu-1"
    )
    assert job_ids(lines) == []
    assert "unknown model `nope.ckpt`" in lines[0]
    assert "unknown endpoint `gpu-1`" in lines[1]
    history = await console.app.backend.history("img2img", 10)
    assert history == []


async def test_reply_rows_through_the_console(console: ConsoleRun) -> None:
    image = console.write("in.png", png(96, 64))
    other = console.write("other.png", png(64, 64, color=(200, 30, 30)))
    [base] = job_ids(await console.run(f"img2img a cat image={image} seed=42 steps=10"))
    store = console.app.store

    async def params(job_id: str) -> GenerationParams:
        job = await store.get(job_id)
        assert job is not None and job.params is not None
        return job.params

    [opts] = job_ids(await console.run(f"reply {base} steps=12"))
    job, parent = await store.get(opts), await store.get(base)
    assert job is not None and job.params is not None and parent is not None
    assert (job.params.prompt, job.params.seed, job.params.steps) == ("a cat", 42, 12)
    assert job.parent_id == base and job.thread == parent.thread

    [text] = job_ids(await console.run(f"reply {base} a dog"))
    assert (await params(text)).prompt == "a dog"
    [plus] = job_ids(await console.run(f"reply {base} + wearing a hat"))
    assert (await params(plus)).prompt == "a cat, wearing a hat"
    [again] = job_ids(await console.run("reply last again"))
    assert (await params(again)).prompt == "a cat, wearing a hat"
    assert (await params(again)).seed != 42
    [swap] = job_ids(await console.run(f"reply {base} image={other}"))
    assert (await params(swap)).width == 64
    [chained] = job_ids(await console.run(f"reply {base} input=result:1 count=2"))
    assert (await params(chained)).count == 2
    bad = await console.run(f"reply {base} strenght=1")
    assert bad[0].startswith("error: ") and job_ids(bad) == []
    assert await console.run(f"reply {base} // just a note") == []
    out_of_range = await console.run(f"reply {base} input=result:3")
    assert "has 1 result image" in out_of_range[0]


async def test_every_option_reaches_the_backend_parameters(console: ConsoleRun) -> None:
    image = console.write("in.png", png(96, 64))
    mask = console.write("mask.png", mask_png(96, 64))
    lines = await console.run(
        f'inpaint-upload "a cat" negative="blurry, dark" image={image} mask={mask} strength=0.3'
        ' steps=12 cfg=5.5 sampler="euler a" seed=3 size=72x64 count=2 resize=crop'
        " model=sdbot-preview.safetensors vae=Automatic endpoint=local-preview mask_blur=0"
        " fill=latent-noise area=masked padding=8 invert=yes",
        f"img2img x image={image} width=192",
    )
    first, second = job_ids(lines)
    job = await console.app.store.get(first)
    assert job is not None and job.params is not None
    p = job.params
    assert (p.prompt, p.negative, p.strength, p.steps, p.cfg, p.sampler, p.seed) == (
        "a cat",
        "blurry, dark",
        0.3,
        12,
        5.5,
        "Euler a",
        3,
    )
    assert (p.width, p.height, p.count, p.resize) == (72, 64, 2, "crop")
    assert (p.model, p.vae, p.endpoint) == (
        "sdbot-preview.safetensors",
        "Automatic",
        "local-preview",
    )
    assert (p.mask_blur, p.fill, p.area, p.padding, p.invert) == (
        0,
        "latent-noise",
        "masked",
        8,
        True,
    )
    assert len(saved(lines, first)) == 2
    assert {size_of(f.read_bytes()) for f in saved(lines, first)} == {(72, 64)}
    other = await console.app.store.get(second)
    assert other is not None and other.params is not None
    # Only the width given: the height keeps the input aspect ratio (96x64 → 192x128).
    assert (other.params.width, other.params.height) == (192, 128)
