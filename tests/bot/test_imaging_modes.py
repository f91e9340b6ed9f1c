"""Tests for bot.imaging.prepare: how each img2img command builds A1111's init image and mask.

Pixel values are checked: masks are binary L with white = repaint, inits are RGB, and
inpaint-sketch's mask follows the paint and not JPEG noise. Every image is generated in memory.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from bot.errors import ImageInputError
from bot.imaging import ImageLimits, InputFile, PreparedInputs, prepare
from bot.imaging import _specks_removed as specks_removed

LIMITS = ImageLimits()
SQUARE = (40, 30, 80, 70)  # left, top, right, bottom (exclusive) of the painted area


def encoded(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def file_of(
    image: Image.Image, name: str, image_format: str = "PNG", **options: object
) -> InputFile:
    return InputFile(name, encoded(image, image_format, **options))


def near(colour: object, expected: tuple[int, ...], *, tolerance: int) -> bool:
    """True when every channel of `colour` is within `tolerance` of `expected`."""
    assert isinstance(colour, tuple)
    return all(abs(got - want) <= tolerance for got, want in zip(colour, expected, strict=True))


def decoded(png: bytes | None) -> Image.Image:
    assert png is not None
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    image.load()
    return image


def gradient(size: tuple[int, int] = (128, 96)) -> Image.Image:
    """A smooth photo-like picture: JPEG noise on it is small, as on real photos."""
    width, height = size
    horizontal = Image.linear_gradient("L").resize(size)
    vertical = Image.linear_gradient("L").rotate(90).resize(size)
    return Image.merge("RGB", (horizontal, vertical, Image.new("L", (width, height), 128)))


def with_square(picture: Image.Image, colour: tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    painted = picture.copy()
    left, top, right, bottom = SQUARE
    ImageDraw.Draw(painted).rectangle((left, top, right - 1, bottom - 1), fill=colour)
    return painted


def white_where(mask: Image.Image) -> set[tuple[int, int]]:
    return {(x, y) for y in range(mask.height) for x in range(mask.width) if mask.getpixel((x, y))}


def assert_binary_mask(prepared: PreparedInputs) -> Image.Image:
    mask = decoded(prepared.mask_png)
    assert mask.mode == "L"
    assert mask.size == (prepared.width, prepared.height)
    assert set(mask.get_flattened_data()) <= {0, 255}
    return mask


def far_from_square(x: int, y: int, margin: int) -> bool:
    left, top, right, bottom = SQUARE
    return x < left - margin or x >= right + margin or y < top - margin or y >= bottom + margin


# --- img2img and sketch ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["img2img", "sketch"])
def test_single_image_commands_send_the_image_and_no_mask(command: str) -> None:
    picture = gradient()
    prepared = prepare(command, file_of(picture, "in.png"), None, mask_blur=4, limits=LIMITS)

    assert prepared.mask_png is None
    assert (prepared.width, prepared.height, prepared.notes) == (128, 96, ())
    init = decoded(prepared.init_png)
    assert init.mode == "RGB"
    assert ImageChops.difference(init, picture).getbbox() is None


@pytest.mark.parametrize("command", ["img2img", "sketch"])
def test_single_image_commands_flatten_alpha_over_white(command: str) -> None:
    picture = Image.new("RGBA", (10, 10), (255, 0, 0, 128))
    picture.putpixel((0, 0), (0, 0, 0, 0))
    prepared = prepare(command, file_of(picture, "in.png"), None, mask_blur=4, limits=LIMITS)

    init = decoded(prepared.init_png)
    assert init.mode == "RGB"
    assert init.getpixel((0, 0)) == (255, 255, 255)
    assert near(init.getpixel((5, 5)), (255, 127, 127), tolerance=1)


def test_single_image_command_notes_an_ignored_second_file() -> None:
    picture = file_of(gradient(), "in.png")
    extra = file_of(gradient(), "extra.png")
    prepared = prepare("img2img", picture, extra, mask_blur=4, limits=LIMITS)
    assert prepared.notes == ("extra.png ignored: img2img uses one image",)


# --- inpaint ---------------------------------------------------------------------------------


def test_inpaint_mask_attachment_is_binarised_at_128() -> None:
    picture = gradient((8, 2))
    mask = Image.new("L", (8, 2), 0)
    mask.putdata([0, 127, 128, 255, 200, 60, 129, 1] * 2)
    prepared = prepare(
        "inpaint", file_of(picture, "in.png"), file_of(mask, "m.png"), mask_blur=4, limits=LIMITS
    )

    result = assert_binary_mask(prepared)
    assert list(result.get_flattened_data())[:8] == [0, 0, 255, 255, 255, 0, 255, 0]
    init = decoded(prepared.init_png)
    assert init.mode == "RGB"
    assert ImageChops.difference(init, picture).getbbox() is None


def test_inpaint_mask_from_an_rgb_mask_uses_its_lightness() -> None:
    mask = Image.new("RGB", (16, 16), (0, 0, 0))
    mask.paste((255, 255, 255), (0, 0, 8, 16))
    mask.paste((0, 0, 255), (8, 0, 16, 8))  # dark blue is not light: kept
    prepared = prepare(
        "inpaint",
        file_of(gradient((16, 16)), "in.png"),
        file_of(mask, "m.jpg", "JPEG", quality=95),
        mask_blur=4,
        limits=LIMITS,
    )
    result = assert_binary_mask(prepared)
    assert white_where(result) == {(x, y) for x in range(8) for y in range(16)}


def test_inpaint_mask_with_alpha_treats_transparent_as_black() -> None:
    # White strokes on a transparent layer whose hidden colour is white too.
    mask = Image.new("RGBA", (16, 16), (255, 255, 255, 0))
    mask.paste((255, 255, 255, 255), (4, 4, 8, 8))
    prepared = prepare(
        "inpaint",
        file_of(gradient((16, 16)), "in.png"),
        file_of(mask, "m.png"),
        mask_blur=4,
        limits=LIMITS,
    )
    result = assert_binary_mask(prepared)
    assert white_where(result) == {(x, y) for x in range(4, 8) for y in range(4, 8)}


def test_inpaint_mask_of_another_size_is_resized_nearest_with_a_note() -> None:
    mask = Image.new("L", (100, 80), 0)
    mask.paste(255, (0, 0, 50, 80))  # left half
    prepared = prepare(
        "inpaint",
        file_of(gradient((512, 512)), "in.png"),
        file_of(mask, "m.png"),
        mask_blur=4,
        limits=LIMITS,
    )
    result = assert_binary_mask(prepared)
    assert result.size == (512, 512)
    assert prepared.notes == ("mask resized from 100x80 to 512x512",)
    assert result.getbbox() == (0, 0, 256, 512)


def test_inpaint_mask_follows_the_images_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    picture = InputFile("phone.png", encoded(gradient((64, 32)), "PNG", exif=exif))
    mask = Image.new("L", (32, 64), 0)
    mask.paste(255, (0, 0, 32, 10))  # drawn on the upright picture: its top
    prepared = prepare("inpaint", picture, file_of(mask, "m.png"), mask_blur=4, limits=LIMITS)

    assert (prepared.width, prepared.height, prepared.notes) == (32, 64, ())
    assert assert_binary_mask(prepared).getbbox() == (0, 0, 32, 10)


def test_inpaint_without_mask_uses_the_images_transparency() -> None:
    picture = Image.new("RGBA", (8, 4), (10, 20, 30, 255))
    picture.putdata(
        [(10, 20, 30, a) for a in (0, 127, 128, 255, 255, 255, 1, 200)] + [(10, 20, 30, 255)] * 24
    )
    prepared = prepare("inpaint", file_of(picture, "in.png"), None, mask_blur=4, limits=LIMITS)

    result = assert_binary_mask(prepared)
    assert list(result.get_flattened_data())[:8] == [255, 255, 0, 0, 0, 0, 255, 0]
    assert white_where(result) == {(0, 0), (1, 0), (6, 0)}
    init = decoded(prepared.init_png)
    assert init.mode == "RGB"
    assert set(init.get_flattened_data()) == {(10, 20, 30)}  # colours under the alpha kept


def test_palette_png_transparency_is_the_inpaint_mask() -> None:
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 30, 160, 60])
    ImageDraw.Draw(palette).rectangle((2, 3, 5, 9), fill=0)
    picture = InputFile("p.png", encoded(palette, transparency=0))
    prepared = prepare("inpaint", picture, None, mask_blur=4, limits=LIMITS)

    result = assert_binary_mask(prepared)
    assert result.getbbox() == (2, 3, 6, 10)
    assert len(white_where(result)) == 4 * 7
    assert decoded(prepared.init_png).getpixel((10, 10)) == (30, 160, 60)


def test_a_mask_attachment_wins_over_transparency() -> None:
    picture = Image.new("RGBA", (8, 8), (1, 2, 3, 0))
    mask = Image.new("L", (8, 8), 0)
    mask.putpixel((7, 7), 255)
    prepared = prepare(
        "inpaint", file_of(picture, "in.png"), file_of(mask, "m.png"), mask_blur=4, limits=LIMITS
    )
    assert white_where(assert_binary_mask(prepared)) == {(7, 7)}


@pytest.mark.parametrize(
    "picture",
    [
        Image.new("RGB", (8, 8), "white"),
        Image.new("RGBA", (8, 8), (0, 0, 0, 255)),  # alpha, but nothing transparent
    ],
)
def test_inpaint_without_mask_or_transparency_explains_how_to_make_one(
    picture: Image.Image,
) -> None:
    with pytest.raises(ImageInputError) as caught:
        prepare("inpaint", file_of(picture, "cat.png"), None, mask_blur=4, limits=LIMITS)
    message = str(caught.value)
    assert "cat.png has no transparent pixels" in message
    assert (
        "attach a mask as a second image (white = repaint) or use a PNG whose area to repaint "
        "is transparent"
    ) in message


def test_transparency_that_is_never_below_128_is_an_empty_mask() -> None:
    picture = Image.new("RGBA", (8, 8), (0, 0, 0, 200))
    with pytest.raises(ImageInputError, match=r"^the mask is empty"):
        prepare("inpaint", file_of(picture, "in.png"), None, mask_blur=4, limits=LIMITS)


@pytest.mark.parametrize("command", ["inpaint", "inpaint-upload"])
@pytest.mark.parametrize("level", [0, 127])
def test_a_mask_without_light_pixels_is_empty(command: str, level: int) -> None:
    with pytest.raises(ImageInputError, match=r"^the mask is empty: m\.png"):
        prepare(
            command,
            file_of(gradient((8, 8)), "in.png"),
            file_of(Image.new("L", (8, 8), level), "m.png"),
            mask_blur=4,
            limits=LIMITS,
        )


def test_a_mask_emptied_by_resizing_is_empty() -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.putpixel((1, 1), 255)  # lost when nearest-resized to 8x8
    with pytest.raises(ImageInputError, match=r"^the mask is empty"):
        prepare(
            "inpaint",
            file_of(gradient((8, 8)), "in.png"),
            file_of(mask, "m.png"),
            mask_blur=4,
            limits=LIMITS,
        )


@pytest.mark.parametrize("command", ["inpaint", "inpaint-upload"])
def test_an_all_white_mask_is_accepted(command: str) -> None:
    prepared = prepare(
        command,
        file_of(gradient((16, 8)), "in.png"),
        file_of(Image.new("1", (16, 8), 1), "m.png"),
        mask_blur=4,
        limits=LIMITS,
    )
    assert set(assert_binary_mask(prepared).get_flattened_data()) == {255}


def test_a_damaged_mask_is_refused_naming_the_mask() -> None:
    with pytest.raises(ImageInputError, match=r"^mask\.png is not an image the bot can read"):
        prepare(
            "inpaint",
            file_of(gradient((8, 8)), "in.png"),
            InputFile("mask.png", b"<html></html>"),
            mask_blur=4,
            limits=LIMITS,
        )


# --- inpaint-upload --------------------------------------------------------------------------


def test_inpaint_upload_sends_the_picture_and_the_binarised_mask() -> None:
    picture = Image.new("RGBA", (16, 16), (0, 200, 0, 255))
    picture.putpixel((0, 0), (0, 0, 0, 0))  # alpha here is not a mask: flattened over white
    mask = Image.new("L", (16, 16), 10)
    mask.paste(230, (8, 8, 16, 16))
    prepared = prepare(
        "inpaint-upload",
        file_of(picture, "in.png"),
        file_of(mask, "m.png"),
        mask_blur=4,
        limits=LIMITS,
    )

    assert white_where(assert_binary_mask(prepared)) == {
        (x, y) for x in range(8, 16) for y in range(8, 16)
    }
    init = decoded(prepared.init_png)
    assert init.mode == "RGB"
    assert (init.getpixel((0, 0)), init.getpixel((5, 5))) == ((255, 255, 255), (0, 200, 0))


def test_inpaint_upload_requires_a_mask() -> None:
    with pytest.raises(ImageInputError, match=r"^inpaint-upload needs two images"):
        prepare("inpaint-upload", file_of(gradient(), "in.png"), None, mask_blur=4, limits=LIMITS)


# --- inpaint-sketch --------------------------------------------------------------------------


def sketch_inputs(original: Image.Image) -> tuple[InputFile, InputFile, Image.Image]:
    """The original as PNG; the painted sketch as a chat platform might re-encode it."""
    sketch_jpeg = encoded(with_square(original), "JPEG", quality=75)
    sketch = Image.open(io.BytesIO(sketch_jpeg))
    sketch.load()
    return file_of(original, "photo.png"), InputFile("sketch.jpg", sketch_jpeg), sketch


def test_inpaint_sketch_mask_covers_the_paint_and_not_the_jpeg_noise() -> None:
    original = gradient()
    photo, sketch_file, sketch = sketch_inputs(original)
    # The JPEG changed most pixels of the picture a little: A1111's exact comparison would
    # mark them all.
    changed = ImageChops.difference(sketch, original).convert("L").point(lambda v: v > 0 and 255)
    assert len(white_where(changed)) > original.width * original.height // 2

    prepared = prepare("inpaint-sketch", photo, sketch_file, mask_blur=4, limits=LIMITS)

    mask = assert_binary_mask(prepared)
    left, top, right, bottom = SQUARE
    assert all(mask.getpixel((x, y)) == 255 for x in range(left, right) for y in range(top, bottom))
    assert all(
        mask.getpixel((x, y)) == 0
        for x in range(mask.width)
        for y in range(mask.height)
        if far_from_square(x, y, margin=4)
    )


def test_inpaint_sketch_init_is_the_sketch_inside_and_the_original_far_outside() -> None:
    original = gradient()
    photo, sketch_file, sketch = sketch_inputs(original)
    prepared = prepare("inpaint-sketch", photo, sketch_file, mask_blur=4, limits=LIMITS)

    init = decoded(prepared.init_png)
    assert init.mode == "RGB"
    assert (prepared.width, prepared.height) == original.size
    left, top, right, bottom = SQUARE
    for x in range(left + 12, right - 12):  # deep inside: the (blurred) red paint
        for y in range(top + 12, bottom - 12):
            assert near(init.getpixel((x, y)), (255, 0, 0), tolerance=16)
    for x in range(init.width):  # far outside: exactly the original, not the JPEG
        for y in range(init.height):
            if far_from_square(x, y, margin=24):
                assert init.getpixel((x, y)) == original.getpixel((x, y))
    # Near the edge the blurred mask blends the two: neither alone.
    edge = (left - 2, (top + bottom) // 2)
    assert init.getpixel(edge) not in (original.getpixel(edge), sketch.getpixel(edge))


def test_inpaint_sketch_without_blur_is_a_hard_composite() -> None:
    original = gradient()
    photo, sketch_file, sketch = sketch_inputs(original)
    prepared = prepare("inpaint-sketch", photo, sketch_file, mask_blur=0, limits=LIMITS)

    mask = assert_binary_mask(prepared)
    expected = Image.composite(sketch.convert("RGB"), original, mask)
    assert ImageChops.difference(decoded(prepared.init_png), expected).getbbox() is None


def test_inpaint_sketch_of_another_size_is_resized_with_a_note() -> None:
    original = gradient((256, 192))
    small_sketch = with_square(gradient()).convert("RGB")  # half size, square at half scale
    prepared = prepare(
        "inpaint-sketch",
        file_of(original, "photo.png"),
        file_of(small_sketch, "sketch.png"),
        mask_blur=4,
        limits=LIMITS,
    )
    assert prepared.notes == ("sketch resized from 128x96 to 256x192",)
    mask = assert_binary_mask(prepared)
    left, top, right, bottom = (2 * side for side in SQUARE)
    assert mask.getpixel(((left + right) // 2, (top + bottom) // 2)) == 255
    assert mask.getpixel((10, 10)) == 0


def test_inpaint_sketch_identical_but_for_jpeg_noise_is_refused() -> None:
    original = gradient()
    with pytest.raises(ImageInputError) as caught:
        prepare(
            "inpaint-sketch",
            file_of(original, "photo.png"),
            file_of(original, "sketch.jpg", "JPEG", quality=75),
            mask_blur=4,
            limits=LIMITS,
        )
    assert str(caught.value).startswith(
        "the sketch does not differ from the original; paint over the picture"
    )


def test_inpaint_sketch_removes_specks() -> None:
    original = gradient()
    sketch = with_square(original)
    for speck in ((5, 5), (100, 10), (120, 90)):
        sketch.putpixel(speck, (0, 0, 255))
    sketch.paste((0, 255, 0), (10, 80, 12, 82))  # 2x2: still a speck
    prepared = prepare(
        "inpaint-sketch",
        file_of(original, "photo.png"),
        file_of(sketch, "sketch.png"),
        mask_blur=0,
        limits=LIMITS,
    )
    assert assert_binary_mask(prepared).getbbox() == SQUARE


def test_inpaint_sketch_needs_the_sketch() -> None:
    with pytest.raises(ImageInputError, match=r"^inpaint-sketch needs two images"):
        prepare("inpaint-sketch", file_of(gradient(), "in.png"), None, mask_blur=4, limits=LIMITS)


def test_box_opening_equals_min_then_max_filter() -> None:
    noise = Image.effect_noise((97, 61), 90).point(lambda v: 255 if v > 150 else 0)
    assert 0 < len(white_where(noise)) < 97 * 61
    expected = noise.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    assert ImageChops.difference(specks_removed(noise), expected).getbbox() is None
    assert expected.getbbox() is not None  # something survived, so the check is not vacuous


# --- programming errors ----------------------------------------------------------------------


def test_unknown_command_and_negative_blur_are_programming_errors() -> None:
    picture = file_of(gradient(), "in.png")
    with pytest.raises(ValueError, match="unknown img2img command"):
        prepare("txt2img", picture, None, mask_blur=4, limits=LIMITS)
    with pytest.raises(ValueError, match="mask_blur"):
        prepare("img2img", picture, None, mask_blur=-1, limits=LIMITS)
