"""Slack as it really behaves (issue 12): a channel the bot is not in, Slack Connect files,
the `response_url` budget, 5xx after the work was done, `ok: false, ratelimited` with HTTP
200, flaky file hosts, text cuts — and a seeded fault run over every posting route."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from scenario_kit import png

from adapters.slack.blocks import sections
from adapters.slack.convert import truncate
from bot.ids import new_job_id
from bot.model import Caller, Conversation, Delivery, Job, JobState, Platform
from commands.options import GenerateOptions

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

    from tests.slack.conftest import Message, SlackRig


def _crashes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]


def _delivered_once(rig: SlackRig, job: Job) -> None:
    """The job succeeded and its thread holds one status, one upload and one result."""
    assert job.state is JobState.SUCCEED, job.error
    assert job.delivery is Delivery.DONE
    assert job.thread is not None and job.thread.thread is not None
    assert len(rig.results_in("C1", job.thread.thread)) == 1, job.id
    assert len(rig.uploads_in("C1", job.thread.thread)) == 1, job.id
    statuses = [m for m in rig.fake.bot_messages("C1") if f"`{job.id}`" in m.text]
    assert len([m for m in statuses if m.thread_ts is None]) == 1, job.id


async def _one_job(rig: SlackRig) -> None:
    await rig.post("<@UBOT> img2img a cat count=2", files=[rig.fake.add_file("a.png", png())])
    await rig.settle()
    [job] = await rig.jobs()
    _delivered_once(rig, job)


async def _outside(rig: SlackRig) -> Message:
    """A message with an image in C9, a channel the bot is not a member of."""
    rig.fake.outside.add("C9")
    file = rig.fake.add_file("cat.png", png())
    return await rig.post("look", files=[file], channel="C9", events=())


def _is_result(params: dict[str, object]) -> bool:
    blocks = params.get("blocks") or []
    return isinstance(blocks, list) and any(b.get("type") == "context" for b in blocks)


# -- bot not in the channel -------------------------------------------------------------------


async def test_a_shortcut_where_the_bot_is_not_a_member_tells_the_user_privately(
    rig: SlackRig, caplog: pytest.LogCaptureFixture
) -> None:
    target = await _outside(rig)
    await rig.shortcut("sdbot_interrogate", target)
    await rig.settle()
    [job] = await rig.jobs()
    # The job ended cleanly, with the reason, and nothing is left to post.
    assert job.state is JobState.FAILED and job.delivery is Delivery.DONE
    assert job.error is not None and "/invite @sdbot" in job.error
    # The user was told through the shortcut's response_url, privately.
    [notice] = rig.fake.responses
    assert notice["response_type"] == "ephemeral"
    assert job.id in notice["text"] and "/invite @sdbot" in notice["text"]
    assert not rig.fake.bot_messages("C9")
    assert _crashes(caplog) == []


async def test_a_slash_job_in_a_channel_without_the_bot_ends_cleanly(
    rig: SlackRig, caplog: pytest.LogCaptureFixture
) -> None:
    # A reply job from a mention in a thread the bot was then removed from: the driver must
    # end the job, and the user hears of it in a direct message (no response_url there).
    await rig.post("<@UBOT> img2img a cat", files=[rig.fake.add_file("cat.png", png())])
    await rig.settle()
    [first] = await rig.jobs()
    assert first.thread is not None and first.thread.thread is not None
    rig.fake.outside.add("C1")
    await rig.post("+ with a hat", thread_ts=first.thread.thread, events=("message",))
    await rig.settle()
    second = (await rig.jobs())[-1]
    assert second.id != first.id
    assert second.state is JobState.FAILED and second.delivery is Delivery.DONE
    dms = rig.fake.bot_messages("U1")
    assert dms and second.id in dms[-1].text and "/invite" in dms[-1].text
    assert _crashes(caplog) == []


async def test_a_modal_job_where_the_bot_is_not_a_member_uses_the_shortcuts_response_url(
    rig: SlackRig,
) -> None:
    target = await _outside(rig)
    await rig.shortcut("sdbot_img2img", target)
    await rig.settle()
    [view] = rig.fake.views
    await rig.submit(view, {"prompt": "a watercolor"})
    await rig.settle()
    [job] = await rig.jobs()
    assert job.state is JobState.FAILED and job.delivery is Delivery.DONE
    [notice] = rig.fake.responses
    assert notice["response_type"] == "ephemeral" and "/invite @sdbot" in notice["text"]


# -- Slack Connect files ----------------------------------------------------------------------


async def test_slack_connect_files_are_resolved_with_files_info(rig: SlackRig) -> None:
    stub = rig.fake.add_connect_file("cat.png", png())
    await rig.post("<@UBOT> img2img a cat", files=[stub])
    await rig.settle()
    [job] = await rig.jobs()
    assert job.state is JobState.SUCCEED, job.error
    assert [p["file"] for p in rig.fake.called("files.info")] == [stub["id"]]
    assert job.attachments[0].name == "cat.png"


async def test_a_slack_connect_file_in_a_shortcut_is_resolved_too(rig: SlackRig) -> None:
    stub = rig.fake.add_connect_file("cat.png", png())
    target = await rig.post("look", files=[stub], events=())
    await rig.shortcut("sdbot_interrogate", target)
    await rig.settle()
    [job] = await rig.jobs()
    assert job.state is JobState.SUCCEED, job.error


# -- response_url budget ----------------------------------------------------------------------


async def test_a_long_answer_never_spends_more_than_the_response_url_budget(
    rig: SlackRig,
) -> None:
    caller = Caller(Platform("slack"), "T1", "U1", Conversation("C1", None), user_name="u1")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for n in range(360):  # 8 pages of 50 lines: 7 response_url uses before the fix
        job = Job(
            id=new_job_id(),
            command="img2img",
            caller=caller,
            state=JobState.SUCCEED,
            created_at=start + timedelta(seconds=n),
            options=GenerateOptions(),
            delivery=Delivery.DONE,
        )
        await rig.app.store.insert(job)
        ids.append(job.id)
    answer = await rig.slash("jobs all=true")
    await rig.settle()
    assert all(uses <= 5 for uses in rig.fake.respond_uses.values())
    shown = " ".join(
        [str(answer.body.get("text", ""))]
        + [r["text"] for r in rig.fake.responses]
        + [m.text for m in rig.fake.bot_messages("U1")]
    )
    missing = [i for i in ids if i not in shown]
    assert missing == []
    # It went as one direct message, and the user was told where.
    assert len(rig.fake.bot_messages("U1")) == 1
    assert "direct messages" in shown


async def test_a_short_answer_is_still_the_ack_itself(rig: SlackRig) -> None:
    answer = await rig.slash("help")
    await rig.settle()
    assert "img2img" in answer.body["text"] and rig.fake.respond_uses == {}


# -- no duplicates on 5xx after success -------------------------------------------------------


@pytest.mark.parametrize("kind", ["500-after", "500-before"])
async def test_a_500_on_the_result_posts_it_exactly_once(rig: SlackRig, kind: str) -> None:
    rig.fake.overload_next("chat.postMessage", kind, when=_is_result)
    rig.fake.overload_next("files.completeUploadExternal", kind)
    await _one_job(rig)
    assert rig.fake.called("files.info")  # the upload was checked before it was sent again


async def test_a_500_after_the_status_message_does_not_start_two_threads(rig: SlackRig) -> None:
    rig.fake.overload_next("chat.postMessage", "500-after")
    await _one_job(rig)


# -- ratelimited with HTTP 200, flaky downloads -----------------------------------------------


async def test_ok_false_ratelimited_is_retried_like_a_429(
    rig: SlackRig, caplog: pytest.LogCaptureFixture
) -> None:
    for route in ("chat.postMessage", "chat.postMessage", "files.completeUploadExternal"):
        rig.fake.overload_next(route, "ratelimited")
    await _one_job(rig)
    assert _crashes(caplog) == []


async def test_file_downloads_are_retried_on_429_and_5xx(rig: SlackRig) -> None:
    rig.fake.overload_next("file", "429")
    rig.fake.overload_next("file", "500-before")
    rig.fake.fail_next("file", 503)
    await rig.post("<@UBOT> img2img a cat", files=[rig.fake.add_file("a.png", png())])
    await rig.settle()
    [job] = await rig.jobs()
    assert job.state is JobState.SUCCEED, job.error
    assert len(rig.fake.file_requests) == 4


# -- text cuts --------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", range(2, 40))
def test_cuts_never_split_an_entity_or_a_token(limit: int) -> None:
    text = "a &lt;b&gt; &amp; <@U123> then <https://example.com/x|a link> end"
    cut = truncate(text, limit)
    assert len(cut) <= limit
    body = cut.removesuffix("…")
    assert text.startswith(body)
    # Every `&` starts a whole entity, every `<` has its `>`.
    for n, char in enumerate(body):
        if char == "&":
            assert body[n:].split(";")[0] + ";" in ("&lt;", "&gt;", "&amp;")
            assert ";" in body[n:]
    assert body.count("<") == body.count(">")


def test_sections_never_split_an_entity() -> None:
    text = "x" * 2998 + "&lt;" + "y" * 10
    first, second = sections(text)
    assert first["text"]["text"] == "x" * 2998
    assert second["text"]["text"].startswith("&lt;")


# -- the fault run ----------------------------------------------------------------------------

FAULT_ROUTES = frozenset(
    {
        "chat.postMessage",
        "chat.update",
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
        "upload",
        "file",
    }
)


async def test_fault_run_every_job_is_delivered_exactly_once(
    make_rig: Callable[..., AbstractAsyncContextManager[SlackRig]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with make_rig("http", user_concurrency=50) as rig:
        chaos = rig.fake.start_chaos(seed=12, rate=0.35, routes=FAULT_ROUTES)
        for n in range(30):
            await rig.post(
                f"<@UBOT> img2img job {n} seed={n}",
                files=[rig.fake.add_file(f"in{n}.png", png())],
            )
        await rig.settle()
        rig.fake.chaos = None
        jobs = await rig.jobs()
        assert len(jobs) == 30
        for job in jobs:
            _delivered_once(rig, job)
        assert set(chaos.injected) == {"429", "ratelimited", "500-before", "500-after"}
        assert _crashes(caplog) == []
