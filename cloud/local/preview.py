"""The preview engine of the local backend: a fast, deterministic stand-in for Stable Diffusion.

It is *not* Stable Diffusion and says so in every infotext it writes. It exists so the whole bot can
be tried on one machine: `render` fits the init image to the requested size (A1111's four resize
modes), applies a cheap seed-dependent transform (hue rotation, posterize, a soft seed-placed colour
field), blends it with the input by `strength`, and honours a mask the way A1111 composites one
(invert, Gaussian mask blur, masked content, whole picture or only the masked area). `caption`
describes an image from its statistics, as a sentence (`clip`) or as tags (`deepbooru`). Everything
here is synchronous and pure: the same bytes and parameters always give the same bytes back.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageChops, ImageFilter, ImageOps, ImageStat
from PIL.PngImagePlugin import PngInfo

from commands.spec import split_sampler

if TYPE_CHECKING:
    from bot.model import GenerationParams

ENGINE_NAME = "sdbot preview (not Stable Diffusion)"

# What the preview honours of A1111's img2img panel: size, resize, count × batch_count images,
# seed and variation seed (strength blends two seeds' looks), strength and the inpaint fields.
# These it cannot do honestly and ignores — the infotext still says what was asked, as A1111
# would, and its `Preview ignored` field names them whenever one is not at its default.
IGNORED: dict[str, str] = {
    "restore_faces": "face restoration",
    "tiling": "tiling",
    "clip_skip": "clip skip",
    "image_cfg": "image CFG scale",
    "noise_multiplier": "noise multiplier",
    "scheduler": "schedule type",
}
# A1111's default `face_restoration_model` setting, which its infotext names.
_FACE_RESTORATION_MODEL = "CodeFormer"

# Speed over size: results are shown once in chat and re-encoded by the platforms anyway.
_PNG_COMPRESS_LEVEL = 1

# A1111's white `img2img_background_color`, used to flatten transparent init images.
_BACKGROUND = (255, 255, 255)

_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_VAE_NOT_SET = ("", "Automatic", "None")
_MASKED_CONTENT = {
    "fill": "fill",
    "original": "original",
    "latent-noise": "latent noise",
    "latent-nothing": "latent nothing",
}
# What "latent nothing" decodes to in SD: a flat mid grey.
_LATENT_NOTHING_GREY = (127, 127, 127)


# -- Rendering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RepaintMask:
    """The repaint mask at output size: `sharp` after resize and invert, `soft` after the blur."""

    sharp: Image.Image
    soft: Image.Image


def render(init_png: bytes, mask_png: bytes | None, params: GenerationParams) -> list[bytes]:
    """Return `params.images` (count × batch count) PNGs of `params.width` × `params.height`.

    Image `i` takes its seeds as A1111 numbers them (`GenerationParams.seeds`). Each PNG carries
    its infotext in the `parameters` text chunk, where A1111 puts it.
    """
    if params.width < 1 or params.height < 1:
        raise ValueError(f"size must be positive, got {params.width}x{params.height}")
    size = (params.width, params.height)
    base = _fit(_open_rgb(init_png), size, params.resize, Image.Resampling.LANCZOS)
    mask = None if mask_png is None else _repaint_mask(mask_png, size, params)
    return [
        _encode(
            _render_one(base, mask, params, index),
            render_infotext(params, index, masked=mask is not None),
        )
        for index in range(params.images)
    ]


def _render_one(
    base: Image.Image, mask: _RepaintMask | None, params: GenerationParams, index: int
) -> Image.Image:
    strength = min(max(params.strength, 0.0), 1.0)
    if strength == 0.0:
        # Exactly the input: no blend or composite rounding can creep in.
        return base
    seed, subseed = params.seeds(index)
    if mask is None:
        return Image.blend(base, _varied(base, params, seed, subseed), strength)
    source = _prefill(base, mask.sharp, params.fill, seed)
    if params.area == "masked":
        box = mask.soft.getbbox()
        if box is None:
            return base  # nothing to repaint
        box = _pad_box(box, params.padding, base.size)
        repainted = base.copy()
        changed = _varied(source.crop(box), params, seed, subseed)
        repainted.paste(Image.blend(base.crop(box), changed, strength), box[:2])
    elif params.area == "whole":
        repainted = Image.blend(base, _varied(source, params, seed, subseed), strength)
    else:
        raise ValueError(f"unknown inpaint area: {params.area}")
    # The blurred mask is the alpha, so pixels it does not touch are the input's, byte for byte.
    return Image.composite(repainted, base, mask.soft)


def _varied(image: Image.Image, params: GenerationParams, seed: int, subseed: int) -> Image.Image:
    """The seed's transform, moved toward the variation seed's by `subseed_strength`.

    A1111 blends the two seeds' noise; the preview blends the two seeds' looks.
    """
    changed = _transform(image, random.Random(seed))
    if params.subseed_strength <= 0:
        return changed
    variation = _transform(image, random.Random(subseed))
    return Image.blend(changed, variation, min(params.subseed_strength, 1.0))


def _transform(image: Image.Image, rng: random.Random) -> Image.Image:
    """The visible, seed-dependent change: colour grade, posterize and a soft colour field.

    Every random draw happens in the same order whatever the image, so a seed means the same look
    at any size.
    """
    hue_shift = rng.randrange(48, 208)  # far from 0 so that strength 1 never looks untouched
    saturation_gain = 1.2 + 0.6 * rng.random()
    bits = rng.choice((2, 3))
    grid = (rng.randint(2, 5), rng.randint(2, 5))
    field_weight = 0.3 + 0.2 * rng.random()
    field_colours = rng.randbytes(grid[0] * grid[1] * 3)

    hue, saturation, value = image.convert("HSV").split()
    hue = hue.point([(v + hue_shift) % 256 for v in range(256)])
    saturation = saturation.point([min(255, round(v * saturation_gain) + 24) for v in range(256)])
    graded = ImageOps.posterize(Image.merge("HSV", (hue, saturation, value)).convert("RGB"), bits)
    # A few random colours blown up bicubically: soft blobs whose places depend on the seed.
    field = Image.frombytes("RGB", grid, field_colours).resize(image.size, Image.Resampling.BICUBIC)
    return Image.blend(graded, field, field_weight)


def _prefill(base: Image.Image, sharp_mask: Image.Image, fill: str, seed: int) -> Image.Image:
    """What the transform starts from under the mask (A1111's "masked content")."""
    if fill == "original":
        return base
    if fill == "fill":
        unmasked = ImageOps.invert(sharp_mask)
        stat = ImageStat.Stat(base, mask=unmasked) if unmasked.getbbox() else ImageStat.Stat(base)
        colour = tuple(round(channel) for channel in stat.mean)
        layer = Image.new("RGB", base.size, colour)
    elif fill == "latent-noise":
        # Its own generator so that the transform's draws stay the same for every fill.
        noise = random.Random(f"latent-noise:{seed}").randbytes(base.width * base.height * 3)
        layer = Image.frombytes("RGB", base.size, noise)
    elif fill == "latent-nothing":
        layer = Image.new("RGB", base.size, _LATENT_NOTHING_GREY)
    else:
        raise ValueError(f"unknown masked content: {fill}")
    return Image.composite(layer, base, sharp_mask)


def _repaint_mask(mask_png: bytes, size: tuple[int, int], params: GenerationParams) -> _RepaintMask:
    with Image.open(io.BytesIO(mask_png)) as opened:
        mask = opened.convert("L")
    # Same geometry as the init image so the mask stays over what it marks; NEAREST keeps it hard.
    sharp = _fit(mask, size, params.resize, Image.Resampling.NEAREST)
    if params.invert:
        sharp = ImageOps.invert(sharp)
    soft = sharp.filter(ImageFilter.GaussianBlur(params.mask_blur)) if params.mask_blur else sharp
    return _RepaintMask(sharp=sharp, soft=soft)


def _pad_box(
    box: tuple[int, int, int, int], padding: int, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    return (
        max(0, left - padding),
        max(0, top - padding),
        min(size[0], right + padding),
        min(size[1], bottom + padding),
    )


def _open_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        if not opened.has_transparency_data:
            return opened.convert("RGB")
        rgba = opened.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _fit(
    image: Image.Image, size: tuple[int, int], resize: str, resample: Image.Resampling
) -> Image.Image:
    """Fit `image` to `size` the way A1111's `resize_mode` does."""
    width, height = size
    if resize in ("just-resize", "latent"):
        # The latent upscale happens inside SD; in pixels it is a stretch like just-resize.
        return image.resize(size, resample)
    if resize == "crop":
        scale = max(width / image.width, height / image.height)
        scaled_size = (
            max(width, round(image.width * scale)),
            max(height, round(image.height * scale)),
        )
        left = (scaled_size[0] - width) // 2
        top = (scaled_size[1] - height) // 2
        return image.resize(scaled_size, resample).crop((left, top, left + width, top + height))
    if resize == "fill":
        return _contain_and_fill(image, size, resample)
    raise ValueError(f"unknown resize mode: {resize}")


def _contain_and_fill(
    image: Image.Image, size: tuple[int, int], resample: Image.Resampling
) -> Image.Image:
    width, height = size
    scale = min(width / image.width, height / image.height)
    inner_w = min(width, max(1, round(image.width * scale)))
    inner_h = min(height, max(1, round(image.height * scale)))
    inner = image.resize((inner_w, inner_h), resample)
    left, top = (width - inner_w) // 2, (height - inner_h) // 2
    right, bottom = width - left - inner_w, height - top - inner_h
    canvas = Image.new(image.mode, size)
    canvas.paste(inner, (left, top))
    # Borders repeat the picture's edge row / column, as A1111's "Resize and fill" does, so the
    # fill continues the picture instead of framing it.
    nearest = Image.Resampling.NEAREST
    if top:
        canvas.paste(inner.crop((0, 0, inner_w, 1)).resize((inner_w, top), nearest), (left, 0))
    if bottom:
        edge = inner.crop((0, inner_h - 1, inner_w, inner_h))
        canvas.paste(edge.resize((inner_w, bottom), nearest), (left, top + inner_h))
    if left:
        edge = canvas.crop((left, 0, left + 1, height))
        canvas.paste(edge.resize((left, height), nearest), (0, 0))
    if right:
        edge = canvas.crop((left + inner_w - 1, 0, left + inner_w, height))
        canvas.paste(edge.resize((right, height), nearest), (left + inner_w, 0))
    return canvas


def _encode(picture: Image.Image, infotext: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", infotext)  # falls back to iTXt for non-Latin-1 prompts
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL, pnginfo=info)
    return buffer.getvalue()


# -- Infotext -------------------------------------------------------------------------------


def render_infotext(params: GenerationParams, index: int, *, masked: bool = False) -> str:
    """A1111-style infotext (1.9+) of image `index` (0-based) of the job's images.

    Fields come in A1111's order (`processing.create_infotext`) and only when A1111 writes them:
    `masked` adds the inpaint fields, as A1111 does only when a mask was used; `Image CFG scale`
    only for an instruct-pix2pix checkpoint (A1111 checks the model's config; the preview goes by
    `pix2pix` in the name). The last fields name what the preview ignored and the engine, so
    nobody mistakes a preview for a Stable Diffusion result.
    """
    seed, subseed = params.seeds(index)
    sampler, named_schedule = split_sampler(params.sampler_name)
    fields: list[tuple[str, object]] = [
        ("Steps", params.steps),
        ("Sampler", sampler),
        # A1111 1.9+: a schedule named in the sampler wins (`get_sampler_and_scheduler`).
        ("Schedule type", named_schedule or params.scheduler),
        ("CFG scale", _number(params.cfg)),
    ]
    if "pix2pix" in params.model.lower():
        fields.append(("Image CFG scale", _number(params.image_cfg)))
    fields.append(("Seed", seed))
    if params.restore_faces:
        fields.append(("Face restoration", _FACE_RESTORATION_MODEL))
    fields += [
        ("Size", f"{params.width}x{params.height}"),
        ("Model", _checkpoint_stem(params.model)),
    ]
    if params.vae not in _VAE_NOT_SET:
        fields.append(("VAE", params.vae))
    if params.subseed_strength != 0:
        fields.append(("Variation seed", subseed))
        fields.append(("Variation seed strength", _number(params.subseed_strength)))
    fields.append(("Denoising strength", _number(params.strength)))
    if params.clip_skip > 1:
        fields.append(("Clip skip", params.clip_skip))
    if params.tiling:
        fields.append(("Tiling", "True"))
    if masked:
        fields.append(("Mask blur", params.mask_blur))
        if params.invert:
            fields.append(("Mask mode", "Inpaint not masked"))
        fields.append(("Masked content", _MASKED_CONTENT.get(params.fill, params.fill)))
        if params.area == "masked":
            fields.append(("Inpaint area", "Only masked"))
            fields.append(("Masked area padding", params.padding))
    if params.noise_multiplier != 1.0:
        # Set by A1111 when it samples, after the inpaint fields.
        fields.append(("Noise multiplier", _number(params.noise_multiplier)))
    ignored = ignored_options(params)
    if ignored:
        fields.append(("Preview ignored", ", ".join(ignored)))
    fields.append(("Engine", ENGINE_NAME))
    settings = ", ".join(f"{key}: {_quote(str(value))}" for key, value in fields)
    negative = f"\nNegative prompt: {params.negative}" if params.negative else ""
    # A1111 strips the whole text, so an empty prompt does not leave a blank first line.
    return f"{params.prompt}{negative}\n{settings}".strip()


def ignored_options(params: GenerationParams) -> list[str]:
    """What the job asked for that the preview engine cannot do (see `IGNORED`)."""
    defaults = {f.name: f.default for f in dataclasses.fields(params)}
    return [words for name, words in IGNORED.items() if getattr(params, name) != defaults[name]]


def _quote(value: str) -> str:
    """Quote a value the way A1111's infotext does, so its parser reads it back."""
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _number(value: float) -> str:
    return f"{value:g}"


def _checkpoint_stem(model: str) -> str:
    # A1111 writes the checkpoint's name without its file extension.
    for suffix in _CHECKPOINT_SUFFIXES:
        if model.endswith(suffix) and len(model) > len(suffix):
            return model[: -len(suffix)]
    return model


# -- Captions -------------------------------------------------------------------------------

_CAPTION_SAMPLE_SIDE = 128
# Hue buckets on Pillow's 0–255 hue scale, upper bounds exclusive (red wraps around).
_HUE_BUCKETS: tuple[tuple[int, str], ...] = (
    (11, "red"),
    (32, "orange"),
    (50, "yellow"),
    (117, "green"),
    (139, "cyan"),
    (181, "blue"),
    (206, "purple"),
    (245, "pink"),
    (256, "red"),
)
_COLOURFUL_SATURATION = 64
_COLOURFUL_VALUE = 48
_GREYSCALE_SHARE = 0.15  # below this share of colourful pixels the picture reads as grey
_MOSTLY_SHARE = 0.5


@dataclass(frozen=True)
class _ImageTraits:
    brightness: str  # "bright" | "dark" | "mid-toned"
    colour: str | None  # dominant hue name; None = greyscale
    mostly: bool  # the colour covers at least half the picture
    orientation: str  # "landscape" | "portrait" | "square"
    contrast: str  # "strong" | "moderate" | "low"
    detail: str  # "fine" | "soft"
    vivid: bool


def caption(image_png: bytes, method: str) -> str:
    """Describe an image from its statistics: a sentence for `clip`, tags for `deepbooru`."""
    traits = _traits(_open_rgb(image_png))
    if method == "clip":
        return _sentence(traits)
    if method == "deepbooru":
        return _tags(traits)
    raise ValueError(f"unknown interrogate method: {method}")


def _sentence(traits: _ImageTraits) -> str:
    if traits.colour is None:
        colour = "greyscale"
    else:
        colour = f"{'mostly' if traits.mostly else 'partly'} {traits.colour}"
    return (
        f"a {traits.brightness}, {colour}, {traits.orientation}-format picture"
        f" with {traits.contrast} contrast and {traits.detail} detail"
    )


def _tags(traits: _ImageTraits) -> str:
    colour = ["greyscale", "monochrome"] if traits.colour is None else [traits.colour]
    contrast = {"strong": "high_contrast", "low": "low_contrast"}.get(
        traits.contrast, "medium_contrast"
    )
    tags = [
        *colour,
        traits.brightness.replace("-", "_"),
        traits.orientation,
        contrast,
        f"{traits.detail}_detail",
        "vivid" if traits.vivid else "muted",
    ]
    return ", ".join(tags)


def _traits(image: Image.Image) -> _ImageTraits:
    sample = image.copy()
    sample.thumbnail((_CAPTION_SAMPLE_SIDE, _CAPTION_SAMPLE_SIDE))
    luminance = sample.convert("L")
    lum_stat = ImageStat.Stat(luminance)
    mean, spread = lum_stat.mean[0], lum_stat.stddev[0]
    edges = ImageStat.Stat(luminance.filter(ImageFilter.FIND_EDGES)).mean[0]

    hue, saturation, value = sample.convert("HSV").split()
    colourful = ImageChops.darker(
        saturation.point(lambda v: 255 if v >= _COLOURFUL_SATURATION else 0),
        value.point(lambda v: 255 if v >= _COLOURFUL_VALUE else 0),
    )
    histogram = hue.histogram(mask=colourful)
    pixels = sample.width * sample.height
    colour: str | None = None
    mostly = False
    if sum(histogram) >= _GREYSCALE_SHARE * pixels:
        counts: dict[str, int] = {}
        low = 0
        for high, name in _HUE_BUCKETS:
            counts[name] = counts.get(name, 0) + sum(histogram[low:high])
            low = high
        # Ties go to the first bucket in hue order, so the answer never depends on dict order.
        colour = max(counts, key=lambda name: counts[name])
        mostly = counts[colour] >= _MOSTLY_SHARE * pixels

    if image.width > image.height * 1.05:
        orientation = "landscape"
    elif image.height > image.width * 1.05:
        orientation = "portrait"
    else:
        orientation = "square"
    return _ImageTraits(
        brightness="dark" if mean < 85 else "bright" if mean > 170 else "mid-toned",
        colour=colour,
        mostly=mostly,
        orientation=orientation,
        contrast="strong" if spread >= 60 else "low" if spread <= 25 else "moderate",
        detail="fine" if edges >= 24 else "soft",
        vivid=ImageStat.Stat(saturation).mean[0] >= 128,
    )
