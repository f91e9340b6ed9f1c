"""A job's life on Slack: the status message and its edits, the result upload into the thread,
every button (Cancel, Re-roll, Edit and its modal, Use as input, Delete, Use as prompt),
workspaces kept apart, and Slack's rate limits on the way out."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from scenario_kit import png

from bot.model import JobState

if TYPE_CHECKING:
    from bot.model import Job
    from tests.slack.conftest import MakeRig, Message, SlackRig


async def _job(rig: SlackRig, text: str = "img2img a cat seed=9 count=2") -> tuple[Job, Message]:
    """Run one mention job to the end; return it and its status message."""
    await rig.post(f"<@UBOT> {text}", files=[rig.fake.add_file("cat.png", png())])
    await rig.settle()
    job = (await rig.jobs())[-1]
    assert job.state is JobState.SUCCEED, job.error
    return job, rig.status_of(job.id)


async def test_results_go_into_the_thread_in_one_upload_plus_buttons(any_rig: SlackRig) -> None:
    rig = any_rig
    job, status = await _job(rig, "img2img a cat count=3")
    # The status message started the thread; everything else is inside it.
    assert status.thread_ts is None
    assert job.thread is not None and job.thread.thread == status.ts
    assert job.status_message == f"C1:{status.ts}"
    [complete] = rig.fake.called("files.completeUploadExternal")
    assert complete["thread_ts"] == status.ts and complete["channel_id"] == "C1"
    assert len(complete["files"]) == 3
    assert len(rig.fake.called("files.getUploadURLExternal")) == 3
    assert len(rig.fake.uploaded) == 3 and all(rig.fake.uploaded.values())
    [upload] = rig.uploads_in("C1", status.ts)
    [result] = rig.results_in("C1", status.ts)
    assert upload.thread_ts == status.ts and result.thread_ts == status.ts
    assert upload.ts < result.ts
    # Every bot message of the job carries its id.
    for message in (status, upload, result):
        assert job.id in message.text
    assert "prompt: a cat" in result.text and "Seed:" in result.text
    assert "local-preview" in result.text
    assert result.action_ids() == [
        f"sdbot:reroll:{job.id}",
        f"sdbot:edit:{job.id}",
        f"sdbot:input:{job.id}:1",
        f"sdbot:input:{job.id}:2",
        f"sdbot:input:{job.id}:3",
        f"sdbot:delete:{job.id}",
    ]
    # The core knows every message it may have to delete: the buttons message and the files.
    assert job.result_messages[0] == f"C1:{result.ts}"
    assert sorted(job.result_messages[1:]) == sorted(f"C1:file:{f['id']}" for f in upload.files)


async def test_a_command_in_a_thread_keeps_its_job_in_that_thread(rig: SlackRig) -> None:
    parent = await rig.post("a conversation")
    await rig.post(
        "<@UBOT> img2img in here", files=[rig.fake.add_file("a.png", png())], thread_ts=parent.ts
    )
    await rig.settle()
    [job] = await rig.jobs()
    status = rig.status_of(job.id)
    assert status.thread_ts == parent.ts
    assert job.thread is not None and job.thread.thread == parent.ts
    assert rig.results_in("C1", parent.ts) and rig.uploads_in("C1", parent.ts)


async def test_the_status_message_is_edited_in_place_with_cancel_while_running(
    rig: SlackRig,
) -> None:
    job, status = await _job(rig, "img2img a cat")
    assert status.action_ids() == []  # finished: no Cancel any more
    first_blocks = status.blocks
    cancel = [e for b in first_blocks if b["type"] == "actions" for e in b["elements"]]
    assert [e["action_id"] for e in cancel] == [f"sdbot:cancel:{job.id}"]
    assert cancel[0]["confirm"]["confirm"]["text"] == "Cancel job"
    updates = rig.fake.called("chat.update")
    assert updates and all(u["ts"] == status.ts for u in updates)
    assert "succeed" in status.updates[-1][0]
    # State changes only (created → inprogress → succeed, plus at most a few interval edits).
    assert len(status.updates) <= 5


async def test_cancel_button_stops_the_job_and_no_result_is_posted(make_rig: MakeRig) -> None:
    async with make_rig("http", local_delay=30.0) as rig:
        await rig.post("<@UBOT> img2img slow", files=[rig.fake.add_file("a.png", png())])
        for _ in range(1000):  # until the job is on the backend (a bound, not a timing check)
            jobs = await rig.jobs()
            if jobs and jobs[0].backend_id:
                break
            await asyncio.sleep(0.01)
        [job] = await rig.jobs()
        status = rig.status_of(job.id)
        stranger = await rig.click(status, f"sdbot:cancel:{job.id}", user="U2")
        assert stranger.status == 200
        await rig.adapter.wait_idle()
        # Someone else's job is not theirs to see, let alone cancel.
        assert f"no job `{job.id}`" in rig.fake.ephemerals[-1]["text"]
        await rig.click(status, f"sdbot:cancel:{job.id}")
        await rig.settle()
        [job] = await rig.jobs()
        assert job.state is JobState.CANCELLED
        assert "cancelled" in status.updates[-1][0] and status.action_ids() == []
        assert rig.uploads_in("C1", status.ts) == [] and rig.results_in("C1", status.ts) == []
        notice = rig.fake.in_thread("C1", status.ts)[-1]
        assert "cancelled" in notice.text and notice.thread_ts == status.ts


async def test_reroll_use_as_input_and_delete_buttons(any_rig: SlackRig) -> None:
    rig = any_rig
    base, status = await _job(rig)
    [result] = rig.results_in("C1", status.ts)
    await rig.click(result, f"sdbot:reroll:{base.id}")
    await rig.click(result, f"sdbot:input:{base.id}:2")
    await rig.settle()
    _, reroll, use = await rig.jobs()
    assert reroll.parent_id == base.id and use.parent_id == base.id
    assert reroll.params is not None and reroll.params.prompt == "a cat"
    assert reroll.thread == base.thread and use.thread == base.thread
    [chosen] = [i for i in await rig.app.store.images(use.id) if i.slot == "image"]
    assert chosen.data == (await rig.app.store.images(base.id, "result"))[1].data
    assert len(rig.results_in("C1", status.ts)) == 3

    # Delete: not for others; for the requester it removes the messages and files.
    await rig.click(result, f"sdbot:delete:{base.id}", user="U2")
    await rig.settle()
    assert f"no job `{base.id}`" in rig.fake.ephemerals[-1]["text"]
    assert rig.fake.called("files.delete") == []
    upload = rig.uploads_in("C1", status.ts)[0]
    file_ids = [f["id"] for f in upload.files]
    await rig.click(result, f"sdbot:delete:{base.id}")
    await rig.settle()
    assert sorted(c["file"] for c in rig.fake.called("files.delete")) == sorted(file_ids)
    assert [c["ts"] for c in rig.fake.called("chat.delete")] == [result.ts]
    assert f"deleted the results of job `{base.id}`" in rig.fake.ephemerals[-1]["text"]
    assert await rig.app.store.images(base.id, "result") == []


async def test_edit_button_opens_a_prefilled_modal_and_its_submission_regenerates(
    any_rig: SlackRig,
) -> None:
    rig = any_rig
    base, status = await _job(rig)
    [result] = rig.results_in("C1", status.ts)
    answer = await rig.click(result, f"sdbot:edit:{base.id}")
    assert answer.status == 200
    await rig.settle()
    [view] = rig.fake.views
    assert view["callback_id"] == "sdbot_edit"
    initial = {b["block_id"]: b["element"].get("initial_value") for b in view["blocks"]}
    assert initial == {"prompt": "a cat", "negative": None, "strength": "0.75", "seed": "9"}
    bad = await rig.submit(view, {"strength": "2"})
    assert bad.body["response_action"] == "errors" and set(bad.body["errors"]) == {"strength"}
    await rig.submit(view, {"prompt": "a lion", "negative": "blur", "strength": "0.4"})
    await rig.settle()
    _, edited = await rig.jobs()
    assert edited.parent_id == base.id and edited.params is not None
    assert (edited.params.prompt, edited.params.negative, edited.params.strength) == (
        "a lion",
        "blur",
        0.4,
    )
    assert edited.params.seed == 9 and edited.thread == base.thread


async def test_edit_of_someone_elses_job_is_refused_before_any_modal(rig: SlackRig) -> None:
    base, status = await _job(rig)
    [result] = rig.results_in("C1", status.ts)
    await rig.click(result, f"sdbot:edit:{base.id}", user="U2")
    await rig.settle()
    assert rig.fake.views == []
    assert f"no job `{base.id}`" in rig.fake.ephemerals[-1]["text"]


async def test_interrogate_result_offers_use_as_prompt(rig: SlackRig) -> None:
    job, status = await _job(rig, "interrogate method=deepbooru")
    [result] = rig.results_in("C1", status.ts)
    assert rig.uploads_in("C1", status.ts) == []
    assert job.caption and job.caption in result.text.replace("&amp;", "&")
    await rig.click(result, f"sdbot:prompt:{job.id}")
    await rig.settle()
    _, follow = await rig.jobs()
    assert follow.command == "img2img" and follow.params is not None
    assert follow.params.prompt == job.caption and follow.thread == job.thread
    assert rig.uploads_in("C1", status.ts)


async def test_buttons_keep_working_after_a_restart(make_rig: MakeRig) -> None:
    async with make_rig("http") as rig:
        base, status = await _job(rig)
        [result] = rig.results_in("C1", status.ts)
        # A new adapter (as after a restart) knows nothing but what the button carries.
        await rig.adapter.aclose()
        from adapters.cli import slack_core
        from adapters.slack import SlackAdapter

        fresh = SlackAdapter(slack_core(rig.app), rig.slack, http_host="127.0.0.1", http_port=0)
        rig.app._adapters[fresh.platform] = fresh
        rig.adapter = fresh
        await fresh.start()
        await rig.click(result, f"sdbot:reroll:{base.id}")
        await rig.settle()
        _, reroll = await rig.jobs()
        assert reroll.state is JobState.SUCCEED and reroll.parent_id == base.id


async def test_jobs_never_cross_workspaces(rig: SlackRig) -> None:
    job, status = await _job(rig)
    [result] = rig.results_in("C1", status.ts)
    elsewhere = await rig.slash(f"job {job.id}", team="T2")
    assert elsewhere.body["response_type"] == "ephemeral"
    assert f"no job `{job.id}`" in elsewhere.body["text"]
    as_admin_elsewhere = await rig.slash(f"job {job.id[:4]}", team="T2", user="UADMIN")
    assert "no job" in as_admin_elsewhere.body["text"]
    await rig.click(result, f"sdbot:reroll:{job.id}", team="T2")
    await rig.settle()
    assert "no job" in rig.fake.ephemerals[-1]["text"]
    assert len(await rig.jobs()) == 1 and await rig.jobs("T2") == []
    # At home, the requester gets the details and the stored result images.
    home = await rig.slash(f"job {job.id[:5]}")
    assert home.body == {}
    await rig.settle()
    [details] = [m for m in rig.fake.bot_messages() if m.files and "requested by" in m.text]
    assert len(details.files) == 2 and details.thread_ts is None


async def test_a_rate_limited_upload_and_post_are_retried(rig: SlackRig) -> None:
    rig.fake.fail_next("upload", 429, {"Retry-After": "0"})
    rig.fake.fail_next("files.completeUploadExternal", 429, {"Retry-After": "0"})
    job, status = await _job(rig, "img2img a cat count=2")
    rig.fake.fail_next("chat.postMessage", 429, {"Retry-After": "0"})
    await rig.click(rig.results_in("C1", status.ts)[0], f"sdbot:reroll:{job.id}")
    await rig.settle()
    assert rig.fake.upload_attempts == 2 + 1 + 2
    # One upload message per job, one result message each: nothing doubled, nothing lost.
    assert len(rig.uploads_in("C1", status.ts)) == 2
    assert len(rig.results_in("C1", status.ts)) == 2
    assert all(j.state is JobState.SUCCEED for j in await rig.jobs())


async def test_a_refused_result_post_is_retried_without_uploading_twice(rig: SlackRig) -> None:
    # Slack refuses the buttons message once (an error the client does not retry): the core
    # posts the result again, and the adapter must not upload the same images a second time.
    def is_result(params: dict[str, object]) -> bool:
        blocks = params.get("blocks")
        return isinstance(blocks, list) and any(
            isinstance(b, dict) and b.get("type") == "context" for b in blocks
        )

    rig.fake.fail_next(
        "chat.postMessage",
        200,
        {"Content-Type": "application/json"},
        b'{"ok": false, "error": "internal_error"}',
        when=is_result,
    )
    job, status = await _job(rig, "img2img a cat count=2")
    assert len(rig.fake.called("files.completeUploadExternal")) == 1
    assert len(rig.uploads_in("C1", status.ts)) == 1
    assert len(rig.results_in("C1", status.ts)) == 1
    assert job.delivery.value == "done" and len(job.result_messages) == 3


async def test_after_a_crash_while_posting_the_thread_is_checked_before_posting_again(
    rig: SlackRig,
) -> None:
    from dataclasses import replace

    from bot.model import Delivery

    job, status = await _job(rig, "img2img a cat count=2")
    # As if the bot died after posting but before recording it: the result is found by its
    # job id in the thread, and not posted again.
    await rig.app.store.save(replace(job, delivery=Delivery.POSTING, result_messages=()))
    rig.app.runner.spawn(job.id)
    await rig.settle()
    found = await rig.app.store.get(job.id)
    assert found is not None and found.delivery is Delivery.DONE
    assert len(rig.results_in("C1", status.ts)) == 1 and len(rig.uploads_in("C1", status.ts)) == 1
    [result] = rig.results_in("C1", status.ts)
    upload = rig.uploads_in("C1", status.ts)[0]
    assert f"C1:{result.ts}" in found.result_messages
    assert {f"C1:file:{f['id']}" for f in upload.files} <= set(found.result_messages)
    # As if it died before posting anything: the thread has no result, so it is posted.
    for message in (result, upload):
        rig.fake.messages.remove(message)
    await rig.app.store.save(replace(found, delivery=Delivery.POSTING, result_messages=()))
    rig.app.runner.spawn(job.id)
    await rig.settle()
    assert len(rig.results_in("C1", status.ts)) == 1 and len(rig.uploads_in("C1", status.ts)) == 1
    # As if it died between the upload and the result message: the upload found in the thread
    # is kept, and only the result message is posted.
    uploads = len(rig.fake.called("files.completeUploadExternal"))
    [result] = rig.results_in("C1", status.ts)
    rig.fake.messages.remove(result)
    found = await rig.app.store.get(job.id)
    assert found is not None
    await rig.app.store.save(replace(found, delivery=Delivery.POSTING, result_messages=()))
    rig.app.runner.spawn(job.id)
    await rig.settle()
    assert len(rig.fake.called("files.completeUploadExternal")) == uploads
    assert len(rig.results_in("C1", status.ts)) == 1 and len(rig.uploads_in("C1", status.ts)) == 1


async def test_a_driver_after_another_finds_the_status_message_it_posted(rig: SlackRig) -> None:
    from dataclasses import replace

    from bot.model import Delivery

    job, status = await _job(rig)
    # As if the first driver died after posting the status (and the result) but before the row
    # said so: the next driver finds both by their metadata keys, and posts neither again.
    await rig.app.store.save(
        replace(
            job, thread=None, status_message=None, delivery=Delivery.POSTING, result_messages=()
        )
    )
    rig.app.runner.spawn(job.id)
    await rig.settle()
    found = await rig.app.store.get(job.id)
    assert found is not None and found.delivery is Delivery.DONE
    assert found.status_message == f"C1:{status.ts}"
    assert len([m for m in rig.fake.bot_messages("C1") if m.thread_ts is None]) == 1
    assert len(rig.results_in("C1", status.ts)) == 1


async def test_a_job_taken_again_just_as_its_old_driver_ended_gets_a_new_driver(
    rig: SlackRig,
) -> None:
    from dataclasses import replace

    from bot.model import Delivery

    job, status = await _job(rig)
    [result] = rig.results_in("C1", status.ts)
    rig.fake.messages.remove(result)
    found = await rig.app.store.get(job.id)
    assert found is not None
    await rig.app.store.save(replace(found, delivery=Delivery.POSTING, result_messages=()))

    # A driver that has ended is still listed until its done callback runs, one loop turn
    # later; the claim loop taking the job again in between must start a new driver (found by
    # tests/replicas: the job stayed held, its lease renewed, with nobody driving it).
    async def ended() -> None:
        return None

    old = asyncio.get_running_loop().create_task(ended())
    await old
    rig.app.runner._tasks[job.id] = old
    rig.app.runner.spawn(job.id)
    assert rig.app.runner._tasks[job.id] is not old
    await rig.settle()
    again = await rig.app.store.get(job.id)
    assert again is not None and again.delivery is Delivery.DONE
    assert len(rig.results_in("C1", status.ts)) == 1
