"""What the inference container reads: A1111 request JSON, parsed into the preview engine's terms.

An img2img job's uploaded `api_param.json` is A1111's `/sdapi/v1/img2img` body (esd-api.md §7.1);
an interrogate job's is A1111's `/sdapi/v1/interrogate` body (`{"image", "model"}`, §7.3). This
module turns them into `GenerationParams` plus decoded image bytes, or raises `PayloadError` with
a sentence saying what is wrong — that sentence becomes the failed job's `sagemakerRaw`. Sizes are
bounded here so that no payload can make the preview engine allocate without limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from bot.model import GenerationParams
from commands.spec import Area, Fill, Resize, read_sampler

# A1111's `resize_mode` and `inpainting_fill` integers, in the preview engine's words (§7.1).
RESIZE_MODES: tuple[Resize, ...] = tuple(Resize)
INPAINTING_FILLS: tuple[Fill, ...] = tuple(Fill)
# The container's interrogate models and the preview engine's names for them.
INTERROGATE_MODELS: dict[str, str] = {
    "clip": "clip",
    "deepdanbooru": "deepbooru",
    "deepbooru": "deepbooru",
}

# Bounds that keep one job's work small; A1111 itself would run out of VRAM long before.
MAX_SIDE = 4096
MAX_OUTPUT_PIXELS = 16_000_000
MAX_INPUT_PIXELS = 40_000_000
MAX_BATCH = 16

_DEFAULT_SAMPLER = "DPM++ 2M Karras"
_SEED_SPACE = 2**32 - 1  # A1111 draws random seeds below this


class PayloadError(ValueError):
    """The payload cannot be run; the message says why, for `sagemakerRaw`."""


@dataclass(frozen=True)
class Img2ImgRequest:
    """A parsed img2img payload: the preview engine's parameters and the decoded images."""

    params: GenerationParams
    init_image: bytes
    mask: bytes | None
    # A1111 echoes the request back as `parameters`, without the images (include_init_images off).
    echoed: dict[str, Any]


@dataclass(frozen=True)
class InterrogateRequest:
    image: bytes
    method: str  # the preview engine's name: "clip" | "deepbooru"


def loads(raw: bytes) -> dict[str, Any]:
    """The JSON object in `raw`; A1111's client writes `Infinity` for `s_tmax`, which is allowed."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"the uploaded payload is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PayloadError("the uploaded payload is not a JSON object")
    return value


def parse_img2img(
    payload: dict[str, Any], *, model: str, vae: str, endpoint: str, job_id: str
) -> Img2ImgRequest:
    """Read an A1111 img2img body. `model` / `vae` come from the job's `models`, never the body."""
    init_images = payload.get("init_images")
    if not isinstance(init_images, list) or not init_images:
        raise PayloadError("img2img payload has no init_images")
    init_image = decode_image(init_images[0], "init_images[0]")
    mask_value = payload.get("mask")
    mask = None if mask_value in (None, "") else decode_image(mask_value, "mask")

    seed = _integer(payload, "seed", -1)
    if seed == -1:
        # A1111 picks a random seed; this one depends on the job so a replay gives the same.
        seed = random.Random(job_id).randrange(_SEED_SPACE)
    width = _integer(payload, "width", 512, low=1, high=MAX_SIDE)
    height = _integer(payload, "height", 512, low=1, high=MAX_SIDE)
    if width * height > MAX_OUTPUT_PIXELS:
        raise PayloadError(f"size {width}x{height} is above {MAX_OUTPUT_PIXELS} pixels")
    batch_size = _integer(payload, "batch_size", 1, low=1)
    n_iter = _integer(payload, "n_iter", 1, low=1)
    if batch_size * n_iter > MAX_BATCH:
        raise PayloadError(f"batch_size × n_iter = {batch_size * n_iter} is above {MAX_BATCH}")
    subseed_strength = _real(payload, "subseed_strength", 0.0, low=0.0, high=1.0)
    subseed = _integer(payload, "subseed", -1)
    if subseed == -1 and subseed_strength > 0:
        subseed = random.Random(f"{job_id}:subseed").randrange(_SEED_SPACE)
    overrides = payload.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise PayloadError("override_settings must be an object")
    mask_blur = payload.get("mask_blur")
    blur_key = "mask_blur" if mask_blur is not None else "mask_blur_x"
    name = payload.get("sampler_name") or payload.get("sampler_index") or _DEFAULT_SAMPLER
    try:
        # A1111 1.9+ reads a schedule written at the end of the name (`Euler Karras`).
        sampler, scheduler = read_sampler(str(name), _text(payload, "scheduler") or "Automatic")
    except ValueError:
        raise PayloadError(f"Sampler not found: {name}") from None

    params = GenerationParams(
        prompt=_text(payload, "prompt"),
        negative=_text(payload, "negative_prompt"),
        strength=_real(payload, "denoising_strength", 0.75, low=0.0, high=1.0),
        steps=_integer(payload, "steps", 20, low=1, high=150),
        cfg=_real(payload, "cfg_scale", 7.0, low=0.0, high=100.0),
        sampler=sampler,
        seed=seed,
        width=width,
        height=height,
        count=batch_size,
        resize=RESIZE_MODES[_integer(payload, "resize_mode", 0, low=0, high=3)],
        model=model,
        vae=vae,
        endpoint=endpoint,
        mask_blur=_integer(payload, blur_key, 4, low=0, high=256),
        fill=INPAINTING_FILLS[_integer(payload, "inpainting_fill", 1, low=0, high=3)],
        area=Area.MASKED if _flag(payload, "inpaint_full_res") else Area.WHOLE,
        padding=_integer(payload, "inpaint_full_res_padding", 32, low=0, high=MAX_SIDE),
        invert=_flag(payload, "inpainting_mask_invert"),
        batch_count=n_iter,
        subseed=subseed,
        subseed_strength=subseed_strength,
        # A1111 takes null as "the setting's default" (off) for these two.
        restore_faces=_flag(payload, "restore_faces"),
        tiling=_flag(payload, "tiling"),
        clip_skip=_integer(overrides, "CLIP_stop_at_last_layers", 1, low=1, high=12),
        image_cfg=_real(payload, "image_cfg_scale", 1.5, low=0.0, high=100.0),
        noise_multiplier=_real(payload, "initial_noise_multiplier", 1.0, low=0.0, high=100.0),
        scheduler=scheduler,
    )
    echoed = {**payload, "init_images": None, "mask": None, "seed": seed}
    return Img2ImgRequest(params=params, init_image=init_image, mask=mask, echoed=echoed)


