"""Tests for bot.imaging: accepting and decoding image inputs (SPEC §3.1) and `default_size`.

The five img2img commands' init / mask construction is in test_imaging_modes.py. Every image is
generated here, in memory.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import TYPE_CHECKING

import pytest
from PIL import Image, ImageDraw

from bot.errors import ImageInputError
from bot.imaging import (
    ImageLimits,
    InputFile,
    check_header,
    default_size,
    encode_png,
    load_image,
    prepare,
    prepare_interrogate,
)
from bot.imaging import _to_8bit as to_8bit

if TYPE_CHECKING:
    from collections.abc import Callable

LIMITS = ImageLimits()


def encoded(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def file_of(image: Image.Image, name: str = "cat.png", image_format: str = "PNG") -> InputFile:
    return InputFile(name, encoded(image, image_format))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (1-bit grey) but carries only a few bytes of pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def near(colour: object, expected: tuple[int, ...], *, tolerance: int) -> bool:
    """True when every channel of `colour` is within `tolerance` of `expected`."""
    assert isinstance(colour, tuple)
    return all(abs(got - want) <= tolerance for got, want in zip(colour, expected, strict=True))


def pixels(image: Image.Image) -> list[object]:
    return list(image.get_flattened_data())


# --- accepted formats ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "expected_name"),
    [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP"), ("BMP", "BMP"), ("GIF", "GIF")],
)
def test_accepted_formats_are_read(image_format: str, expected_name: str) -> None:
    picture = Image.new("RGB", (40, 24), (200, 30, 30))
    file = file_of(picture, "cat.img", image_format)

    assert check_header(file, LIMITS) == (expected_name, 40, 24)
    image, notes = load_image(file, LIMITS)
    assert (image.mode, image.size, notes) == ("RGB", (40, 24), ())
    assert near(image.getpixel((20, 12)), (200, 30, 30), tolerance=10)


def test_zero_bytes_refused_naming_the_file() -> None:
    with pytest.raises(ImageInputError, match=r"^cat\.png is empty$"):
        check_header(InputFile("cat.png", b""), LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE html><html><body>Not found</body></html>",  # HTML posing as PNG
        b"just some text, not an image\n" * 4,
        b"\x89PNG\r\n\x1a\n",  # a signature and nothing else
    ],
)
def test_not_an_image_refused_naming_the_file(data: bytes) -> None:
    with pytest.raises(ImageInputError) as caught:
        load_image(InputFile("cat.png", data), LIMITS)
    assert str(caught.value) == (
        "cat.png is not an image the bot can read (PNG, JPEG, WebP, BMP or GIF)"
    )


def test_formats_outside_the_list_are_refused() -> None:
    tiff = file_of(Image.new("RGB", (8, 8)), "scan.tiff", "TIFF")
    with pytest.raises(ImageInputError, match=r"^scan\.tiff is not an image the bot can read"):
        check_header(tiff, LIMITS)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_data_refused_as_damaged(image_format: str) -> None:
    noisy = Image.effect_noise((128, 128), 80).convert("RGB")
    data = encoded(noisy, image_format)
    truncated = InputFile("cat.png", data[: len(data) // 2])

    check_header(truncated, LIMITS)  # the header is intact
    with pytest.raises(ImageInputError) as caught:
        load_image(truncated, LIMITS)
    assert str(caught.value).startswith("cat.png is truncated or damaged")


# --- caps and bombs, all refused before pixels are decoded -----------------------------------


def test_decompression_bomb_header_refused() -> None:
    bomb = InputFile("bomb.png", png_header_only(30000, 30000))
    assert len(bomb.data) < 200
    for check in (check_header, load_image):
        with pytest.raises(ImageInputError, match=r"^bomb\.png declares far more pixels"):
            check(bomb, LIMITS)


def test_header_in_pillows_warning_range_refused_without_leaking_the_warning() -> None:
    # 100 MP: over Pillow's MAX_IMAGE_PIXELS (which only warns) and under twice it (which
    # raises). pytest turns warnings into errors, so a leaked warning fails this test.
    big = InputFile("big.png", png_header_only(10000, 10000))
    with pytest.raises(ImageInputError) as caught:
        check_header(big, LIMITS)
    assert str(caught.value) == (
        "big.png is 10000x10000 pixels (100 megapixels); the limit is 40 megapixels"
    )


def test_the_pixel_cap_is_the_bots_not_pillows() -> None:
    # The header is read without decoding: the IDAT here could never fill 10000x10000.
    big = InputFile("big.png", png_header_only(10000, 10000))
    assert check_header(big, ImageLimits(max_pixels=120_000_000)) == ("PNG", 10000, 10000)


def test_over_the_pixel_cap_refused() -> None:
    file = file_of(Image.new("L", (50, 30)), "wide.png")
    limits = ImageLimits(max_pixels=1_000)
    with pytest.raises(ImageInputError) as caught:
        load_image(file, limits)
    assert str(caught.value) == (
        "wide.png is 50x30 pixels (0.1 megapixels); the limit is 0.001 megapixels"
    )
    assert check_header(file, ImageLimits(max_pixels=1_500)) == ("PNG", 50, 30)


def test_over_the_default_byte_cap_refused_before_reading_anything() -> None:
    too_big = InputFile("huge.png", b"\x89PNG\r\n\x1a\n" + bytes(20_000_000))
    with pytest.raises(ImageInputError) as caught:
        check_header(too_big, LIMITS)
    assert str(caught.value) == "huge.png is too large (20.1 MB); the limit is 20 MB"


def test_byte_cap_applies_to_real_images_and_every_entry_point() -> None:
    file = file_of(Image.effect_noise((64, 64), 50), "noise.png")
    limits = ImageLimits(max_bytes=len(file.data) - 1)
    calls: list[Callable[[], object]] = [
        lambda: check_header(file, limits),
        lambda: load_image(file, limits),
        lambda: prepare_interrogate(file, limits),
        lambda: prepare("img2img", file, None, mask_blur=4, limits=limits),
    ]
    for call in calls:
        with pytest.raises(ImageInputError, match=r"^noise\.png is too large"):
            call()
    assert check_header(file, ImageLimits(max_bytes=len(file.data))) == ("PNG", 64, 64)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(max_bytes=0)


def test_input_file_repr_leaves_out_the_bytes() -> None:
    assert "secret-bytes" not in repr(InputFile("cat.png", b"secret-bytes"))


# --- orientation, animation ------------------------------------------------------------------


def test_exif_orientation_is_applied_before_anything_else() -> None:
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 32))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    file = InputFile("phone.png", encoded(stored, "PNG", exif=exif))

    assert check_header(file, LIMITS) == ("PNG", 64, 32)  # as stored
    image, _ = load_image(file, LIMITS)
    assert image.size == (32, 64)
    assert image.getpixel((16, 8)) == (255, 0, 0)  # the left half is now on top
    assert image.getpixel((16, 56)) == (0, 0, 255)
    prepared = prepare("img2img", file, None, mask_blur=4, limits=LIMITS)
    assert (prepared.width, prepared.height) == (32, 64)


def test_exif_orientation_of_a_jpeg() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    file = InputFile("photo.jpg", encoded(Image.new("RGB", (64, 32), "gray"), "JPEG", exif=exif))
    image, _ = load_image(file, LIMITS)
    assert image.size == (32, 64)


def test_damaged_exif_keeps_the_picture_with_a_note() -> None:
    broken = b"Exif\x00\x00not a TIFF header at all"
    file = InputFile("odd.png", encoded(Image.new("RGB", (16, 8), "teal"), "PNG", exif=broken))
    image, notes = load_image(file, LIMITS)
    assert image.size == (16, 8)
    assert notes == ("the EXIF data of odd.png is damaged; its orientation was not applied",)


def test_pillows_warnings_about_a_corrupt_file_do_not_leak() -> None:
    # Pillow warns "Corrupt EXIF data" here; pytest would turn a leaked warning into an error.
    short_ifd = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff"
    file = InputFile("odd.jpg", encoded(Image.new("RGB", (16, 8)), "JPEG", exif=short_ifd))
    image, _ = load_image(file, LIMITS)
    assert image.size == (16, 8)


def colour_frames() -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), colour) for colour in ("red", "lime", "blue")]


@pytest.mark.parametrize(
    ("image_format", "name", "kind"),
    [("GIF", "cat.gif", "GIF"), ("WEBP", "cat.webp", "WebP"), ("PNG", "cat.png", "PNG")],
)
def test_animation_gives_its_first_frame_with_a_note(
    image_format: str, name: str, kind: str
) -> None:
    first, *rest = colour_frames()
    options: dict[str, object] = {"save_all": True, "append_images": rest, "duration": 100}
    if image_format == "WEBP":
        options["lossless"] = True
    file = InputFile(name, encoded(first, image_format, **options))

    image, notes = load_image(file, LIMITS)
    assert image.getpixel((16, 16)) == (255, 0, 0)
    assert notes == (f"first frame of animated {kind} {name} used",)
    prepared = prepare("img2img", file, None, mask_blur=4, limits=LIMITS)
    assert prepared.notes == notes


def test_static_gif_has_no_note() -> None:
    image, notes = load_image(file_of(Image.new("RGB", (8, 8), "red"), "a.gif", "GIF"), LIMITS)
    assert image.getpixel((4, 4)) == (255, 0, 0)
    assert notes == ()


# --- modes -----------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red ink
    image, _ = load_image(file_of(cmyk, "print.jpg", "JPEG"), LIMITS)
    assert image.mode == "RGB"
    assert near(image.getpixel((16, 16)), (255, 0, 0), tolerance=10)


def test_palette_png_becomes_rgb() -> None:
    palette = Image.new("RGB", (16, 16), (10, 120, 240)).quantize(4)
    image, _ = load_image(file_of(palette), LIMITS)
    assert (image.mode, image.getpixel((8, 8))) == ("RGB", (10, 120, 240))


def test_palette_png_with_transparency_keeps_it_as_alpha() -> None:
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10])
    ImageDraw.Draw(palette).rectangle((0, 0, 7, 15), fill=0)
    image, _ = load_image(InputFile("p.png", encoded(palette, transparency=0)), LIMITS)
    assert image.mode == "RGBA"
    assert image.getchannel("A").getpixel((2, 2)) == 0
    assert image.getpixel((12, 2)) == (200, 10, 10, 255)


def test_rgb_png_with_a_transparent_colour_keeps_it_as_alpha() -> None:
    picture = Image.new("RGB", (8, 8), (1, 2, 3))
    picture.putpixel((0, 0), (9, 9, 9))
    image, _ = load_image(InputFile("t.png", encoded(picture, transparency=(1, 2, 3))), LIMITS)
    assert image.mode == "RGBA"
    assert image.getchannel("A").getpixel((4, 4)) == 0
    assert image.getpixel((0, 0)) == (9, 9, 9, 255)


def test_alpha_without_transparent_pixels_is_dropped() -> None:
    opaque = Image.new("RGBA", (8, 8), (5, 6, 7, 255))
    image, _ = load_image(file_of(opaque), LIMITS)
    assert (image.mode, image.getpixel((1, 1))) == ("RGB", (5, 6, 7))


def test_grey_with_alpha_becomes_rgba() -> None:
    grey = Image.new("LA", (8, 8), (90, 255))
    grey.putpixel((0, 0), (90, 0))
    image, _ = load_image(file_of(grey), LIMITS)
    assert image.mode == "RGBA"
    assert image.getchannel("A").getpixel((0, 0)) == 0
    assert image.getpixel((4, 4)) == (90, 90, 90, 255)


@pytest.mark.parametrize(("mode", "image_format"), [("1", "PNG"), ("1", "BMP"), ("L", "PNG")])
def test_bilevel_and_grey_become_rgb(mode: str, image_format: str) -> None:
    picture = Image.new(mode, (8, 8), 0)
    picture.putpixel((0, 0), 255 if mode == "L" else 1)
    image, _ = load_image(file_of(picture, "g.img", image_format), LIMITS)
    assert image.mode == "RGB"
    assert (image.getpixel((0, 0)), image.getpixel((5, 5))) == ((255, 255, 255), (0, 0, 0))


def test_sixteen_bit_gradient_keeps_its_gradient() -> None:
    gradient = Image.new("I;16", (256, 4))
    gradient.putdata([x * 257 for _ in range(4) for x in range(256)])
    file = file_of(gradient, "depth.png")
    assert Image.open(io.BytesIO(file.data)).mode == "I;16"  # really a 16-bit PNG

    image, _ = load_image(file, LIMITS)
    assert image.mode == "RGB"
    row = [image.getpixel((x, 1)) for x in range(256)]
    assert row == [(x, x, x) for x in range(256)]  # Pillow's plain convert would give 255s


def test_sixteen_bit_values_are_rounded_not_truncated() -> None:
    samples = Image.new("I;16", (4, 1))
    samples.putdata([128, 129, 25828, 25829])  # 0.498, 0.502, 100.498, 100.502 in 8-bit
    assert pixels(to_8bit(samples)) == [0, 1, 100, 101]


def test_mode_i_is_read_as_sixteen_bit_and_clamped() -> None:
    samples = Image.new("I", (4, 1))
    samples.putdata([-5, 32768, 65535, 70000])
    assert pixels(to_8bit(samples)) == [0, 128, 255, 255]


def test_big_endian_sixteen_bit_is_scaled() -> None:
    samples = Image.new("I;16B", (2, 1))
    samples.putdata([25700, 65535])
    assert pixels(to_8bit(samples)) == [100, 255]


def test_float_mode_uses_pillows_0_to_255_range() -> None:
    samples = Image.new("F", (3, 1))
    samples.putdata([-1.0, 100.4, 300.0])
    assert pixels(to_8bit(samples)) == [0, 100, 255]


# --- interrogate, encoding -------------------------------------------------------------------


def test_prepare_interrogate_flattens_alpha_over_white() -> None:
    picture = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
    picture.paste((0, 0, 0, 0), (0, 0, 10, 10))
    prepared = prepare_interrogate(file_of(picture), LIMITS)

    assert (prepared.mask_png, prepared.width, prepared.height) == (None, 20, 10)
    init = Image.open(io.BytesIO(prepared.init_png))
    assert (init.format, init.mode) == ("PNG", "RGB")
    assert (init.getpixel((2, 2)), init.getpixel((15, 5))) == ((255, 255, 255), (255, 0, 0))


def test_encode_png_round_trips_pixels_without_the_icc_profile() -> None:
    picture = Image.effect_noise((32, 32), 60).convert("RGB")
    picture.info["icc_profile"] = b"a CMYK profile that no longer applies"
    data = encode_png(picture)

    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG"
    assert "icc_profile" not in decoded.info
    assert pixels(decoded) == pixels(picture)
    assert b"iCCP" not in data


# --- default_size ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "cap", "expected"),
    [
        (4032, 3024, 1024, (1024, 768)),  # phone photo, scaled down
        (3024, 4032, 1024, (768, 1024)),
        (1000, 563, 1024, (1000, 560)),  # under the cap: kept, rounded to 8
        (517, 389, 1024, (520, 392)),  # rounded to the nearest multiple of 8
        (1024, 1024, 1024, (1024, 1024)),
        (2000, 1000, 1020, (1016, 512)),  # a cap that is not a multiple of 8 is never exceeded
        (10, 10, 1024, (64, 64)),  # never below 64
        (5000, 20, 768, (768, 64)),
        (4096, 2304, 512, (512, 288)),
    ],
)
def test_default_size(width: int, height: int, cap: int, expected: tuple[int, int]) -> None:
    assert default_size(width, height, cap) == expected


def test_default_size_rejects_non_positive_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        default_size(0, 10, 1024)
