"""Re-generation by replying in a job's Slack thread, one test per row of SPEC §3.2, plus who
may reply: the requester and admins, never anyone else; `//` comments and other threads are
left alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import mask_png, png, size_of

from bot.model import JobState

if TYPE_CHECKING:
    from collections.abc import Iterable

    from bot.model import Job
    from tests.slack.conftest import SlackRig


async def _base(rig: SlackRig, text: str = "img2img a cat seed=5 steps=6") -> Job:
    await rig.post(f"<@UBOT> {text}", files=[rig.fake.add_file("cat.png", png(96, 64))])
    await rig.settle()
    [job] = await rig.jobs()
    assert job.state is JobState.SUCCEED, job.error
    return job


async def _reply(
    rig: SlackRig,
    base: Job,
    text: str,
    *,
    files: Iterable[dict[str, Any]] = (),
    user: str = "U1",
) -> Job | None:
    """Reply in the base job's thread; return the new job, if one was made."""
    assert base.thread is not None and base.thread.thread is not None
    before = {j.id for j in await rig.jobs()}
    await rig.post(text, thread_ts=base.thread.thread, files=files, user=user)
    await rig.settle()
    new = [j for j in await rig.jobs() if j.id not in before]
    assert len(new) <= 1
    return new[0] if new else None


async def test_options_only_keep_prompt_inputs_and_seed(any_rig: SlackRig) -> None:
    rig = any_rig
    base = await _base(rig)
    new = await _reply(rig, base, "steps=3 cfg=5")
    assert new is not None and new.params is not None and base.params is not None
    assert (new.params.prompt, new.params.seed) == ("a cat", 5)
    assert (new.params.steps, new.params.cfg) == (3, 5.0)
    assert new.parent_id == base.id and new.thread == base.thread
    base_image = [i for i in await rig.app.store.images(base.id) if i.slot == "image"]
    new_image = [i for i in await rig.app.store.images(new.id) if i.slot == "image"]
    assert new_image[0].data == base_image[0].data
    # Announced and delivered in the same thread.
    assert base.thread is not None and base.thread.thread is not None
    assert len(rig.results_in("C1", base.thread.thread)) == 2
    assert rig.status_of(new.id).thread_ts == base.thread.thread


async def test_free_text_replaces_the_prompt(rig: SlackRig) -> None:
    base = await _base(rig)
    new = await _reply(rig, base, "a dog in the rain")
    assert new is not None and new.params is not None
    assert (new.params.prompt, new.params.seed, new.params.steps) == ("a dog in the rain", 5, 6)


async def test_plus_appends_to_the_prompt(rig: SlackRig) -> None:
    base = await _base(rig)
    new = await _reply(rig, base, "+ at night &amp; in fog")
    assert new is not None and new.params is not None
    assert new.params.prompt == "a cat, at night & in fog"


async def test_again_picks_a_new_seed(rig: SlackRig) -> None:
    base = await _base(rig)
    new = await _reply(rig, base, "again steps=4")
    assert new is not None and new.params is not None
    assert new.params.seed not in (5, -1) and new.params.steps == 4
    assert new.params.prompt == "a cat"


async def test_an_attachment_replaces_the_image(rig: SlackRig) -> None:
    base = await _base(rig)
    new = await _reply(rig, base, "", files=[rig.fake.add_file("bigger.png", png(128, 96))])
    assert new is not None and new.state is JobState.SUCCEED, new and new.error
    [image] = [i for i in await rig.app.store.images(new.id) if i.slot == "image"]
    assert image.name == "bigger.png" and size_of(image.data) == (128, 96)


