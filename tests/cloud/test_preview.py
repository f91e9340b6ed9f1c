"""Tests of the preview engine: determinism, geometry, strength, masks and captions."""

from __future__ import annotations

import dataclasses
import io
import re
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps, ImageStat

from bot.model import GenerationParams
from cloud.local.preview import ENGINE_NAME, caption, render, render_infotext
from commands.spec import Area, Fill, Resize, Sampler

GREEN = (0, 160, 0)
RED = (200, 0, 0)
BLUE = (0, 0, 200)
YELLOW = (220, 220, 0)


def make_params(**changes: Any) -> GenerationParams:
    params = GenerationParams(
        prompt="a lighthouse at dusk",
        negative="blurry",
        strength=1.0,
        steps=20,
        cfg=7.0,
        sampler=Sampler.DPMPP_2M_KARRAS,
        seed=1234,
        width=96,
        height=64,
        count=1,
        resize=Resize.JUST_RESIZE,
        model="sdbot-preview.safetensors",
        vae="Automatic",
        endpoint="local-preview",
    )
    return dataclasses.replace(params, **changes)


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def picture(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A gradient with two coloured shapes: enough colour and structure for every transform."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.ellipse((width // 10, height // 6, width // 2, height * 5 // 6), fill=(200, 60, 40))
    draw.rectangle((width * 6 // 10, height // 3, width * 9 // 10, height * 9 // 10), fill=BLUE)
    return image


def mean_difference(first: Image.Image, second: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(first, second)).mean) / 3


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    value = image.getpixel((x, y))
    assert isinstance(value, tuple)
    return (value[0], value[1], value[2])


def close_to(actual: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - e) <= 40 for a, e in zip(actual, expected, strict=True))


def pixel_bytes(image: Image.Image) -> list[bytes]:
    data = image.tobytes()
    step = len(image.getbands())
    return [data[i : i + step] for i in range(0, len(data), step)]


# -- Determinism, seeds, count, size --------------------------------------------------------


def test_same_inputs_give_byte_identical_pngs() -> None:
    init = to_png(picture())
    params = make_params(count=2, strength=0.6)
    assert render(init, None, params) == render(init, None, params)


def test_batch_image_i_is_the_single_image_of_seed_plus_i() -> None:
    init = to_png(picture())
    batch = render(init, None, make_params(count=3, seed=10))
    for index in range(3):
        assert batch[index] == render(init, None, make_params(count=1, seed=10 + index))[0]
    assert len({decode(image).tobytes() for image in batch}) == 3


def test_different_seeds_give_different_pictures() -> None:
    init = to_png(picture())
    first = decode(render(init, None, make_params(seed=1))[0])
    second = decode(render(init, None, make_params(seed=2))[0])
    assert mean_difference(first, second) > 5


@pytest.mark.parametrize("resize", ["just-resize", "crop", "fill", "latent"])
@pytest.mark.parametrize(("width", "height"), [(200, 120), (64, 128), (8, 8)])
def test_count_and_exact_size(resize: str, width: int, height: int) -> None:
    images = render(
        to_png(picture((80, 60))),
        None,
        make_params(count=4, width=width, height=height, resize=resize),
    )
    assert len(images) == 4
    assert all(decode(image).size == (width, height) for image in images)


def test_each_png_carries_its_infotext() -> None:
    params = make_params(count=2)
    images = render(to_png(picture()), None, params)
    for index, data in enumerate(images):
        with Image.open(io.BytesIO(data)) as image:
            assert image.info["parameters"] == render_infotext(params, index)


def test_prompt_outside_latin_1_is_stored() -> None:
    params = make_params(prompt="灯台 at dusk 🌅")
    with Image.open(io.BytesIO(render(to_png(picture()), None, params)[0])) as image:
        assert image.info["parameters"].startswith("灯台 at dusk 🌅\n")


# -- Resize modes ---------------------------------------------------------------------------


def banded_picture() -> Image.Image:
    """200×100: green, red rows 0–9, blue rows 90–99, yellow columns 0–19."""
    image = Image.new("RGB", (200, 100), GREEN)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 199, 9), fill=RED)
    draw.rectangle((0, 90, 199, 99), fill=BLUE)
    draw.rectangle((0, 0, 19, 99), fill=YELLOW)
    return image


def fitted(resize: str) -> Image.Image:
    params = make_params(strength=0.0, width=100, height=100, resize=resize)
    return decode(render(to_png(banded_picture()), None, params)[0])


