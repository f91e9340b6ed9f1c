"""The core through a chat-like adapter: threads, status edits, replies, buttons, visibility."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    in_thread,
    make_app,
    png,
    size_of,
    stored,
)

from bot.model import JobState, Platform
from bot.views import Action, ActionKind
from commands import parse
from commands.options import GenerateOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from scenario_kit import FastSettings

    from bot.app import BotApp
    from bot.model import Caller, Job


# Backend-neutral: each scenario runs on the local backend and on the WebUI backend.
pytestmark = pytest.mark.usefixtures("scenario_backend")


Chat = tuple["BotApp", RecordingAdapter]


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[Chat]:
    app = make_app(fast_config(tmp_path))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        yield app, adapter


async def run_job(
    app: BotApp,
    adapter: RecordingAdapter,
    text: str,
    caller: Caller | None = None,
    files: Sequence[tuple[str, bytes]] = (),
) -> tuple[Job, RecordingResponder]:
    """Run `text` to its end; the job as stored then, and what the caller was answered."""
    job, responder = await try_job(app, adapter, text, caller, files)
    return await stored(app, job), responder


async def try_job(
    app: BotApp,
    adapter: RecordingAdapter,
    text: str,
    caller: Caller | None = None,
    files: Sequence[tuple[str, bytes]] = (),
) -> tuple[Job | None, RecordingResponder]:
    responder = RecordingResponder()
    refs = [adapter.attach(name, data) for name, data in files]
    job = await app.dispatcher.handle_text(caller or chat_caller(), text, refs, responder)
    await app.runner.wait_idle()
    return job, responder


async def test_job_gets_a_thread_status_edits_and_one_result(chat: Chat) -> None:
    app, adapter = chat
    job, responder = await run_job(
        app, adapter, "img2img a cat count=3", files=[("cat.png", png())]
    )
    assert responder.accepted_ids == [job.id]
    status = adapter.posts[0]
    assert status.kind == "status" and status.thread.thread == status.id
    edits = adapter.status_edits[status.id]
    assert edits[0].state is JobState.CREATED
    assert edits[-1].state is JobState.SUCCEED
    assert any(a.kind is ActionKind.CANCEL for a in edits[0].actions)
    assert not edits[-1].actions
    [result] = adapter.result_in(status.thread)
    assert len(result.images) == 3
    assert result.marker in result.text and result.prompt == "a cat"
    assert "Seed:" in result.infotext and "Steps: 20" in result.infotext
    kinds = [a.kind for a in result.actions]
    assert kinds.count(ActionKind.USE_AS_INPUT) == 3
    assert {ActionKind.REROLL, ActionKind.EDIT, ActionKind.DELETE} <= set(kinds)
    assert all(len(a.id) <= 100 for a in result.actions)


async def test_status_edits_only_on_change_or_interval(tmp_path: Path) -> None:
    app = make_app(fast_config(tmp_path, local_delay=0.8, status_interval=0.25))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        job, _ = await run_job(app, adapter, "img2img x", files=[("a.png", png())])
    assert job.finished_at is not None
    took = (job.finished_at - job.created_at).total_seconds()  # 0.8 s, more under load
    edits = next(iter(adapter.status_edits.values()))
    # One per state change plus at most one per status interval — never one per poll.
    assert len(edits) <= 3 + took / 0.25 + 1
    assert app.poller.requests > len(edits)


async def test_thread_reply_regenerates_and_others_are_ignored(chat: Chat) -> None:
    app, adapter = chat
    base, _ = await run_job(app, adapter, "img2img a cat seed=5", files=[("a.png", png())])
    assert base.thread is not None
    me_in_thread = in_thread(chat_caller(), base.thread)
    stranger = in_thread(chat_caller("u2"), base.thread)
    admin = in_thread(chat_caller("boss", admin=True), base.thread)
    r = RecordingResponder()
    assert await app.dispatcher.handle_reply(stranger, "steps=3", [], r) is None
    assert await app.dispatcher.handle_reply(me_in_thread, "// nice one", [], r) is None
    assert r.refusals == [] and r.accepted_ids == []
    new = await app.dispatcher.handle_reply(me_in_thread, "steps=3", [], r)
    by_admin = await app.dispatcher.handle_reply(admin, "+ at night", [], r)
    await app.runner.wait_idle()
    new, by_admin = await stored(app, new), await stored(app, by_admin)
    assert new.params is not None and by_admin.params is not None
    assert new.params.seed == 5 and new.params.steps == 3 and new.thread == base.thread
    # The admin's reply built on the thread's most recent job (the one just made).
    assert by_admin.parent_id == new.id and by_admin.params.prompt == "a cat, at night"
    assert len(adapter.result_in(base.thread)) == 3
    bad = RecordingResponder()
    await app.dispatcher.handle_reply(admin, "stepz=3", [], bad)
    assert "did you mean `steps`" in bad.refusals[0]


async def test_reply_to_a_specific_result_picks_that_job(chat: Chat) -> None:
    app, adapter = chat
    first, _ = await run_job(app, adapter, "img2img first", files=[("a.png", png())])
    assert first.thread is not None
    me = in_thread(chat_caller(), first.thread)
    second = await app.dispatcher.handle_reply(me, "second", [], RecordingResponder())
    await app.runner.wait_idle()
    new = await app.dispatcher.handle_reply(
        me, "+ at dusk", [], RecordingResponder(), reply_to=first.result_messages[0]
    )
    await app.runner.wait_idle()
    assert second is not None
    new = await stored(app, new)
    assert new.params is not None
    assert new.parent_id == first.id and new.params.prompt == "first, at dusk"


async def test_reply_with_attachments_replaces_inputs(chat: Chat) -> None:
    app, adapter = chat
    base, _ = await run_job(
        app,
        adapter,
        "inpaint-sketch a scarf",
        files=[("o.png", png(96, 64)), ("o-sketch.png", png(96, 64, color=(1, 2, 3)))],
    )
    assert base.state is JobState.SUCCEED and base.thread is not None
    me = in_thread(chat_caller(), base.thread)
    ref = adapter.attach("bigger.png", png(128, 96))
    new = await app.dispatcher.handle_reply(me, "", [ref], RecordingResponder())
    await app.runner.wait_idle()
    new = await stored(app, new)
    inputs = {i.slot: i for i in await app.store.images(new.id) if i.slot != "result"}
    assert size_of(inputs["image"].data) == (128, 96)
    assert inputs["sketch"].name == "o-sketch.png"


async def test_buttons_reroll_edit_use_as_input_delete(chat: Chat) -> None:
    app, adapter = chat
    base, _ = await run_job(app, adapter, "img2img a cat seed=9 count=2", files=[("a.png", png())])
    me = chat_caller()
    r = RecordingResponder()
    reroll = await app.dispatcher.handle_action(me, Action(ActionKind.REROLL, base.id).id, r)
    defaults = await app.dispatcher.edit_defaults(me, base.id)
    assert defaults == {"prompt": "a cat", "negative": "", "strength": "0.75", "seed": "9"}
    edit = await app.dispatcher.handle_action(
        me,
        Action(ActionKind.EDIT, base.id).id,
        r,
        {"prompt": "a lion", "negative": "blur", "strength": "0.4", "seed": "9"},
    )
    use = await app.dispatcher.handle_action(me, Action(ActionKind.USE_AS_INPUT, base.id, 2).id, r)
    bad_edit = RecordingResponder()
    await app.dispatcher.handle_action(
        me, Action(ActionKind.EDIT, base.id).id, bad_edit, {"strength": "7"}
    )
    assert "between 0 and 1" in bad_edit.refusals[0]
    await app.runner.wait_idle()
    reroll, edit, use = [await stored(app, j) for j in (reroll, edit, use)]
    assert reroll.params is not None and edit.params is not None
    assert reroll.params.prompt == "a cat"
    assert (edit.params.prompt, edit.params.negative, edit.params.strength, edit.params.seed) == (
        "a lion",
        "blur",
        0.4,
        9,
    )
    [chosen] = [i for i in await app.store.images(use.id) if i.slot == "image"]
    assert chosen.data == (await app.store.images(base.id, "result"))[1].data
    # Delete: someone else may not; the requester may.
    stranger = RecordingResponder()
    await app.dispatcher.handle_action(
        chat_caller("u2"), Action(ActionKind.DELETE, base.id).id, stranger
    )
    assert stranger.refusals
    await app.dispatcher.handle_action(me, Action(ActionKind.DELETE, base.id).id, r)
    assert adapter.deleted == list(base.result_messages)
    assert await app.store.images(base.id) == []
    gone = RecordingResponder()
    await app.dispatcher.handle_action(me, Action(ActionKind.USE_AS_INPUT, base.id, 1).id, gone)
    assert "no stored result images" in gone.refusals[0]


async def test_cancel_button_and_use_as_prompt(tmp_path: Path) -> None:
    app = make_app(fast_config(tmp_path, local_delay=0.3))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        me = chat_caller()
        r = RecordingResponder()
        slow = await app.dispatcher.handle_text(
            me, "img2img slow", [adapter.attach("a.png", png())], r
        )
        assert slow is not None
        await asyncio.sleep(0.1)
        await app.dispatcher.handle_action(me, Action(ActionKind.CANCEL, slow.id).id, r)
        assert "cancelled" in r.replies[-1][0]
        cap, _ = await run_job(app, adapter, "interrogate", files=[("a.png", png())])
        [result] = [v for v in adapter.results() if v.job_id == cap.id]
        assert [a.kind for a in result.actions] == [ActionKind.USE_AS_PROMPT, ActionKind.DELETE]
        follow = await app.dispatcher.handle_action(
            me, Action(ActionKind.USE_AS_PROMPT, cap.id).id, r
        )
        await app.runner.wait_idle()
        follow = await stored(app, follow)
        assert follow.params is not None
        assert follow.command == "img2img" and follow.params.prompt == cap.caption
        cancelled = await app.store.get(slow.id)
        assert cancelled is not None and cancelled.state is JobState.CANCELLED
        assert not [v for v in adapter.results() if v.job_id == slow.id]


async def test_jobs_never_cross_servers_and_users_see_their_own(chat: Chat) -> None:
    app, adapter = chat
    mine, _ = await run_job(app, adapter, "img2img mine", files=[("a.png", png())])
    theirs, _ = await run_job(
        app, adapter, "img2img theirs", caller=chat_caller("u2"), files=[("a.png", png())]
    )
    elsewhere, _ = await run_job(
        app, adapter, "img2img far", caller=chat_caller("u1", server="g2"), files=[("a.png", png())]
    )

    async def ask(caller: Caller, text: str) -> RecordingResponder:
        r = RecordingResponder()
        await app.dispatcher.handle_command(caller, parse(text), [], r)
        return r

    listing = (await ask(chat_caller(), "jobs")).replies[0][0]
    assert mine.id in listing and theirs.id not in listing and elsewhere.id not in listing
    admin_listing = (await ask(chat_caller("boss", admin=True), "jobs")).replies[0][0]
    assert (
        mine.id in admin_listing
        and theirs.id in admin_listing
        and elsewhere.id not in admin_listing
    )
    assert "no job" in (await ask(chat_caller(), f"job {theirs.id}")).refusals[0]
    assert (
        "no job" in (await ask(chat_caller("boss", admin=True), f"job {elsewhere.id}")).refusals[0]
    )
    assert "only admins" in (await ask(chat_caller(), "jobs user=u2")).refusals[0]
    assert "only admins" in (await ask(chat_caller(), "jobs source=cloud")).refusals[0]
    r = await ask(chat_caller("u2"), f"cancel {mine.id}")
    assert "no job" in r.refusals[0]


async def test_slack_style_files_are_assigned_by_name_then_order(chat: Chat) -> None:
    app, adapter = chat
    caller = chat_caller(platform=Platform("discord"))
    files = [("the-mask.png", png(96, 64, color=(255, 255, 255))), ("photo.png", png(96, 64))]
    job, _r = await run_job(app, adapter, "inpaint-upload x", caller=caller, files=files)
    stored = {i.slot: i.name for i in await app.store.images(job.id)}
    assert stored["mask"] == "the-mask.png" and stored["image"] == "photo.png"
    _, too_many = await try_job(app, adapter, "img2img x", files=files)
    assert "takes 1 image" in too_many.refusals[0]


async def test_a_failed_post_is_retried(chat: Chat) -> None:
    app, adapter = chat
    adapter.fail_posts = 1
    job, _ = await run_job(app, adapter, "img2img x", files=[("a.png", png())])
    assert job.delivery.value == "done"
    assert len([v for v in adapter.results() if v.job_id == job.id]) == 1


async def test_restart_resumes_an_unfinished_job_and_delivers_once(tmp_path: Path) -> None:
    config = fast_config(tmp_path, local_delay=0.05)
    app = make_app(config)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        # Accepted but not yet driven: the process "dies" right after the ack.
        job = await app.runner.accept(
            chat_caller(),
            "img2img",
            GenerateOptions(prompt="x"),
            [adapter.attach("a.png", png(), "image")],
            RecordingResponder(),
        )
        await app.runner.aclose()
    assert (await _reopen_state(config, job.id)) is not JobState.SUCCEED
    app2 = make_app(config)
    app2.add_adapter(adapter)
    async with app2:
        await app2.runner.wait_idle()
        final = await app2.store.get(job.id)
    assert final is not None
    assert final.state is JobState.SUCCEED, final.error
    assert final.delivery.value == "done"
    assert len([v for v in adapter.results() if v.job_id == job.id]) == 1


async def _reopen_state(config: FastSettings, job_id: str) -> JobState:
    app = make_app(config)
    await app.store.start()
    try:
        job = await app.store.get(job_id)
        assert job is not None
        return job.state
    finally:
        await app.store.aclose()
