"""Image inputs: from an attachment's bytes to the PNGs a backend job needs (SPEC §3.1).

This module owns every decision about user images: which files are accepted (format, byte cap,
pixel cap, decompression bombs, damage), how they are decoded (EXIF orientation, first frame of
animations, 16-bit and odd modes down to 8-bit RGB), and how each img2img command turns its one or
two attachments into A1111's `init_images[0]` and `mask` as the WebUI tabs do
(`reference/esd-api.md` §7.2), tolerant of the JPEG re-encoding chat platforms apply. Everything
here is synchronous and pure, so the core runs it in a worker thread; every refusal is an
`ImageInputError` that names the file and says what to fix. Pillow is the only dependency; speed
matters (one decode per file, no needless copies, PNG at `compress_level=1`), because a benchmark
compares this work with Pillow's own decode/encode floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import struct
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from PIL import (
    Image,
    ImageChops,
    ImageEnhance,
    ImageFile,
    ImageFilter,
    ImageOps,
    UnidentifiedImageError,
)

from bot.errors import ImageInputError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

__all__ = [
    "COMMANDS",
    "DECODE_BUDGET",
    "ImageLimits",
    "InputFile",
    "MemoryBudget",
    "PreparedInputs",
    "check_header",
    "decode_cost",
    "default_size",
    "encode_png",
    "load_image",
    "prepare",
    "prepare_interrogate",
]

COMMANDS: Final = frozenset({"img2img", "sketch", "inpaint", "inpaint-sketch", "inpaint-upload"})
"""The commands `prepare` understands."""

# Pillow's names for the formats the bot reads. Restricting `Image.open` to these keeps every
# other decoder (TIFF, EPS, ICO, …) away from untrusted bytes.
_READABLE_FORMATS: Final = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_READABLE_FORMATS_TEXT: Final = "PNG, JPEG, WebP, BMP or GIF"
# Formats whose extra frames are an animation; JPEG's MPO frames are a camera's preview or
# depth map, not an animation, so they are dropped without a note.
_ANIMATION_NAMES: Final = {"GIF": "GIF", "PNG": "PNG", "WEBP": "WebP"}

# Exceptions Pillow's decoders raise on damaged data (it converts the same set into
# `UnidentifiedImageError` while probing headers).
_DAMAGED_DATA_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

_WHITE: Final = (255, 255, 255)
# Lookup tables for `Image.point` on mode L images.
_REPAINT_FROM_LIGHTNESS: Final = [0] * 128 + [255] * 128  # mask pixel >= 128 -> repaint
_REPAINT_FROM_ALPHA: Final = [255] * 128 + [0] * 128  # alpha < 128 -> repaint
# A sketch pixel counts as painted when a channel differs from the original by more than this:
# JPEG at quality 75 moves smooth areas by a few levels, a brush stroke by far more.
_SKETCH_DIFFERENCE_THRESHOLD: Final = 24
_SKETCH_CHANGED: Final = [0] * (_SKETCH_DIFFERENCE_THRESHOLD + 1) + [255] * (
    255 - _SKETCH_DIFFERENCE_THRESHOLD
)
# A 3x3 box average of a 0/255 image is 255 only when all nine pixels are 255 (else <= ~227)
# and above 0 when any is 255 (then >= ~28); thresholds in the gaps make it an exact 3x3
# erosion / dilation, about four times faster than MinFilter(3) / MaxFilter(3).
_ERODE_AFTER_BOX: Final = [0] * 241 + [255] * 15
_DILATE_AFTER_BOX: Final = [0] * 14 + [255] * 242


@dataclass(frozen=True)
class ImageLimits:
    """Caps checked from the header, before any pixel is decoded."""

    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError(f"image limits must be positive: {self!r}")


# Resident memory one decoded pixel costs while a job's inputs are prepared (decode, RGBA
# conversion, resizes, mask work): a 1.3 KB lossless 16383x2000 WebP took 549 MB, 16.8 bytes
# per pixel, on Pillow 11.
DECODE_BYTES_PER_PIXEL: Final = 17
# What decodes in flight may cost together; one larger than this runs alone.
DECODE_BUDGET: Final = 1 << 30


def decode_cost(files: Sequence[InputFile], limits: ImageLimits) -> int:
    """Bytes of memory preparing `files` may take, from their headers only."""
    total = 0
    for file in files:
        _, width, height = check_header(file, limits)
        total += width * height * DECODE_BYTES_PER_PIXEL
    return total


class MemoryBudget:
    """Admits work while the memory it declares fits in `limit` bytes together.

    Work that declares more than the whole budget is admitted alone, so it is never refused
    here (the pixel cap refuses what is too big for the bot at all).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reserve(self, cost: int) -> AsyncIterator[None]:
        cost = min(max(0, cost), self.limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + cost <= self.limit)
            self.used += cost
        try:
            yield
        finally:
            async with self._changed:
                self.used -= cost
                self._changed.notify_all()


