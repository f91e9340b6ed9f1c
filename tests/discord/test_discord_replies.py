"""Re-generation by replying in a job's thread (SPEC §3.2), as gateway messages.

One test per row of the table, plus who is heard (requester, admin; not others, not `//`
comments), replies to a specific result, and the rules without the message-content intent.
"""

from __future__ import annotations

from typing import Any

import pytest
from scenario_kit import mask_png, png

from bot.model import JobState


async def _base(bot: Any, command: str = "img2img", files: Any = None, **options: Any) -> Any:
    token = bot.slash(command, {"prompt": "a cat", "seed": 5, **options}, files or {"image": png()})
    await bot.answered(token)
    return (await bot.jobs())[-1]


async def _reply(bot: Any, base: Any, text: str, **kwargs: Any) -> Any:
    """Say `text` in the base job's thread; the job it made, or None."""
    before = {j.id for j in await bot.jobs()}
    bot.say(text, channel=base.thread.thread, **kwargs)
    await bot.settle()
    made = [j for j in await bot.jobs() if j.id not in before]
    assert len(made) <= 1
    if not made:
        return None
    job = made[0]
    assert job.thread == base.thread and job.state is JobState.SUCCEED
    return job


async def test_only_options_keep_prompt_inputs_and_seed(bot: Any) -> None:
    base = await _base(bot)
    job = await _reply(bot, base, "steps=3 cfg=5")
    assert job.parent_id == base.id
    assert (job.params.prompt, job.params.seed, job.params.steps, job.params.cfg) == (
        "a cat",
        5,
        3,
        5.0,
    )
    inputs = await bot.app.store.images(job.id, "image")
    assert inputs[0].data == (await bot.app.store.images(base.id, "image"))[0].data
    seeded = await _reply(bot, base, "seed=11")
    assert seeded.params.seed == 11


async def test_free_text_replaces_the_prompt(bot: Any) -> None:
    base = await _base(bot)
    job = await _reply(bot, base, "a dog in the rain steps=4")
    assert (job.params.prompt, job.params.steps, job.params.seed) == ("a dog in the rain", 4, 5)


async def test_plus_text_is_appended(bot: Any) -> None:
    base = await _base(bot)
    job = await _reply(bot, base, "+ at night")
    assert job.params.prompt == "a cat, at night"


async def test_again_picks_a_new_seed(bot: Any) -> None:
    base = await _base(bot)
    job = await _reply(bot, base, "again steps=6")
    assert job.params.seed != 5 and job.params.steps == 6 and job.params.prompt == "a cat"


async def test_an_attachment_replaces_the_image_and_a_second_the_mask(bot: Any) -> None:
    base = await _base(bot, "inpaint-upload", {"image": png(), "mask": mask_png()})
    new_image, new_mask = png(128, 96), mask_png(128, 96, (5, 5, 60, 60))
    job = await _reply(bot, base, "", files={"new.png": new_image, "new-mask.png": new_mask})
    inputs = {i.slot: i.data for i in await bot.app.store.images(job.id) if i.slot != "result"}
    assert inputs == {"image": new_image, "mask": new_mask}
    # One attachment replaces only the image; the mask comes from the thread's latest job.
    only_image = await _reply(bot, base, "", files={"other.png": png(128, 96, (1, 2, 3))})
    inputs = {i.slot: i.data for i in await bot.app.store.images(only_image.id)}
    assert inputs["image"] == png(128, 96, (1, 2, 3)) and inputs["mask"] == new_mask


async def test_input_result_uses_the_base_jobs_result(bot: Any) -> None:
    base = await _base(bot, count=2)
    results = await bot.app.store.images(base.id, "result")
    second = await _reply(bot, base, "input=result:2")
    [image] = await bot.app.store.images(second.id, "image")
    assert image.data == results[1].data
    # `input=result` (no number) is the first image of the thread's latest job, `second`.
    first = await _reply(bot, base, "input=result")
    [image] = await bot.app.store.images(first.id, "image")
    assert image.data == (await bot.app.store.images(second.id, "result"))[0].data


async def test_a_bad_option_is_answered_in_the_thread_and_makes_no_job(bot: Any) -> None:
    base = await _base(bot)
    said = bot.say("stepz=3", channel=base.thread.thread)
    await bot.settle()
    assert len(await bot.jobs()) == 1
    [answer] = [
        r
        for r in bot.fake.calls("POST", rf"/channels/{base.thread.thread}/messages$")
        if not r.files
    ]
    assert "did you mean `steps`" in answer.json["content"]
    assert str(answer.json["message_reference"]["message_id"]) == said["id"]
    assert answer.json["allowed_mentions"] == {"parse": [], "replied_user": False}


async def test_who_is_heard(bot: Any) -> None:
    base = await _base(bot)
    assert await _reply(bot, base, "steps=3", user=bot.bob) is None  # someone else: ignored
    assert await _reply(bot, base, "// nice one") is None  # a comment
    assert bot.fake.calls("POST", rf"/channels/{base.thread.thread}/messages$")[1:] == []
    by_admin = await _reply(bot, base, "steps=4", user=bot.boss)
    assert by_admin is not None and by_admin.caller.user == str(bot.boss.id)


async def test_a_reply_to_a_specific_result_picks_that_job(bot: Any) -> None:
    base = await _base(bot)
    later = await _reply(bot, base, "a second picture")
    target = bot.fake.messages[base.result_messages[0]]
    job = await _reply(bot, base, "+ at dusk", reply_to=target)
    assert job.parent_id == base.id and job.params.prompt == "a cat, at dusk"
    plain = await _reply(bot, base, "+ again later")
    assert plain.parent_id == job.id != later.id


async def test_replies_keep_working_after_a_restart(bot: Any) -> None:
    base = await _base(bot)
    await bot.restart()
    job = await _reply(bot, base, "steps=2")
    assert job.params.steps == 2 and job.parent_id == base.id
    looked_up = bot.fake.calls("GET", rf"/channels/{base.thread.thread}$")
    assert looked_up  # the thread's parent channel was looked up once, then cached


@pytest.mark.parametrize("mention", [False, True], ids=["plain", "mention"])
async def test_without_the_message_content_intent_only_mentions_count(
    harness: Any, mention: bool
) -> None:
    harness.message_content = False
    bot = await harness.start()
    assert bot.adapter.message_content is False
    base = await _base(bot)
    job = await _reply(bot, base, "steps=3", mention=mention)
    if mention:
        assert job is not None and job.params.steps == 3
    else:
        assert job is None


async def test_messages_outside_job_threads_are_not_requests(bot: Any) -> None:
    await _base(bot)
    bot.say("steps=3", channel=bot.channel)  # the channel itself, not a thread
    bot.say("steps=3", channel="6100")  # some other thread without jobs
    await bot.settle()
    assert len(await bot.jobs()) == 1


async def test_replies_in_a_dm(bot: Any) -> None:
    token = bot.slash(
        "img2img", {"prompt": "a cat", "seed": 5}, {"image": png()}, guild=None, channel=8000
    )
    await bot.answered(token)
    [base] = await bot.jobs()
    bot.say("steps=2", channel=8000, guild=None)
    await bot.settle()
    job = (await bot.jobs())[-1]
    assert job.parent_id == base.id and job.params.steps == 2
    assert job.caller.server == f"dm:{bot.alice.id}" and job.thread == base.thread
