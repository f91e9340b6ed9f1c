"""Buttons (DynamicItem, routed by custom_id), the Edit modal, and who may press what.

Every button is pressed on a message the bot posted, as Discord sends the click (the message
payload with its components), by a client that may have been restarted since.
"""

from __future__ import annotations

from typing import Any

import pytest
from scenario_kit import png

from bot.model import Delivery, JobState


async def _finished(bot: Any, command: str = "img2img", **options: Any) -> Any:
    token = bot.slash(command, {"prompt": "a cat", "seed": 7, **options}, {"image": png()})
    await bot.answered(token)
    return (await bot.jobs())[-1]


def _result(bot: Any, job: Any) -> dict[str, Any]:
    message: dict[str, Any] = bot.fake.messages[job.result_messages[-1]]
    return message


def _modal_fields(callback: Any) -> dict[str, str | None]:
    rows = callback.json["data"]["components"]
    return {row["component"]["custom_id"]: row["component"].get("value") for row in rows}


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "after-restart"])
async def test_every_result_button(bot: Any, restart: bool) -> None:
    base = await _finished(bot, count=2)
    if restart:
        await bot.restart()
    result = _result(bot, base)
    thread = base.thread.thread

    reroll = await bot.answered(bot.click(result, f"sdbot:reroll:{base.id}"))
    assert reroll.json == {"type": 5, "data": {"flags": bot.ephemeral}}
    use = await bot.answered(bot.click(result, f"sdbot:input:{base.id}:2"))
    assert use.json["type"] == 5
    *_, rerolled, used = await bot.jobs()
    assert rerolled.parent_id == base.id and rerolled.thread == base.thread
    assert rerolled.params.prompt == "a cat" and rerolled.params.seed != base.params.seed
    [chosen] = [i for i in await bot.app.store.images(used.id) if i.slot == "image"]
    assert chosen.data == (await bot.app.store.images(base.id, "result"))[1].data
    assert used.params.seed == base.params.seed
    for job in (rerolled, used):
        assert job.state is JobState.SUCCEED and job.delivery is Delivery.DONE
        assert bot.fake.messages[job.status_message]["channel_id"] == thread
        assert len(bot.results(thread)) >= 2

    edit = await bot.answered(bot.click(result, f"sdbot:edit:{base.id}"))
    assert edit.json["type"] == 9 and edit.json["data"]["custom_id"] == f"sdbot:edit:{base.id}"
    assert _modal_fields(edit) == {
        "prompt": "a cat",
        "negative": None,
        "strength": "0.75",
        "seed": "7",
    }

    delete = await bot.answered(bot.click(result, f"sdbot:delete:{base.id}"))
    assert delete.json["type"] in (4, 5)
    for message in base.result_messages:
        assert message not in bot.fake.messages
    assert await bot.app.store.images(base.id, "result") == []


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "after-restart"])
async def test_the_edit_modal_makes_a_new_job_in_the_thread(bot: Any, restart: bool) -> None:
    base = await _finished(bot)
    await bot.answered(bot.click(_result(bot, base), f"sdbot:edit:{base.id}"))
    if restart:
        # discord.py forgets the modal; the submit is routed by its custom_id alone.
        await bot.restart()
    values = {"prompt": "a lion", "negative": "blur", "strength": "0.4", "seed": "9"}
    submit = await bot.answered(bot.submit(f"sdbot:edit:{base.id}", values))
    assert submit.json["type"] == 5
    edited = (await bot.jobs())[-1]
    assert edited.parent_id == base.id and edited.thread == base.thread
    params = edited.params
    assert (params.prompt, params.negative, params.strength, params.seed) == (
        "a lion",
        "blur",
        0.4,
        9,
    )
    bad = await bot.answered(bot.submit(f"sdbot:edit:{base.id}", {"strength": "7"}))
    assert bad.json["type"] == 4 and bad.json["data"]["flags"] == bot.ephemeral
    assert "between 0 and 1" in bad.json["data"]["content"]
    blank = await bot.answered(bot.submit(f"sdbot:edit:{base.id}", {"prompt": "", "seed": ""}))
    assert blank.json["type"] == 5
    emptied = (await bot.jobs())[-1]
    assert emptied.params.prompt == "" and emptied.params.seed != 9


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "after-restart"])
async def test_cancel_button_on_the_status_message(bot: Any, restart: bool) -> None:
    bot.backend.gate.clear()
    token = bot.slash("img2img", {"prompt": "slow"}, {"image": png()})
    # Submitted (the status is edited after the job's thread and ids are stored), then held.
    await bot.fake.wait_for(lambda: bool(bot.fake.calls("PATCH", rf"/channels/{bot.channel}/")))
    assert bot.fake.answers_to(token)
    [job] = await bot.jobs()
    status = bot.fake.messages[job.status_message]
    assert [c["custom_id"] for row in status["components"] for c in row["components"]] == [
        f"sdbot:cancel:{job.id}"
    ]
    if restart:
        await bot.restart(settle=False)  # the job is resumed, still in flight
        bot.backend.gate.clear()
    stranger = bot.click(status, f"sdbot:cancel:{job.id}", user=bot.bob)
    await bot.fake.wait_for(lambda: bool(bot.fake.callbacks(stranger)))
    refused = bot.fake.callbacks(stranger)[0]
    assert refused.json["data"]["flags"] == bot.ephemeral
    assert "among the jobs you can see" in refused.json["data"]["content"]
    cancel = bot.click(status, f"sdbot:cancel:{job.id}")
    await bot.fake.wait_for(lambda: bool(bot.fake.callbacks(cancel)))
    bot.backend.gate.set()
    await bot.settle()
    answer = bot.fake.callbacks(cancel)[0]
    assert answer.json["type"] == 4 and "cancelled" in answer.json["data"]["content"]
    job = await bot.app.store.get(job.id)
    assert job.state is JobState.CANCELLED
    status = bot.fake.messages[job.status_message]
    assert "cancelled" in status["content"] and status["components"] == []
    assert bot.results(job.thread.thread) == []  # a cancelled job never posts a result


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "after-restart"])
async def test_use_as_prompt_on_an_interrogate_result(bot: Any, restart: bool) -> None:
    token = bot.slash("interrogate", {}, {"image": png()})
    await bot.answered(token)
    [caption] = await bot.jobs()
    if restart:
        await bot.restart()
    await bot.answered(bot.click(_result(bot, caption), f"sdbot:prompt:{caption.id}"))
    made = (await bot.jobs())[-1]
    assert made.command == "img2img" and made.params.prompt == caption.caption
    assert made.thread == caption.thread and made.state is JobState.SUCCEED