@dataclass(frozen=True)
class InputFile:
    """One downloaded attachment; `name` is the file name shown in messages."""

    name: str
    data: bytes = field(repr=False)  # up to the byte cap: never in logs or tracebacks


@dataclass(frozen=True)
class PreparedInputs:
    """What a backend job receives for its images, plus remarks for the status line."""

    init_png: bytes  # PNG (RGB) for A1111 `init_images[0]`
    mask_png: bytes | None  # PNG (mode L, 0/255, white = repaint), or None
    width: int  # size of the init image, after EXIF orientation
    height: int
    notes: tuple[str, ...] = ()  # e.g. "mask resized from 100x80 to 512x512"


def check_header(file: InputFile, limits: ImageLimits) -> tuple[str, int, int]:
    """Return the format name and the stored width and height, reading only the header.

    The size is as stored, before EXIF orientation. Raises `ImageInputError` naming the file when
    it is empty, over the byte or pixel cap, a decompression bomb, or not a readable image.
    """
    with _open_checked(file, limits) as image:
        image_format = "JPEG" if image.format == "MPO" else str(image.format)
        return image_format, image.width, image.height


def load_image(file: InputFile, limits: ImageLimits) -> tuple[Image.Image, tuple[str, ...]]:
    """Decode a file fully into 8-bit RGB, or RGBA when it has real transparency.

    EXIF orientation is applied first; animations give their first frame (with a note). Raises
    `ImageInputError` for everything `check_header` refuses and for truncated or damaged data.
    """
    image, notes = _decode(file, limits)
    if image.mode == "L":
        image = image.convert("RGB")
    elif image.mode == "LA":
        image = image.convert("RGBA")
    return image, notes