def parse_interrogate(payload: dict[str, Any], task_type: str) -> InterrogateRequest:
    """Read an A1111 interrogate body; without `model` the task type decides."""
    default = "deepdanbooru" if task_type == "interrogate_deepbooru" else "clip"
    model = payload.get("model", default)
    if not isinstance(model, str) or model not in INTERROGATE_MODELS:
        raise PayloadError(f"interrogate model must be clip or deepdanbooru, got {model!r}")
    return InterrogateRequest(
        image=decode_image(payload.get("image"), "image"), method=INTERROGATE_MODELS[model]
    )


def decode_image(value: object, field: str) -> bytes:
    """Bytes of a `data:image/…;base64,` URL (or bare base64) whose header is a sane image."""
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{field} must be a base64 image string")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"{field} is not valid base64") from None
    try:
        # Only the header is read here: the size check comes before any pixel is decoded.
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise PayloadError(f"{field} is not an image") from None
    if width * height > MAX_INPUT_PIXELS:
        raise PayloadError(f"{field} is {width}x{height}, above {MAX_INPUT_PIXELS} pixels")
    return data


# -- Typed reads -----------------------------------------------------------------------------


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _integer(
    payload: dict[str, Any],
    key: str,
    default: int,
    *,
    low: int | None = None,
    high: int | None = None,
) -> int:
    value = payload.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise PayloadError(f"{key} must be an integer, got {value!r}")
    number = int(value)
    _check_range(key, number, low, high)
    return number


def _real(payload: dict[str, Any], key: str, default: float, *, low: float, high: float) -> float:
    value = payload.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PayloadError(f"{key} must be a number, got {value!r}")
    _check_range(key, value, low, high)
    return float(value)


def _flag(payload: dict[str, Any], key: str) -> bool:
    """A1111 takes booleans or 0/1 for these (`inpainting_mask_invert` is an int upstream)."""
    value = payload.get(key)
    if value in (None, False, 0):
        return False
    if value in (True, 1):
        return True
    raise PayloadError(f"{key} must be true/false or 0/1, got {value!r}")


def _check_range(key: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise PayloadError(f"{key} must be at least {low}, got {value!r}")
    if high is not None and value > high:
        raise PayloadError(f"{key} must be at most {high}, got {value!r}")
