"""Issue 10 on Discord: every way to start a job — slash command, thread reply, each result
button, the Edit modal and both message context menus — is held to the same limits, and the
user reads why. Results of the preview engine say so in their embed."""

from __future__ import annotations

from typing import Any

import pytest
from scenario_kit import png

from bot.render import PREVIEW_NOTICE

RUNNING = "you have 1 job running; the limit here is 1"


def _message(bot: Any, files: dict[str, bytes]) -> dict[str, Any]:
    """Bob's message with attachments (not addressed to the bot), as a context menu's target."""
    message: dict[str, Any] = bot.say("look", user=bot.bob, files=files)
    return message


async def _answer(bot: Any, token: str) -> dict[str, Any]:
    """The first response to an interaction, once the adapter is done with it."""
    await bot.fake.wait_for(lambda: bool(bot.fake.callbacks(token)))
    await bot.adapter.wait_idle()
    return dict(bot.fake.callbacks(token)[0].json)


async def _said(bot: Any, token: str) -> str:
    """Everything the user was told in answer to an interaction."""
    first = await _answer(bot, token)
    said = [first.get("data", {}).get("content") or ""]
    said += [m["content"] for m in bot.fake.answers_to(token)]
    return "\n".join(said)


async def _finished(bot: Any, command: str, **options: Any) -> Any:
    await bot.answered(bot.slash(command, options, {"image": png()}))
    return (await bot.jobs())[-1]


@pytest.fixture
async def limited(harness: Any) -> Any:
    """Alice has a finished img2img and interrogate job, and one job held in flight."""
    bot = await harness.start(user_concurrency=1)
    bot.base = await _finished(bot, "img2img", prompt="a cat")
    bot.caption = await _finished(bot, "interrogate")
    bot.backend.gate.clear()  # statuses wait: the next job stays in flight
    await _answer(bot, bot.slash("img2img", {"prompt": "held"}, {"image": png()}))
    assert len(await bot.jobs()) == 3
    return bot


def _result(bot: Any, job: Any) -> dict[str, Any]:
    message: dict[str, Any] = bot.fake.messages[job.result_messages[-1]]
    return message


async def test_slash_command(limited: Any) -> None:
    bot = limited
    assert RUNNING in await _said(bot, bot.slash("img2img", {"prompt": "x"}, {"image": png()}))
    assert len(await bot.jobs()) == 3


@pytest.mark.parametrize("kind", ["reroll", "input", "prompt"])
async def test_result_buttons(limited: Any, kind: str) -> None:
    bot = limited
    job = bot.caption if kind == "prompt" else bot.base
    token = bot.click(_result(bot, job), f"sdbot:{kind}:{job.id}")  # one image: no index
    assert RUNNING in await _said(bot, token)
    assert len(await bot.jobs()) == 3


async def test_edit_modal(limited: Any) -> None:
    bot = limited
    base = bot.base
    modal = await _answer(bot, bot.click(_result(bot, base), f"sdbot:edit:{base.id}"))
    assert modal["type"] == 9
    values = {"prompt": "a lion", "negative": "", "strength": "0.4", "seed": "9"}
    assert RUNNING in await _said(bot, bot.submit(f"sdbot:edit:{base.id}", values))
    assert len(await bot.jobs()) == 3


async def test_interrogate_image_menu(limited: Any) -> None:
    bot = limited
    token = bot.menu("Interrogate image", _message(bot, {"photo.png": png()}))
    assert RUNNING in await _said(bot, token)
    assert len(await bot.jobs()) == 3


async def test_img2img_from_this_image_form(limited: Any) -> None:
    bot = limited
    form = await _answer(bot, bot.menu("img2img from this image", _message(bot, {"a.png": png()})))
    assert form["type"] == 9
    submitted = bot.submit(form["data"]["custom_id"], {"prompt": "a dog"})
    assert RUNNING in await _said(bot, submitted)
    assert len(await bot.jobs()) == 3


async def test_thread_reply(limited: Any) -> None:
    bot = limited
    thread = bot.base.thread.thread
    bot.say("again", channel=thread)
    await bot.fake.wait_for(
        lambda: any(RUNNING in m["content"] for m in bot.fake.in_channel(thread))
    )
    assert len(await bot.jobs()) == 3


async def test_preview_results_say_so_in_the_embed(bot: Any) -> None:
    base = await _finished(bot, "img2img", prompt="a cat")
    [embed] = _result(bot, base)["embeds"]
    assert PREVIEW_NOTICE in embed["footer"]["text"]