@pytest.mark.parametrize(
    ("resize", "expected"),
    [
        # just-resize squeezes the width by half: the yellow strip stays at the left.
        ("just-resize", {(50, 5): RED, (50, 15): GREEN, (4, 50): YELLOW, (50, 85): GREEN}),
        # crop covers 100×100 at scale 1 and keeps the middle: no yellow left.
        ("crop", {(50, 5): RED, (50, 15): GREEN, (4, 50): GREEN, (50, 95): BLUE}),
        # fill contains the picture as 100×50 at y 25–74, borders repeat the edge rows.
        ("fill", {(50, 15): RED, (50, 50): GREEN, (4, 50): YELLOW, (50, 85): BLUE}),
    ],
)
def test_resize_geometry(
    resize: str, expected: dict[tuple[int, int], tuple[int, int, int]]
) -> None:
    image = fitted(resize)
    for (x, y), colour in expected.items():
        assert close_to(pixel(image, x, y), colour), (resize, x, y, pixel(image, x, y))


def test_fill_borders_repeat_the_edge_rows_exactly() -> None:
    image = fitted("fill")
    rows = [image.crop((0, y, 100, y + 1)).tobytes() for y in range(100)]
    assert all(row == rows[25] for row in rows[:25])
    assert all(row == rows[74] for row in rows[75:])
    assert rows[25] != rows[74]


def test_fill_borders_repeat_the_edge_columns_for_a_tall_picture() -> None:
    params = make_params(strength=0.0, width=100, height=100, resize=Resize.FILL)
    image = decode(render(to_png(banded_picture().rotate(90, expand=True)), None, params)[0])
    columns = [image.crop((x, 0, x + 1, 100)).tobytes() for x in range(100)]
    assert all(column == columns[25] for column in columns[:25])
    assert all(column == columns[74] for column in columns[75:])


def test_latent_resizes_like_just_resize() -> None:
    assert fitted("latent").tobytes() == fitted("just-resize").tobytes()


def test_unknown_resize_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="resize"):
        render(to_png(picture()), None, make_params(resize="stretch"))


# -- Strength -------------------------------------------------------------------------------


def test_strength_zero_returns_the_resized_input_exactly() -> None:
    source = picture((80, 60))
    image = decode(render(to_png(source), None, make_params(strength=0.0))[0])
    expected = source.resize((96, 64), Image.Resampling.LANCZOS)
    assert image.tobytes() == expected.tobytes()


def test_transparent_pixels_are_flattened_on_white() -> None:
    source = Image.new("RGBA", (96, 64), (255, 0, 0, 255))
    source.paste((0, 0, 0, 0), (0, 0, 48, 64))
    image = decode(render(to_png(source), None, make_params(strength=0.0))[0])
    assert pixel(image, 10, 10) == (255, 255, 255)
    assert pixel(image, 80, 10) == (255, 0, 0)