async def test_permission_refusals(bot: Any) -> None:
    base = await _finished(bot)
    result = _result(bot, base)

    async def refusal(token: str) -> str:
        answer = await bot.answered(token)
        assert answer.json["type"] == 4 and answer.json["data"]["flags"] == bot.ephemeral
        return str(answer.json["data"]["content"])

    # Someone else's result: no delete, no edit (no modal opens), no re-roll.
    for kind in ("delete", "edit", "reroll"):
        text = await refusal(bot.click(result, f"sdbot:{kind}:{base.id}", user=bot.bob))
        assert "among the jobs you can see" in text
    assert all(m in bot.fake.messages for m in base.result_messages)
    # Non-admins cannot list others' jobs; jobs never cross servers.
    assert "only admins" in await refusal(
        bot.slash("jobs", {"user": str(bot.alice.id)}, user=bot.bob)
    )
    other = bot.slash("job", {"id": base.id}, guild=bot.other_guild, channel=bot.other_channel)
    assert "among the jobs you can see" in await refusal(other)
    assert len(await bot.jobs()) == 1
    # An admin (Manage Server) may see and delete anyone's result in the server.
    listed = await bot.answered(bot.slash("jobs", {"user": str(bot.alice.id)}, user=bot.boss))
    assert base.id in listed.json["data"]["content"]
    await bot.answered(bot.click(result, f"sdbot:delete:{base.id}", user=bot.boss))
    assert not any(m in bot.fake.messages for m in base.result_messages)


async def test_callers_carry_admin_flag_roles_and_server(bot: Any) -> None:
    await bot.answered(bot.slash("img2img", {"prompt": "x"}, {"image": png()}, user=bot.boss))
    [job] = await bot.jobs()
    caller = job.caller
    assert (caller.server, caller.user, caller.is_admin) == (str(bot.guild), str(bot.boss.id), True)
    assert caller.roles == ("9100",) and caller.user_name == "boss"
    assert caller.conversation.channel == str(bot.channel) and caller.conversation.thread is None


async def test_allow_lists_of_the_core_see_discord_roles_and_servers(harness: Any) -> None:
    bot = await harness.start(
        allowed_roles=(str(harness.artist_role),), allowed_servers=(str(harness.guild),)
    )
    refused = await bot.answered(bot.slash("img2img", {"prompt": "x"}, {"image": png()}))
    assert refused.json["data"]["flags"] == bot.ephemeral
    assert "one of the roles" in refused.json["data"]["content"]
    elsewhere = bot.slash(
        "img2img",
        {},
        {"image": png()},
        user=bot.carol,
        guild=bot.other_guild,
        channel=bot.other_channel,
    )
    assert "not enabled in this server" in (await bot.answered(elsewhere)).json["data"]["content"]
    assert await bot.jobs() == []
    await bot.answered(bot.slash("img2img", {"prompt": "x"}, {"image": png()}, user=bot.carol))
    [job] = await bot.jobs()
    assert job.caller.roles == (str(bot.artist_role),) and job.state is JobState.SUCCEED
