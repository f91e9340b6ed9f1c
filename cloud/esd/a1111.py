"""The A1111 request bodies ESD forwards to the inference container, built from the bot's values.

`img2img_payload` is the `/sdapi/v1/img2img` JSON (`reference/esd-api.md` §7.1) with
`init_images` and `mask` already resolved by the core as A1111 resolves its five img2img tabs
(§7.2); `interrogate_payload` is the container's `InterrogateRequest` (§7.3). The checkpoint and
VAE never go into `override_settings`: ESD picks them from the `models` of `POST /inferences`,
which `network_names` helps fill from the prompt's `<lora:…>` / `<hypernet:…>` tags.

The rest of the WebUI's img2img panel travels in the fields its API names: batch count as
`n_iter`, the variation seed as `subseed` / `subseed_strength`, `restore_faces`, `tiling`,
`image_cfg_scale`, `initial_noise_multiplier`, `scheduler` (A1111 1.9+; 1.8, which ESD 1.5–1.7
run, drops the unknown field, so a chosen schedule is also written at the end of the sampler name,
`commands.spec.join_sampler`) and clip skip as the `CLIP_stop_at_last_layers` setting in
`override_settings`.
"Resize by" and the inpaint-sketch mask transparency never reach the API: the WebUI turns them
into `width` / `height` and into the mask and init image before it sends, and so does the core.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any

from commands.spec import AREAS, FILL_MODES, RESIZE_MODES

if TYPE_CHECKING:
    from bot.model import GenerationParams

# A1111's extra-network syntax: `<lora:name:0.8>`, `<lora:name>`; the WebUI's own regex (§7.1).
_LORA = re.compile(r"<lora:([^:>]+)")
_HYPERNET = re.compile(r"<hypernet:([^:>]+)")
# Interrogate models as the container names them (DeepBooru is `deepdanbooru` there).
INTERROGATE_MODELS: dict[str, str] = {"clip": "clip", "deepbooru": "deepdanbooru"}
INTERROGATE_TASKS: dict[str, str] = {
    "clip": "interrogate_clip",
    "deepbooru": "interrogate_deepbooru",
}


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.strip() for n in names if n.strip()))


def lora_names(prompt: str) -> tuple[str, ...]:
    """The LoRA names the prompt refers to, in order, once each."""
    return _unique(_LORA.findall(prompt))


def hypernet_names(prompt: str) -> tuple[str, ...]:
    return _unique(_HYPERNET.findall(prompt))


def resolve_file(name: str, files: tuple[str, ...]) -> str | None:
    """The backend file a prompt tag means: exact, `name.safetensors`, or the same stem."""
    if name in files:
        return name
    if f"{name}.safetensors" in files:
        return f"{name}.safetensors"
    return next((f for f in files if f.rsplit(".", 1)[0] == name), None)


def img2img_payload(
    params: GenerationParams, init_png: bytes, mask_png: bytes | None
) -> dict[str, Any]:
    """The A1111 img2img request for `params` (every value concrete, the model in `models`)."""
    return {
        "prompt": params.prompt,
        "negative_prompt": params.negative,
        "styles": [],
        "seed": params.seed,
        "subseed": params.subseed,
        "subseed_strength": params.subseed_strength,
        "seed_resize_from_h": -1,
        "seed_resize_from_w": -1,
        "sampler_name": params.sampler_name,
        # A1111 reads the sampler from either field; the WebUI extension sets both (§7.1).
        "sampler_index": params.sampler_name,
        "scheduler": params.scheduler,
        "batch_size": params.count,
        "n_iter": params.batch_count,
        "steps": params.steps,
        "cfg_scale": params.cfg,
        "width": params.width,
        "height": params.height,
        "resize_mode": RESIZE_MODES[params.resize],
        "init_images": [data_uri(init_png)],
        "denoising_strength": params.strength,
        "image_cfg_scale": params.image_cfg,
        "initial_noise_multiplier": params.noise_multiplier,
        "include_init_images": False,
        "mask": data_uri(mask_png) if mask_png is not None else None,
        # `mask_blur` sets both axes in A1111; the per-axis fields are sent to match.
        "mask_blur": params.mask_blur,
        "mask_blur_x": params.mask_blur,
        "mask_blur_y": params.mask_blur,
        "inpainting_fill": FILL_MODES[params.fill],
        "inpaint_full_res": AREAS[params.area],
        "inpaint_full_res_padding": params.padding,
        "inpainting_mask_invert": 1 if params.invert else 0,
        "restore_faces": params.restore_faces,
        "tiling": params.tiling,
        # Always sent, so the endpoint's own default cannot differ from what the job shows.
        "override_settings": {"CLIP_stop_at_last_layers": params.clip_skip},
        "override_settings_restore_afterwards": True,
        "disable_extra_networks": False,
        "do_not_save_samples": False,
        "do_not_save_grid": False,
        "script_args": [],
        "alwayson_scripts": {},
        "send_images": True,
        "save_images": False,
    }


def interrogate_payload(image_png: bytes, method: str) -> dict[str, str]:
    """The container's `InterrogateRequest` (`model` is `clip` or `deepdanbooru`)."""
    return {"image": data_uri(image_png), "model": INTERROGATE_MODELS[method]}
