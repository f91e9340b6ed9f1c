"""What the preview engine does with the rest of the img2img panel: honours count × batch count
and the variation seed, and ignores the rest explicitly (and says so in the infotext)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cloud.local.preview import IGNORED, ignored_options, render, render_infotext
from commands.spec import Sampler, Scheduler
from tests.cloud.test_preview import decode, make_params, picture, to_png


def test_count_times_batch_count_images_with_a1111_seeds() -> None:
    params = make_params(count=2, batch_count=3, seed=40, width=64, height=64)
    images = render(to_png(picture()), None, params)
    assert len(images) == 6
    seeds = [decode(i).info["parameters"].split("Seed: ")[1].split(",")[0] for i in images]
    assert seeds == [str(40 + n) for n in range(6)]
    assert len({decode(i).tobytes() for i in images}) == 6


def test_the_variation_seed_moves_the_image_by_its_strength() -> None:
    init = to_png(picture())
    base = make_params(seed=7, width=64, height=64, strength=0.8)

    def pixels(**changes: Any) -> bytes:
        return decode(render(init, None, dataclasses.replace(base, **changes))[0]).tobytes()

    plain = pixels()
    assert pixels(subseed=99, subseed_strength=0.0) == plain
    varied = pixels(subseed=99, subseed_strength=0.4)
    assert varied != plain
    assert pixels(subseed=100, subseed_strength=0.4) != varied
    text = render_infotext(dataclasses.replace(base, subseed=99, subseed_strength=0.4), 1)
    # With a variation every image keeps the seed and the variation seed counts up.
    assert "Seed: 7," in text and "Variation seed: 100, Variation seed strength: 0.4" in text


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("restore_faces", True),
        ("tiling", True),
        ("clip_skip", 2),
        ("image_cfg", 0.5),
        ("noise_multiplier", 0.8),
        ("scheduler", "Uniform"),
    ],
)
def test_what_the_preview_cannot_do_is_ignored_and_named(change: str, value: Any) -> None:
    init = to_png(picture())
    base = make_params(seed=3, width=64, height=64)
    changed = dataclasses.replace(base, **{change: value})
    assert decode(render(init, None, changed)[0]).tobytes() == (
        decode(render(init, None, base)[0]).tobytes()
    )
    assert ignored_options(changed) == [IGNORED[change]]
    assert f"Preview ignored: {IGNORED[change]}, Engine" in render_infotext(changed, 0)
    assert "Preview ignored" not in render_infotext(base, 0)


def test_the_infotext_follows_a1111s_order() -> None:
    params = make_params(
        sampler=Sampler.EULER_A,
        scheduler=Scheduler.KARRAS,
        model="instruct-pix2pix.safetensors",
        image_cfg=1.25,
        restore_faces=True,
        subseed=5,
        subseed_strength=0.5,
        clip_skip=2,
        tiling=True,
        noise_multiplier=0.9,
        mask_blur=4,
    )
    settings = render_infotext(params, 0, masked=True).splitlines()[-1]
    keys = [part.split(":")[0] for part in settings.split(", ") if ":" in part]
    assert keys[:15] == [
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Image CFG scale",
        "Seed",
        "Face restoration",
        "Size",
        "Model",
        "Variation seed",
        "Variation seed strength",
        "Denoising strength",
        "Clip skip",
        "Tiling",
        "Mask blur",
    ]
    assert keys[-3:] == ["Noise multiplier", "Preview ignored", "Engine"]
    assert "Face restoration: CodeFormer" in settings and "Tiling: True" in settings
