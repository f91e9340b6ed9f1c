"""The message context menus "Interrogate image" and "img2img from this image".

The target message is someone else's, as Discord resolves it for the command: its content is
empty (no message-content intent) but its attachments are there.
"""

from __future__ import annotations

from typing import Any

from scenario_kit import png

from bot.model import JobState


def _target(bot: Any, files: dict[str, bytes]) -> dict[str, Any]:
    return {
        "id": str(bot.fake.snowflake()),
        "channel_id": str(bot.channel),
        "author": bot.bob.payload(),
        "content": "",
        "attachments": [bot.fake.upload(name, data) for name, data in files.items()],
        "embeds": [],
        "mentions": [],
        "mention_roles": [],
        "pinned": False,
        "tts": False,
        "mention_everyone": False,
        "timestamp": "2026-01-01T00:00:00+00:00",
        "edited_timestamp": None,
        "type": 0,
        "flags": 0,
    }


async def test_interrogate_image_menu(harness: Any) -> None:
    harness.message_content = False  # menus do not need the intent
    bot = await harness.start()
    picture = png(80, 60, color=(9, 99, 199))
    token = bot.menu("Interrogate image", _target(bot, {"photo.png": picture}))
    first = await bot.answered(token)
    assert first.json == {"type": 5, "data": {"flags": bot.ephemeral}}
    [job] = await bot.jobs()
    assert job.command == "interrogate" and job.state is JobState.SUCCEED and job.caption
    assert job.caller.user == str(bot.alice.id)  # the one who used the menu asked
    [stored] = [i for i in await bot.app.store.images(job.id) if i.slot == "image"]
    assert stored.data == picture
    [result] = bot.results(job.thread.thread)
    assert result["embeds"][0]["description"] == job.caption


async def test_img2img_from_this_image_opens_a_form_and_runs_it(bot: Any) -> None:
    picture = png(80, 60, color=(200, 30, 60))
    token = bot.menu("img2img from this image", _target(bot, {"photo.png": picture}))
    modal = await bot.answered(token)
    assert modal.json["type"] == 9
    form = modal.json["data"]
    fields = [row["component"]["custom_id"] for row in form["components"]]
    assert fields == ["prompt", "negative", "strength", "seed", "options"]  # at most 5
    values = {"prompt": 'a "dog"', "strength": "0.5", "options": "steps=5 size=64x64"}
    first = await bot.answered(bot.submit(form["custom_id"], values))
    assert first.json["type"] == 5
    [job] = await bot.jobs()
    params = job.params
    assert job.command == "img2img" and job.state is JobState.SUCCEED
    assert (params.prompt, params.strength, params.steps, params.width) == ('a "dog"', 0.5, 5, 64)
    [stored] = [i for i in await bot.app.store.images(job.id) if i.slot == "image"]
    assert stored.data == picture
    # The form is used up; a second submit (or one after a restart) is told to start again.
    again = await bot.answered(bot.submit(form["custom_id"], values))
    assert again.json["data"]["flags"] == bot.ephemeral
    assert "expired" in again.json["data"]["content"]


async def test_form_options_are_checked_like_text(bot: Any) -> None:
    token = bot.menu("img2img from this image", _target(bot, {"a.png": png()}))
    form = (await bot.answered(token)).json["data"]
    bad = await bot.answered(bot.submit(form["custom_id"], {"options": "stepz=5"}))
    assert bad.json["type"] == 4 and bad.json["data"]["flags"] == bot.ephemeral
    assert "did you mean `steps`" in bad.json["data"]["content"]
    assert await bot.jobs() == []


async def test_menus_on_a_message_without_an_image_are_refused(bot: Any) -> None:
    for menu in ("Interrogate image", "img2img from this image"):
        answer = await bot.answered(bot.menu(menu, _target(bot, {})))
        assert answer.json["type"] == 4 and answer.json["data"]["flags"] == bot.ephemeral
        assert "no image attachment" in answer.json["data"]["content"]
    assert await bot.jobs() == []
