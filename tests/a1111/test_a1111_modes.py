"""Every image mode and interrogate through the console, the real core and the WebUI backend:
what reaches `POST /sdapi/v1/img2img` and `/sdapi/v1/interrogate` for each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import IMAGE_MODES, ConsoleRun, job_ids, png, run_image_mode, states

from cloud.a1111 import A1111Backend
from tests.a1111.conftest import webui_config

if TYPE_CHECKING:
    from pathlib import Path

    from scenario_kit import FastSettings

    from tests.a1111.fake_webui import FakeWebUI

# What each mode of `IMAGE_MODES` must send besides the common fields.
EXPECTED: dict[tuple[str, str], dict[str, Any]] = {
    IMAGE_MODES[0]: {"mask": None},
    IMAGE_MODES[1]: {"inpainting_mask_invert": 0, "inpaint_full_res": False},
    IMAGE_MODES[2]: {"inpainting_fill": 1, "mask_blur": 4},
    IMAGE_MODES[3]: {
        "inpainting_mask_invert": 1,
        "inpaint_full_res": True,
        "inpaint_full_res_padding": 8,
        "inpainting_fill": 2,
    },
    IMAGE_MODES[4]: {"mask_blur": 0, "mask_blur_x": 0, "mask_blur_y": 0},
}


def console_on(webui: FakeWebUI, tmp_path: Path) -> ConsoleRun:
    def backend_for(config: FastSettings) -> A1111Backend:
        return A1111Backend(webui_config(webui.url, tmp_path))

    return ConsoleRun(tmp_path, backend_for=backend_for, endpoint="webui")


@pytest.mark.parametrize(("command", "extra"), IMAGE_MODES)
async def test_each_mode_sends_its_inputs_and_options(
    webui: FakeWebUI, tmp_path: Path, command: str, extra: str
) -> None:
    async with console_on(webui, tmp_path) as console:
        await run_image_mode(console, command, extra)
    [received] = webui.received
    body = received.body
    assert body["init_images"][0].startswith("data:image/png;base64,")
    masked = (command, extra) != IMAGE_MODES[0]
    assert (body["mask"] is not None) == masked
    for key, value in EXPECTED[(command, extra)].items():
        assert body[key] == value, key
    assert (body["width"], body["height"], body["prompt"]) == (96, 64, "a hat")
    assert body["override_settings"]["sd_model_checkpoint"] == "dreamshaper_8.safetensors"


async def test_interrogate_both_methods_through_the_console(
    webui: FakeWebUI, tmp_path: Path
) -> None:
    async with console_on(webui, tmp_path) as console:
        image = console.write("in.png", png(64, 48))
        lines = await console.run(
            f"interrogate image={image}", f"interrogate image={image} method=deepbooru"
        )
    clip, booru = job_ids(lines)
    assert states(lines, clip)[-1] == states(lines, booru)[-1] == "succeed"
    assert f"caption {clip}: a picture of 64x48 pixels, trending on artstation" in lines
    assert f"caption {booru}: 1girl, solo, outdoors, sky, cloud" in lines
    assert sorted(r.body["model"] for r in webui.received) == ["clip", "deepdanbooru"]
