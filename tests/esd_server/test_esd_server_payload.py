"""A1111 request bodies → the preview engine's parameters, and every way a payload is refused."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import pytest

from cloud.esd_server.payload import (
    PayloadError,
    decode_image,
    loads,
    parse_img2img,
    parse_interrogate,
)
from tests.esd_server.esd_server_kit import data_url, img2img_payload, png


def parse(**changes: Any) -> Any:
    return parse_img2img(
        img2img_payload(**changes),
        model="m.safetensors",
        vae="v.pt",
        endpoint="sd-async-local",
        job_id="job-1",
    )


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size but carries no pixels: enough for a header check."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    iend = b"IEND"
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + ihdr
        + struct.pack(">I", zlib.crc32(ihdr))
        + struct.pack(">I", 0)
        + iend
        + struct.pack(">I", zlib.crc32(iend))
    )


def test_an_a1111_body_maps_onto_generation_params() -> None:
    mask = png((255, 255, 255), mode="L")
    request = parse(
        mask=data_url(mask),
        batch_size=2,
        n_iter=2,
        resize_mode=2,
        inpainting_fill=3,
        inpaint_full_res=True,
        inpaint_full_res_padding=16,
        inpainting_mask_invert=1,
        mask_blur=7,
    )
    params = request.params
    assert (params.prompt, params.negative) == ("a red boat", "blurry")
    assert (params.strength, params.steps, params.cfg) == (0.6, 12, 6.5)
    assert (params.sampler, params.seed) == ("Euler a", 1234)
    assert (params.width, params.height, params.count, params.batch_count) == (48, 32, 2, 2)
    assert params.images == 4
    assert (params.resize, params.fill, params.area) == ("fill", "latent-nothing", "masked")
    assert (params.padding, params.invert, params.mask_blur) == (16, True, 7)
    assert (params.model, params.vae, params.endpoint) == (
        "m.safetensors",
        "v.pt",
        "sd-async-local",
    )
    assert request.init_image == png()
    assert request.mask == mask
    assert request.echoed["init_images"] is None and request.echoed["mask"] is None
    assert request.echoed["prompt"] == "a red boat"


@pytest.mark.parametrize(
    ("resize_mode", "resize"), [(0, "just-resize"), (1, "crop"), (2, "fill"), (3, "latent")]
)
def test_resize_modes(resize_mode: int, resize: str) -> None:
    assert parse(resize_mode=resize_mode).params.resize == resize


@pytest.mark.parametrize(
    ("fill", "name"), [(0, "fill"), (1, "original"), (2, "latent-noise"), (3, "latent-nothing")]
)
def test_inpainting_fills(fill: int, name: str) -> None:
    assert parse(inpainting_fill=fill).params.fill == name


def test_defaults_and_fallbacks_for_keys_left_out() -> None:
    payload = {"init_images": [data_url(png())], "mask_blur_x": 9, "sampler_index": "DDIM"}
    params = parse_img2img(payload, model="m", vae="Automatic", endpoint="e", job_id="j").params
    assert (params.prompt, params.negative, params.strength) == ("", "", 0.75)
    assert (params.steps, params.cfg, params.width, params.height) == (20, 7.0, 512, 512)
    assert (params.count, params.resize, params.fill, params.area) == (
        1,
        "just-resize",
        "original",
        "whole",
    )
    assert (params.mask_blur, params.sampler, params.invert) == (9, "DDIM", False)


def test_a_random_seed_is_drawn_per_job_and_echoed() -> None:
    first = parse_img2img(img2img_payload(seed=-1), model="m", vae="", endpoint="e", job_id="a")
    again = parse_img2img(img2img_payload(seed=-1), model="m", vae="", endpoint="e", job_id="a")
    other = parse_img2img(img2img_payload(seed=-1), model="m", vae="", endpoint="e", job_id="b")
    assert first.params.seed == again.params.seed != other.params.seed
    assert first.params.seed >= 0
    assert first.echoed["seed"] == first.params.seed


def test_bare_base64_is_accepted_like_a_data_url() -> None:
    bare = base64.b64encode(png()).decode()
    assert parse(init_images=[bare]).init_image == png()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"init_images": []}, "no init_images"),
        ({"init_images": ["data:image/png;base64,@@@"]}, "not valid base64"),
        ({"init_images": [base64.b64encode(b"plain text").decode()]}, "is not an image"),
        ({"init_images": [data_url(png_header(8000, 6000))]}, "above 40000000 pixels"),
        ({"mask": 5}, "mask must be a base64 image string"),
        ({"steps": "20"}, "steps must be an integer"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"denoising_strength": 2}, "denoising_strength must be at most 1.0"),
        ({"cfg_scale": True}, "cfg_scale must be a number"),
        ({"width": 5000}, "width must be at most 4096"),
        ({"width": 4096, "height": 4096}, "above 16000000 pixels"),
        ({"batch_size": 8, "n_iter": 3}, "batch_size × n_iter = 24"),
        ({"resize_mode": 4}, "resize_mode must be at most 3"),
        ({"inpainting_mask_invert": 2}, "inpainting_mask_invert must be true/false or 0/1"),
        ({"prompt": ["a"]}, "prompt must be a string"),
    ],
)
def test_payloads_that_cannot_run_say_why(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError, match=message.replace("(", r"\(")):
        parse(**changes)


def test_interrogate_bodies() -> None:
    image = data_url(png())
    assert parse_interrogate({"image": image, "model": "clip"}, "interrogate_clip").method == "clip"
    deep = parse_interrogate({"image": image, "model": "deepdanbooru"}, "interrogate_clip")
    assert deep.method == "deepbooru"  # the body's model wins, as in the container
    assert parse_interrogate({"image": image}, "interrogate_deepbooru").method == "deepbooru"
    assert parse_interrogate({"image": image}, "interrogate_clip").image == png()
    with pytest.raises(PayloadError, match="clip or deepdanbooru"):
        parse_interrogate({"image": image, "model": "blip"}, "interrogate_clip")
    with pytest.raises(PayloadError, match="image must be"):
        parse_interrogate({}, "interrogate_clip")


def test_loads_takes_a1111s_infinity_and_refuses_non_objects() -> None:
    assert loads(b'{"s_tmax": Infinity}')["s_tmax"] == float("inf")
    for raw in (b"[1]", b"nope", b"\xff"):
        with pytest.raises(PayloadError):
            loads(raw)


def test_decode_image_reads_only_the_header() -> None:
    assert decode_image(data_url(png_header(64, 64)), "init") == png_header(64, 64)