def test_strength_one_transforms_strongly_and_change_grows_with_strength() -> None:
    source = picture()
    init = to_png(source)
    changes = [
        mean_difference(decode(render(init, None, make_params(strength=s))[0]), source)
        for s in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    assert changes[0] == 0
    assert changes == sorted(changes)
    assert len(set(changes)) == len(changes)
    assert changes[-1] > 40


# -- Masks ----------------------------------------------------------------------------------


def square_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def soft_mask(mask: Image.Image, size: tuple[int, int], blur: int, invert: bool) -> Image.Image:
    """The mask as SPEC'd: NEAREST to the output size, inverted if asked, then blurred."""
    sharp = mask.resize(size, Image.Resampling.NEAREST)
    if invert:
        sharp = ImageOps.invert(sharp)
    return sharp.filter(ImageFilter.GaussianBlur(blur)) if blur else sharp


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("area", ["whole", "masked"])
def test_pixels_outside_the_blurred_mask_are_the_input_exactly(invert: bool, area: str) -> None:
    source = picture((64, 64))
    # A smaller mask than the output, so the NEAREST resize matters too.
    mask = square_mask((32, 32), (8, 8, 20, 20))
    params = make_params(width=96, height=96, mask_blur=4, invert=invert, area=area, padding=4)
    image = decode(render(to_png(source), to_png(mask), params)[0])

    base = source.resize((96, 96), Image.Resampling.LANCZOS)
    alpha = soft_mask(mask, (96, 96), 4, invert).tobytes()
    out_pixels, base_pixels = pixel_bytes(image), pixel_bytes(base)
    untouched = [i for i, a in enumerate(alpha) if a == 0]
    painted = [i for i, a in enumerate(alpha) if a >= 250]
    assert untouched
    assert painted
    assert all(out_pixels[i] == base_pixels[i] for i in untouched)
    changed = sum(out_pixels[i] != base_pixels[i] for i in painted)
    assert changed > 0.9 * len(painted)


def test_area_masked_and_whole_give_different_results() -> None:
    init = to_png(picture((96, 96)))
    mask = to_png(square_mask((96, 96), (60, 60, 80, 80)))
    whole = render(init, mask, make_params(width=96, height=96, area=Area.WHOLE))[0]
    masked = render(init, mask, make_params(width=96, height=96, area=Area.MASKED, padding=8))[0]
    box = (60, 60, 80, 80)
    assert mean_difference(decode(whole).crop(box), decode(masked).crop(box)) > 3


def test_empty_mask_with_area_masked_leaves_the_picture_alone() -> None:
    source = picture()
    mask = to_png(Image.new("L", (96, 64), 0))
    image = decode(render(to_png(source), mask, make_params(area=Area.MASKED))[0])
    assert image.tobytes() == source.tobytes()


def test_mask_blur_widens_the_changed_region() -> None:
    source = picture((96, 96))
    init = to_png(source)
    mask = square_mask((96, 96), (30, 30, 60, 60))

    def changed(blur: int) -> set[int]:
        image = decode(
            render(init, to_png(mask), make_params(width=96, height=96, mask_blur=blur))[0]
        )
        return {
            i
            for i, (a, b) in enumerate(zip(pixel_bytes(image), pixel_bytes(source), strict=True))
            if a != b
        }

    sharp, blurred = changed(0), changed(8)
    inside = {y * 96 + x for y in range(30, 60) for x in range(30, 60)}
    assert sharp <= inside
    assert len(blurred) > len(sharp)
    assert blurred - inside


@pytest.mark.parametrize("fill", ["fill", "original", "latent-noise", "latent-nothing"])
def test_masked_content_changes_what_is_repainted(fill: str) -> None:
    init = to_png(picture((96, 96)))
    mask = to_png(square_mask((96, 96), (20, 20, 70, 70)))
    params = make_params(width=96, height=96, strength=0.6)
    original = decode(render(init, mask, params)[0])
    image = decode(render(init, mask, dataclasses.replace(params, fill=Fill(fill)))[0])
    if fill == "original":
        assert image.tobytes() == original.tobytes()
    else:
        assert mean_difference(image, original) > 1


# -- Infotext -------------------------------------------------------------------------------


def test_infotext_reads_like_a1111_and_names_the_engine() -> None:
    params = make_params(seed=7, cfg=7.5, strength=0.75, width=512, height=768)
    assert render_infotext(params, 2) == (
        "a lighthouse at dusk\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 9, "
        "Size: 512x768, "
        "Model: sdbot-preview, Denoising strength: 0.75, "
        "Engine: sdbot preview (not Stable Diffusion)"
    )


def test_infotext_of_a_masked_job_has_the_inpaint_fields() -> None:
    params = make_params(
        negative="",
        mask_blur=8,
        invert=True,
        area=Area.MASKED,
        padding=16,
        fill=Fill.LATENT_NOISE,
        vae="kl-f8.safetensors",
    )
    text = render_infotext(params, 0, masked=True)
    assert "Negative prompt" not in text
    assert "VAE: kl-f8.safetensors" in text
    for field in (
        "Mask blur: 8",
        "Mask mode: Inpaint not masked",
        "Masked content: latent noise",
        "Inpaint area: Only masked",
        "Masked area padding: 16",
    ):
        assert field in text
    assert text.endswith(f", Engine: {ENGINE_NAME}")
    assert "Mask blur" not in render_infotext(params, 0)


def test_infotext_quotes_values_with_commas() -> None:
    text = render_infotext(make_params(sampler="Odd, sampler"), 0)
    assert 'Sampler: "Odd, sampler",' in text


# -- Captions -------------------------------------------------------------------------------


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (120, 80)) -> bytes:
    return to_png(Image.new("RGB", size, colour))


def test_clip_caption_is_one_sentence() -> None:
    text = caption(solid((60, 120, 255)), "clip")
    assert text == (
        "a mid-toned, mostly blue, landscape-format picture with low contrast and soft detail"
    )


def test_deepbooru_caption_is_lowercase_tags() -> None:
    text = caption(solid((60, 120, 255), (80, 120)), "deepbooru")
    tags = text.split(", ")
    assert all(re.fullmatch(r"[a-z_]+", tag) for tag in tags)
    assert tags[0] == "blue"
    assert "portrait" in tags


def test_captions_are_deterministic_and_see_colour() -> None:
    red, blue = solid((230, 30, 30)), solid((30, 30, 230))
    for method in ("clip", "deepbooru"):
        assert caption(red, method) == caption(red, method)
        assert caption(red, method) != caption(blue, method)
    assert "red" in caption(red, "clip")
    assert "blue" in caption(blue, "deepbooru").split(", ")


def test_caption_of_a_grey_detailed_picture() -> None:
    checker = Image.new("L", (64, 64), 0)
    for y in range(64):
        for x in range(64):
            if (x // 2 + y // 2) % 2:
                checker.putpixel((x, y), 255)
    tags = caption(to_png(checker.convert("RGB")), "deepbooru").split(", ")
    assert {"greyscale", "monochrome", "square", "high_contrast", "fine_detail"} <= set(tags)


def test_unknown_caption_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        caption(solid((1, 2, 3)), "blip")
