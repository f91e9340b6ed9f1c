"""The rest of the WebUI's img2img panel, end to end: console → core → ESD client → ESD server.

Each scenario gives one panel option and checks the A1111 payload that the ESD-compatible server
received (the `api_param.json` the client uploaded) and the infotext of the images it made.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image
from scenario_kit import job_ids, mask_png, png, saved, size_of, sketch_of, states

from cloud.esd_server import running_server
from tests.esd.esd_kit import server_config, state_of
from tests.esd.test_esd_scenarios import EsdConsole

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

PIX2PIX = "v1-instruct-pix2pix.safetensors"  # after the default checkpoint by name


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[EsdConsole]:
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    (checkpoints / PIX2PIX).write_bytes(b"")
    config = server_config(job_seconds=(0.01, 0.02), models_dir=tmp_path / "models")
    async with running_server(config) as url:
        run = EsdConsole(tmp_path, url)
        async with run.app:
            yield run


def received(console: EsdConsole, backend_index: int = -1) -> dict[str, Any]:
    """The img2img payload the server received for its `backend_index`-th job."""
    state = state_of(console.url)
    rows = [row for row in state.jobs.values() if row.task_type == "img2img"]
    row = rows[backend_index]
    raw = state.storage.objects[row.input_key]
    payload = json.loads(raw)
    assert isinstance(payload, dict)
    return payload


def infotext(path: Path) -> str:
    with Image.open(path) as image:
        return str(image.info["parameters"])


async def run_ok(console: EsdConsole, line: str) -> tuple[str, list[Path]]:
    lines = await console.run(line)
    [job] = job_ids(lines)
    assert states(lines, job)[-1] == "succeed", lines
    return job, saved(lines, job)


# option words → (payload fields the server must have received, infotext fields)
PANEL: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("subseed=77 subseed_strength=0.3", {"subseed": 77, "subseed_strength": 0.3},
     ("Variation seed: 77", "Variation seed strength: 0.3")),
    ("restore_faces=yes", {"restore_faces": True}, ("Face restoration: CodeFormer",)),
    ("tiling=on", {"tiling": True}, ("Tiling: True",)),
    ("clip_skip=2", {"override_settings": {"CLIP_stop_at_last_layers": 2}}, ("Clip skip: 2",)),
    (f"image_cfg=0.8 model={PIX2PIX}", {"image_cfg_scale": 0.8}, ("Image CFG scale: 0.8",)),
    ("noise_multiplier=0.9", {"initial_noise_multiplier": 0.9}, ("Noise multiplier: 0.9",)),
    ("scheduler=exponential",
     {"scheduler": "Exponential", "sampler_name": "DPM++ 2M Exponential"},
     ("Sampler: DPM++ 2M, Schedule type: Exponential",)),
]  # fmt: skip


@pytest.mark.parametrize(("words", "payload", "fields"), PANEL)
async def test_each_panel_option_reaches_a1111(
    console: EsdConsole, words: str, payload: dict[str, Any], fields: tuple[str, ...]
) -> None:
    image = console.write("in.png", png(96, 64))
    _, [out] = await run_ok(console, f"img2img a fox image={image} seed=5 {words}")
    sent = received(console)
    for key, value in payload.items():
        assert sent[key] == value, key
    text = infotext(out)
    for field in fields:
        assert field in text, text


async def test_defaults_are_what_the_webui_sends(console: EsdConsole) -> None:
    image = console.write("in.png", png(96, 64))
    _, [out] = await run_ok(console, f"img2img a fox image={image}")
    sent = received(console)
    assert (sent["n_iter"], sent["subseed"], sent["subseed_strength"]) == (1, -1, 0.0)
    assert (sent["restore_faces"], sent["tiling"]) == (False, False)
    assert (sent["image_cfg_scale"], sent["initial_noise_multiplier"]) == (1.5, 1.0)
    assert sent["scheduler"] == "Automatic"
    assert sent["sampler_name"] == "DPM++ 2M Karras"
    assert sent["override_settings"] == {"CLIP_stop_at_last_layers": 1}
    text = infotext(out)
    # A1111 1.9+ splits the legacy name; no optional field appears at its default.
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in text
    for field in ("Variation seed", "Face restoration", "Tiling", "Clip skip", "Noise mult"):
        assert field not in text
    assert "Image CFG scale" not in text  # not an instruct-pix2pix checkpoint


async def test_batch_count_runs_batches_of_count(console: EsdConsole) -> None:
    image = console.write("in.png", png(96, 64))
    _, files = await run_ok(console, f"img2img a fox image={image} seed=10 count=2 batch_count=3")
    sent = received(console)
    assert (sent["batch_size"], sent["n_iter"]) == (2, 3)
    assert len(files) == 6
    seeds = [infotext(f).split("Seed: ", 1)[1].split(",", 1)[0] for f in files]
    assert seeds == [str(10 + n) for n in range(6)]


async def test_too_many_images_are_refused_before_anything_runs(console: EsdConsole) -> None:
    image = console.write("in.png", png(96, 64))
    lines = await console.run(f"img2img a fox image={image} count=3 batch_count=3")
    assert any("3 × 3 = 9 images; one job makes at most 8" in line for line in lines), lines
    assert not state_of(console.url).jobs


async def test_scale_resizes_by_the_input_size(console: EsdConsole) -> None:
    image = console.write("in.png", png(250, 170))
    _, [out] = await run_ok(console, f"img2img a fox image={image} scale=0.5")
    sent = received(console)
    # int(250 × 0.5) = 125 and int(170 × 0.5) = 85, floored to multiples of 8.
    assert (sent["width"], sent["height"]) == (120, 80)
    assert size_of(out.read_bytes()) == (120, 80)
    assert "Size: 120x80" in infotext(out)


async def test_scale_over_the_cap_is_refused(console: EsdConsole) -> None:
    image = console.write("in.png", png(800, 600))
    lines = await console.run(f"img2img a fox image={image} scale=2")
    assert any("1600x1200 (800x600 × 2) is over the cap" in line for line in lines), lines


async def test_variation_seed_is_drawn_once_and_numbered_per_image(console: EsdConsole) -> None:
    image = console.write("in.png", png(96, 64))
    _, files = await run_ok(
        console, f"img2img a fox image={image} seed=3 count=2 subseed_strength=0.5"
    )
    sent = received(console)
    subseed = sent["subseed"]
    assert isinstance(subseed, int) and subseed >= 0  # concrete, not -1
    texts = [infotext(f) for f in files]
    # A1111: with a variation, every image keeps the seed and takes the next variation seed.
    assert all("Seed: 3," in t for t in texts)
    assert [f"Variation seed: {subseed + n}," in t for n, t in enumerate(texts)] == [True, True]


def _mask_of(payload: dict[str, Any]) -> Image.Image:
    data = payload["mask"].split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("L")


async def test_mask_alpha_dims_the_inpaint_sketch_mask(console: EsdConsole) -> None:
    original = png(96, 64)
    image = console.write("in.png", original)
    sketch = console.write("sketch.png", sketch_of(original))
    common = f"inpaint-sketch a hat image={image} sketch={sketch} mask_blur=0 seed=1"
    await run_ok(console, common)
    await run_ok(console, f"{common} mask_alpha=40")
    opaque, faint = _mask_of(received(console, 0)), _mask_of(received(console, 1))
    assert opaque.getextrema() == (0, 255)
    # A1111: the mask's brightness × (1 − 40 / 100).
    assert faint.getextrema() == (0, 153)
    assert "mask_alpha" not in received(console, 1)  # the WebUI applies it, never sends it


async def test_mask_alpha_is_only_for_inpaint_sketch(console: EsdConsole) -> None:
    image = console.write("in.png", png(96, 64))
    mask = console.write("mask.png", mask_png(96, 64))
    lines = await console.run(f"inpaint a hat image={image} mask={mask} mask_alpha=40")
    assert any("only `inpaint-sketch` takes it" in line for line in lines), lines


async def test_an_options_only_reply_overrides_panel_options(console: EsdConsole) -> None:
    image = console.write("in.png", png(96, 64))
    first, _ = await run_ok(
        console,
        f"img2img a fox image={image} size=96x64 clip_skip=2 tiling=on subseed=5 "
        "subseed_strength=0.5 scheduler=Karras batch_count=2",
    )
    lines = await console.run(
        f"reply {first} clip_skip=3 tiling=off scheduler=uniform scale=1.5 batch_count=1"
    )
    [second] = job_ids(lines)
    assert states(lines, second)[-1] == "succeed", lines
    before, after = received(console, 0), received(console, 1)
    assert before["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert after["override_settings"] == {"CLIP_stop_at_last_layers": 3}
    assert (before["tiling"], after["tiling"]) == (True, False)
    assert (before["scheduler"], after["scheduler"]) == ("Karras", "Uniform")
    assert (before["sampler_name"], after["sampler_name"]) == (
        "DPM++ 2M Karras",
        "DPM++ 2M Uniform",
    )
    assert (before["n_iter"], after["n_iter"]) == (2, 1)
    # The reply's scale replaces the base job's size.
    assert (after["width"], after["height"]) == (144, 96)
    details = "\n".join(await console.run(f"job {second}"))
    assert "variation seed 5 (strength 0.5) · schedule type Uniform · clip skip 3" in details
    # What the reply did not name is kept: the seeds and the variation.
    assert (after["seed"], after["subseed"], after["subseed_strength"]) == (
        before["seed"],
        5,
        0.5,
    )