def prepare(
    command: str,
    image: InputFile,
    second: InputFile | None,
    *,
    mask_blur: int,
    limits: ImageLimits,
    mask_alpha: int = 0,
) -> PreparedInputs:
    """Build A1111's init image and mask for one of the five img2img commands.

    `second` is the mask for inpaint and inpaint-upload, the sketch for inpaint-sketch, and
    ignored (with a note) by img2img and sketch. `mask_blur` and `mask_alpha` (the WebUI's
    "Mask transparency", percent) only matter for inpaint-sketch, whose init image blends the
    sketch in through the blurred, dimmed mask as A1111 does.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown img2img command {command!r}; expected one of {sorted(COMMANDS)}")
    if mask_blur < 0:
        raise ValueError(f"mask_blur must be >= 0, got {mask_blur}")
    if not 0 <= mask_alpha <= 100:
        raise ValueError(f"mask_alpha must be 0-100, got {mask_alpha}")
    if command in ("img2img", "sketch"):
        return _prepare_single(command, image, second, limits)
    if command == "inpaint":
        return _prepare_inpaint(image, second, limits)
    if command == "inpaint-upload":
        if second is None:
            raise ImageInputError(
                "inpaint-upload needs two images: the picture and its mask "
                "(white = repaint, black = keep)"
            )
        return _prepare_inpaint_upload(image, second, limits)
    if second is None:
        raise ImageInputError(
            "inpaint-sketch needs two images: the original and the sketch "
            "(the same picture with the area to change painted over)"
        )
    return _prepare_inpaint_sketch(image, second, mask_blur, mask_alpha, limits)


def prepare_interrogate(image: InputFile, limits: ImageLimits) -> PreparedInputs:
    """Prepare the image to caption: RGB, alpha flattened over white, no mask."""
    decoded, notes = _decode(image, limits)
    init = _flattened_rgb(decoded)
    return PreparedInputs(encode_png(init), None, init.width, init.height, notes)


def default_size(width: int, height: int, cap: int) -> tuple[int, int]:
    """Generation size for an input of `width` x `height` (SPEC §2.2).

    Keeps the aspect ratio; scales down only when the longest side is over `cap` (an input under
    the cap keeps its size, as A1111 users expect); rounds each side to the nearest multiple of 8,
    never above `cap` and never below 64.
    """
    if width <= 0 or height <= 0 or cap <= 0:
        raise ValueError(f"sizes must be positive: {width}x{height}, cap {cap}")
    scale = min(1.0, cap / max(width, height))
    largest = max(64, cap // 8 * 8)

    def side(length: int) -> int:
        return min(largest, max(64, round(length * scale / 8) * 8))

    return side(width), side(height)


def encode_png(image: Image.Image) -> bytes:
    """Encode pixels only as PNG, at compress_level=1 (fast; the backend decodes it once).

    No ICC profile is written: A1111 ignores it, and one copied across a colour conversion
    (a CMYK JPEG's profile on RGB pixels) would be wrong.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, icc_profile=None)
    return buffer.getvalue()


# --- the five commands -----------------------------------------------------------------------


def _prepare_single(
    command: str, image: InputFile, second: InputFile | None, limits: ImageLimits
) -> PreparedInputs:
    """img2img and sketch (A1111 tabs 0 and 1): the image is the init image, no mask."""
    decoded, notes = _decode(image, limits)
    init = _flattened_rgb(decoded)
    if second is not None:
        notes += (f"{second.name} ignored: {command} uses one image",)
    return PreparedInputs(encode_png(init), None, init.width, init.height, notes)


def _prepare_inpaint(
    image: InputFile, mask_file: InputFile | None, limits: ImageLimits
) -> PreparedInputs:
    """inpaint (A1111 tab 2): mask from the mask attachment, else from the image's alpha."""
    decoded, notes = _decode(image, limits)
    if mask_file is not None:
        mask, mask_notes = _mask_from_file(mask_file, decoded.size, limits)
        notes += mask_notes
    elif decoded.mode in ("LA", "RGBA"):
        mask = decoded.getchannel("A").point(_REPAINT_FROM_ALPHA)
        if mask.getbbox() is None:
            raise ImageInputError(
                f"the mask is empty: no pixel of {image.name} is more than half transparent; "
                "make the area to repaint fully transparent, or attach a mask "
                "(white = repaint)"
            )
    else:
        raise ImageInputError(
            f"inpaint needs a mask and {image.name} has no transparent pixels: attach a mask "
            "as a second image (white = repaint) or use a PNG whose area to repaint is "
            "transparent"
        )
    # The pixels under the alpha are kept as stored rather than flattened (A1111's inpaint tab,
    # up to 1.5, also did `image.convert("RGB")`): the transparent area is repainted anyway, and
    # half-transparent edges that are kept show their true colour instead of a wash of white.
    init = decoded if decoded.mode == "RGB" else decoded.convert("RGB")
    return PreparedInputs(encode_png(init), encode_png(mask), init.width, init.height, notes)


def _prepare_inpaint_upload(
    image: InputFile, mask_file: InputFile, limits: ImageLimits
) -> PreparedInputs:
    """inpaint-upload (A1111 tab 4): the uploaded picture and the uploaded mask."""
    decoded, notes = _decode(image, limits)
    mask, mask_notes = _mask_from_file(mask_file, decoded.size, limits)
    init = _flattened_rgb(decoded)
    return PreparedInputs(
        encode_png(init), encode_png(mask), init.width, init.height, notes + mask_notes
    )


def _prepare_inpaint_sketch(
    image: InputFile, sketch_file: InputFile, mask_blur: int, mask_alpha: int, limits: ImageLimits
) -> PreparedInputs:
    """inpaint-sketch (A1111 tab 3): mask where the sketch differs; init blends the sketch in."""
    decoded, notes = _decode(image, limits)
    original = _flattened_rgb(decoded)
    decoded_sketch, sketch_notes = _decode(sketch_file, limits)
    sketch = _flattened_rgb(decoded_sketch)
    notes += sketch_notes
    if sketch.size != original.size:
        notes += (f"sketch resized from {_size_text(sketch.size)} to {_size_text(original.size)}",)
        sketch = sketch.resize(original.size, Image.Resampling.LANCZOS)

    # A1111 marks every pixel that differs at all; a chat platform's JPEG re-encoding changes
    # nearly every pixel a little, so a channel must move by more than the threshold, and
    # specks narrower than 3 pixels are removed (a morphological opening).
    red, green, blue = ImageChops.difference(sketch, original).split()
    largest_change = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    mask = _specks_removed(largest_change.point(_SKETCH_CHANGED))
    if mask.getbbox() is None:
        raise ImageInputError(
            f"the sketch does not differ from the original; paint over the picture in "
            f"{sketch_file.name} with clearly different colours (strokes at least 3 pixels wide)"
        )

    if mask_alpha:
        # A1111 (`modules/img2img.py`, tab 3): the mask's brightness × (1 − mask_alpha / 100), so
        # the sketch's colours go in fainter and the mask it sends is grey, not white.
        mask = ImageEnhance.Brightness(mask).enhance(1 - mask_alpha / 100)
    if mask_blur > 0:
        blur = ImageFilter.GaussianBlur(mask_blur)
        init = Image.composite(sketch.filter(blur), original, mask.filter(blur))
    else:
        init = Image.composite(sketch, original, mask)
    return PreparedInputs(encode_png(init), encode_png(mask), init.width, init.height, notes)


# --- masks -----------------------------------------------------------------------------------


def _mask_from_file(
    file: InputFile, size: tuple[int, int], limits: ImageLimits
) -> tuple[Image.Image, tuple[str, ...]]:
    """Decode a mask attachment into a binary L mask of `size` (white = repaint).

    Transparent mask pixels count as black, so white strokes on a transparent layer work.
    """
    decoded, notes = _decode(file, limits)
    if decoded.mode in ("LA", "RGBA"):
        lightness = ImageChops.multiply(decoded.convert("L"), decoded.getchannel("A"))
    elif decoded.mode == "RGB":
        lightness = decoded.convert("L")
    else:
        lightness = decoded
    if lightness.size != size:
        notes += (f"mask resized from {_size_text(lightness.size)} to {_size_text(size)}",)
        lightness = lightness.resize(size, Image.Resampling.NEAREST)
    mask = lightness.point(_REPAINT_FROM_LIGHTNESS)
    if mask.getbbox() is None:
        raise ImageInputError(
            f"the mask is empty: {file.name} has no light pixel; paint the area to repaint "
            "white (anything from mid-grey up counts) on black"
        )
    return mask, notes


def _specks_removed(mask: Image.Image) -> Image.Image:
    """3x3 erosion then 3x3 dilation of a 0/255 L mask: removes specks, keeps strokes."""
    box = ImageFilter.BoxBlur(1)
    return mask.filter(box).point(_ERODE_AFTER_BOX).filter(box).point(_DILATE_AFTER_BOX)


# --- decoding --------------------------------------------------------------------------------


@contextlib.contextmanager
def _pillow_warnings_silenced() -> Iterator[None]:
    """Silence the warnings Pillow raises about untrusted input while it reads it.

    `DecompressionBombWarning` (over Pillow's own MAX_IMAGE_PIXELS, 89 MP) is not the bot's
    decision: the pixel cap is checked right after the header is read, and Pillow's hard
    `DecompressionBombError` at twice its limit still fires. Pillow's `UserWarning`s ("Corrupt
    EXIF data", "Invalid APNG", a malformed MPO) describe the user's file; the file is then
    accepted or refused with a message of its own. Either kind would otherwise fill the log, or
    refuse the file where warnings are errors (as in the tests). Pillow's globals stay untouched.
    In Python 3.11 `catch_warnings` swaps the process-wide filter list; only warnings of these two
    kinds (the second only from Pillow's modules) are affected if threads interleave.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def _open_checked(file: InputFile, limits: ImageLimits) -> ImageFile.ImageFile:
    """Open lazily (header only) and enforce the byte cap, the formats and the pixel cap."""
    if not file.data:
        raise ImageInputError(f"{file.name} is empty")
    if len(file.data) > limits.max_bytes:
        raise ImageInputError(
            f"{file.name} is too large ({_millions_up(len(file.data))} MB); "
            f"the limit is {_millions(limits.max_bytes)} MB"
        )
    try:
        with _pillow_warnings_silenced():
            image = Image.open(io.BytesIO(file.data), formats=_READABLE_FORMATS)
    except Image.DecompressionBombError:
        raise ImageInputError(
            f"{file.name} declares far more pixels than the bot accepts "
            f"(the limit is {_millions(limits.max_pixels)} megapixels)"
        ) from None
    except UnidentifiedImageError:
        raise _unreadable(file) from None
    except _DAMAGED_DATA_ERRORS:
        raise _damaged(file) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        image.close()
        raise ImageInputError(
            f"{file.name} is {width}x{height} pixels ({_millions_up(width * height)} "
            f"megapixels); the limit is {_millions(limits.max_pixels)} megapixels"
        )
    return image


def _decode(file: InputFile, limits: ImageLimits) -> tuple[Image.Image, tuple[str, ...]]:
    """Decode to 8-bit L, LA, RGB or RGBA, upright; alpha only when some pixel is transparent."""
    image = _open_checked(file, limits)
    notes: tuple[str, ...] = ()
    with _pillow_warnings_silenced():
        try:
            animation_name = _ANIMATION_NAMES.get(str(image.format))
            if animation_name is not None and getattr(image, "is_animated", False):
                notes += (f"first frame of animated {animation_name} {file.name} used",)
            image.load()  # the current frame: the first
        except Image.DecompressionBombError:
            # A GIF frame may be larger than the size its header declares.
            raise ImageInputError(
                f"{file.name} has a frame with far more pixels than the bot accepts"
            ) from None
        except _DAMAGED_DATA_ERRORS:
            raise _damaged(file) from None
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except _DAMAGED_DATA_ERRORS:
            # The pixels are fine; only the metadata is broken. Refusing the picture for it
            # would help no one.
            notes += (f"the EXIF data of {file.name} is damaged; its orientation was not applied",)
    if image.width * image.height > limits.max_pixels:
        raise ImageInputError(
            f"{file.name} has a frame larger than its declared size and over "
            f"{_millions(limits.max_pixels)} megapixels"
        )
    return _to_8bit(image), notes


def _to_8bit(image: Image.Image) -> Image.Image:
    """Normalise any decoded mode to L, LA, RGB or RGBA with 8 bits per channel.

    Alpha (or a palette's or `info['transparency']`'s) survives only when at least one pixel is
    not fully opaque, since inpaint reads it as the mask.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_l(image)
    if mode == "F":
        return image.convert("L")  # Pillow's float convention is the 0..255 range of L
    if image.has_transparency_data:
        if mode not in ("LA", "RGBA"):
            image = image.convert("LA" if mode == "L" else "RGBA")
        if image.getextrema()[-1][0] == 255:  # type: ignore[index]  # per-band tuples
            return image.convert(image.mode[:-1])
        return image
    if mode in ("L", "RGB"):
        return image
    return image.convert("L" if mode == "1" else "RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """Scale 16-bit samples (0..65535) to 8 bits by dividing by 257, rounding; mode I clamps.

    Pillow's plain convert("L") clips instead, turning most of a 16-bit image white.
    """
    if image.mode != "I;16":
        image = image.convert("I")  # point() only handles I;16 (native order) and I
    return image.point(lambda value: value / 257 + 0.5).convert("L")


def _flattened_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited over white, as A1111 flattens init images."""
    if image.mode == "RGB":
        return image
    if image.mode == "L":
        return image.convert("RGB")
    rgba = image.convert("RGBA") if image.mode == "LA" else image
    background = Image.new("RGB", image.size, _WHITE)
    background.paste(rgba, mask=rgba)
    return background


# --- messages --------------------------------------------------------------------------------


def _unreadable(file: InputFile) -> ImageInputError:
    return ImageInputError(
        f"{file.name} is not an image the bot can read ({_READABLE_FORMATS_TEXT})"
    )


def _damaged(file: InputFile) -> ImageInputError:
    return ImageInputError(f"{file.name} is truncated or damaged; upload the original file again")


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _millions(count: int) -> str:
    """A limit in millions: 20_000_000 -> "20", 2_500_000 -> "2.5"."""
    return f"{count / 1_000_000:g}"


def _millions_up(count: int) -> str:
    """An amount over a limit in millions, to one decimal rounded up: never reads as the limit."""
    return f"{math.ceil(count / 100_000) / 10:g}"