async def test_two_attachments_replace_image_and_mask_of_an_inpaint_job(rig: SlackRig) -> None:
    await rig.post(
        "<@UBOT> inpaint-upload a hat",
        files=[rig.fake.add_file("o.png", png()), rig.fake.add_file("o-mask.png", mask_png())],
    )
    await rig.settle()
    [base] = await rig.jobs()
    assert base.state is JobState.SUCCEED, base.error
    new = await _reply(
        rig,
        base,
        "a crown",
        files=[
            rig.fake.add_file("new-mask.png", mask_png(128, 96, (0, 0, 50, 50))),
            rig.fake.add_file("new.png", png(128, 96)),
        ],
    )
    assert new is not None and new.state is JobState.SUCCEED, new and new.error
    inputs = {i.slot: i.name for i in await rig.app.store.images(new.id) if i.slot != "result"}
    assert inputs == {"image": "new.png", "mask": "new-mask.png"}


@pytest.mark.parametrize(("text", "index"), [("input=result", 1), ("input=result:2", 2)])
async def test_input_result_uses_a_result_image(rig: SlackRig, text: str, index: int) -> None:
    base = await _base(rig, "img2img a cat seed=5 count=2")
    new = await _reply(rig, base, text)
    assert new is not None and new.state is JobState.SUCCEED, new and new.error
    [image] = [i for i in await rig.app.store.images(new.id) if i.slot == "image"]
    assert image.data == (await rig.app.store.images(base.id, "result"))[index - 1].data


async def test_a_reply_that_does_not_parse_is_answered_privately(rig: SlackRig) -> None:
    base = await _base(rig)
    assert await _reply(rig, base, "stepz=3") is None
    [private] = rig.fake.ephemerals
    assert base.thread is not None
    assert private["user"] == "U1" and private["thread_ts"] == base.thread.thread
    assert "did you mean `steps`" in private["text"]


async def test_replies_from_others_and_comments_are_ignored_admins_are_not(
    any_rig: SlackRig,
) -> None:
    rig = any_rig
    base = await _base(rig)
    assert await _reply(rig, base, "steps=3", user="U2") is None
    assert await _reply(rig, base, "// lovely, keep it") is None
    assert await _reply(rig, base, "stepz=3", user="U2") is None  # not even an error for them
    assert rig.fake.ephemerals == []
    by_admin = await _reply(rig, base, "+ wearing a hat", user="UADMIN")
    assert by_admin is not None and by_admin.params is not None
    assert by_admin.params.prompt == "a cat, wearing a hat"
    assert by_admin.caller.user == "UADMIN"


async def test_a_reply_builds_on_the_threads_latest_job(rig: SlackRig) -> None:
    base = await _base(rig)
    second = await _reply(rig, base, "a dog")
    third = await _reply(rig, base, "+ running")
    assert second is not None and third is not None and third.params is not None
    assert third.parent_id == second.id and third.params.prompt == "a dog, running"


async def test_messages_in_other_threads_are_left_alone(rig: SlackRig) -> None:
    parent = await rig.post("just a conversation")
    await rig.post("steps=3", thread_ts=parent.ts)
    await rig.post("a reply", thread_ts=parent.ts)
    await rig.settle()
    assert await rig.jobs() == [] and rig.fake.ephemerals == []
    assert rig.fake.bot_messages() == []


async def test_a_mention_with_a_command_in_a_job_thread_is_a_new_command(rig: SlackRig) -> None:
    base = await _base(rig)
    # A mention without a command is still a reply …
    again = await _reply(rig, base, "<@UBOT> + with a bow")
    assert again is not None and again.params is not None
    assert again.parent_id == base.id and again.params.prompt == "a cat, with a bow"
    # … and with a command, a new job of its own in the same thread.
    new = await _reply(
        rig,
        base,
        "<@UBOT> interrogate",
        files=[rig.fake.add_file("other.png", png(64, 64))],
    )
    assert new is not None and new.command == "interrogate" and new.parent_id is None
    assert new.thread == base.thread


async def test_a_mention_in_a_thread_without_a_job_is_a_command(rig: SlackRig) -> None:
    parent = await rig.post("just a conversation")
    await rig.post("<@UBOT> hello there", thread_ts=parent.ts)
    await rig.settle()
    [private] = rig.fake.ephemerals
    assert "unknown command `hello`" in private["text"]
    assert private["thread_ts"] == parent.ts
