"""A backend's live preview in a Slack status message: an image block showing a private file
the bot uploaded, replaced as the preview changes and dropped (its files deleted) at the end;
through the real core on the WebUI backend too."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from scenario_kit import png

from bot.model import Conversation, JobState
from bot.views import StatusView
from cloud.a1111 import A1111Backend
from tests.a1111.conftest import webui_config
from tests.a1111.fake_webui import FakeWebUI

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from tests.slack.conftest import Message, SlackRig


def _images(message: Message) -> list[dict[str, Any]]:
    blocks = message.updates[-1][1] if message.updates else message.blocks
    return [b for b in blocks if b.get("type") == "image"]


def _shown(rig: SlackRig, message: Message) -> str | None:
    """The id of the file the status message shows, checked to be a live private upload."""
    images = _images(message)
    if not images:
        return None
    [image] = images
    file_id = str(image["slack_file"]["id"])
    assert file_id in rig.fake.completed and file_id in rig.fake.uploaded
    return file_id


async def _status(rig: SlackRig) -> tuple[StatusView, Conversation, str, Message]:
    first = StatusView("job1", "img2img", JobState.CREATED, "queued")
    posted = await rig.adapter.open_job_thread(Conversation("C1"), first)
    channel, ts = posted.message.split(":")
    return first, posted.thread, posted.message, rig.fake.message(channel, ts)


async def test_a_preview_is_a_private_file_in_the_status_replaced_then_dropped(
    rig: SlackRig,
) -> None:
    first, thread, message, status = await _status(rig)
    running = replace(first, state=JobState.INPROGRESS, text="running", preview=png(32, 32))
    await rig.adapter.edit_status(thread, message, running)
    one = _shown(rig, status)
    assert one is not None and rig.fake.uploaded[one] == png(32, 32)
    # Uploaded without a channel: shared nowhere, so no message carries it.
    [complete] = rig.fake.called("files.completeUploadExternal")
    assert not complete.get("channel_id")
    assert not any(m.files for m in rig.fake.messages)
    # The same picture again is not uploaded again.
    await rig.adapter.edit_status(thread, message, replace(running, text="running 2"))
    assert _shown(rig, status) == one
    assert len(rig.fake.called("files.getUploadURLExternal")) == 1
    # A new picture is a new file; the old one is deleted once the message no longer shows it.
    await rig.adapter.edit_status(thread, message, replace(running, preview=png(40, 40)))
    two = _shown(rig, status)
    assert two is not None and two != one
    assert one not in rig.fake.uploaded
    done = replace(first, state=JobState.SUCCEED, text="done")
    await rig.adapter.edit_status(thread, message, done)
    assert _shown(rig, status) is None and "done" in status.updates[-1][0]
    assert two not in rig.fake.uploaded


async def test_a_preview_slack_cannot_show_yet_leaves_the_text_edit_alone(rig: SlackRig) -> None:
    first, thread, message, status = await _status(rig)

    def with_image(params: dict[str, Any]) -> bool:
        blocks = params.get("blocks")
        blocks = json.loads(blocks) if isinstance(blocks, str) else blocks or []
        return any(b.get("type") == "image" for b in blocks)

    # What Slack answers for an image block whose file it has not processed yet.
    rig.fake.fail_next(
        "chat.update",
        200,
        {"Content-Type": "application/json"},
        b'{"ok": false, "error": "invalid_blocks"}',
        when=with_image,
    )
    running = replace(first, state=JobState.INPROGRESS, text="running", preview=png(32, 32))
    await rig.adapter.edit_status(thread, message, running)
    assert status.updates[-1][0] == "running" and _shown(rig, status) is None
    assert not rig.fake.uploaded  # the file it could not show is not left behind
    # The next edit shows the preview.
    await rig.adapter.edit_status(thread, message, replace(running, text="running 2"))
    assert _shown(rig, status) is not None


async def test_a_failed_preview_upload_does_not_stop_the_status_edit(rig: SlackRig) -> None:
    first, thread, message, status = await _status(rig)
    rig.fake.fail_next(
        "files.getUploadURLExternal",
        200,
        {"Content-Type": "application/json"},
        b'{"ok": false, "error": "not_allowed_token_type"}',
    )
    running = replace(first, state=JobState.INPROGRESS, text="running", preview=png(32, 32))
    await rig.adapter.edit_status(thread, message, running)
    assert status.updates[-1][0] == "running" and _shown(rig, status) is None


async def test_a_webui_job_shows_its_live_preview_on_slack_until_it_ends(
    make_rig: Callable[..., AbstractAsyncContextManager[SlackRig]], tmp_path: Path
) -> None:
    async with FakeWebUI() as webui:
        backend = A1111Backend(webui_config(webui.url, tmp_path))
        webui.hold()
        async with make_rig(backend=backend, status_interval=0.05) as rig:
            await rig.post(
                "<@UBOT> img2img a hat steps=8", files=[rig.fake.add_file("a.png", png())]
            )
            await webui.wait_for("step")
            [job] = await rig.jobs()
            status = rig.status_of(job.id)
            async with asyncio.timeout(10):
                while _shown(rig, status) is None:
                    await asyncio.sleep(0.01)
            webui.release()
            await rig.settle()
            [job] = await rig.jobs()
            assert job.state is JobState.SUCCEED, job.error
            assert _shown(rig, status) is None
            # Only the result files remain: every preview file was deleted.
            [upload] = rig.uploads_in("C1", status.ts)
            assert sorted(rig.fake.uploaded) == sorted(f["id"] for f in upload.files)
