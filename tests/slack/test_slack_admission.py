"""Issue 10 on Slack: every way to start a job — a mention, a thread reply, each result button,
the Edit modal and both message shortcuts (the img2img one through its form) — is held to the
same limits, and the user reads why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import png

from bot.model import Caller, Conversation, Job, JobState, Platform
from bot.render import PREVIEW_NOTICE
from commands.options import GenerateOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.slack.conftest import SlackRig

RUNNING = "you have 1 job running; the limit here is 1"


@dataclass(frozen=True)
class Limited:
    """A rig where U1 has a finished img2img (`base`) and interrogate (`caption`) job."""

    rig: SlackRig
    base: Job
    caption: Job


@pytest.fixture
async def limited(make_rig: Callable[..., Any]) -> AsyncIterator[Limited]:
    """U1 has a finished img2img and interrogate job, and one job that has not finished."""
    async with make_rig("http", user_concurrency=1) as rig:
        for text in ("img2img a cat", "interrogate"):
            image = rig.fake.add_file("cat.png", png())
            await rig.post(f"<@UBOT> {text}", files=[image], events=("message", "app_mention"))
            await rig.settle()
        base, caption = await rig.jobs()
        assert base.state is caption.state is JobState.SUCCEED
        # A job of U1's still running: its row is what the limit counts.
        held = Job(
            id="heldjob001",
            command="img2img",
            caller=Caller(Platform("slack"), "T1", "U1", Conversation("C1", None), user_name="u1"),
            state=JobState.INPROGRESS,
            created_at=datetime.now(UTC),
            options=GenerateOptions(),
        )
        await rig.app.store.insert(held)
        yield Limited(rig, base, caption)
        await rig.app.runner.cancel(held)


def _told(rig: SlackRig, answer: Any = None) -> str:
    """Everything U1 was told: the ack's body, ephemeral messages, response_url posts."""
    said = [str(answer.body.get("text", ""))] if answer is not None else []
    said += [str(e.get("text", "")) for e in rig.fake.ephemerals]
    said += [str(r.get("text", "")) for r in rig.fake.responses]
    return "\n".join(said)


def _result(rig: SlackRig, job: Job) -> Any:
    assert job.thread is not None and job.thread.thread is not None
    return rig.results_in("C1", job.thread.thread)[-1]


async def _refused(rig: SlackRig, answer: Any = None) -> None:
    await rig.settle()
    assert RUNNING in _told(rig, answer)
    assert len(await rig.jobs()) == 3


async def test_mention(limited: Limited) -> None:
    rig = limited.rig
    image = rig.fake.add_file("dog.png", png())
    await rig.post("<@UBOT> img2img a dog", files=[image], events=("message", "app_mention"))
    await _refused(rig)


async def test_thread_reply(limited: Limited) -> None:
    rig = limited.rig
    assert limited.base.thread is not None
    await rig.post("again", thread_ts=limited.base.thread.thread)
    await _refused(rig)


@pytest.mark.parametrize("kind", ["reroll", "input", "prompt"])
async def test_result_buttons(limited: Limited, kind: str) -> None:
    rig = limited.rig
    job = limited.caption if kind == "prompt" else limited.base
    await _refused(rig, await rig.click(_result(rig, job), f"sdbot:{kind}:{job.id}"))


async def test_edit_modal(limited: Limited) -> None:
    rig = limited.rig
    await rig.click(_result(rig, limited.base), f"sdbot:edit:{limited.base.id}")
    await rig.settle()
    [view] = rig.fake.views
    await _refused(rig, await rig.submit(view, {"prompt": "a lion", "seed": "3"}))


async def test_interrogate_shortcut(limited: Limited) -> None:
    rig = limited.rig
    target = await rig.post("look", files=[rig.fake.add_file("p.png", png())], user="U2")
    await _refused(rig, await rig.shortcut("sdbot_interrogate", target))


async def test_img2img_shortcut_form(limited: Limited) -> None:
    rig = limited.rig
    target = await rig.post("mine", files=[rig.fake.add_file("p.png", png())], user="U2")
    await rig.shortcut("sdbot_img2img", target)
    await rig.settle()
    [view] = rig.fake.views
    await _refused(rig, await rig.submit(view, {"prompt": "a watercolor"}))


async def test_preview_results_say_so(limited: Limited) -> None:
    assert PREVIEW_NOTICE in _result(limited.rig, limited.base).text
