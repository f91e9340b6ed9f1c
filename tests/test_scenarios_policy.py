"""Limits, settings, allow-lists and retention through the real core."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    make_app,
    png,
)

from bot.app import BotApp
from commands import parse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bot.model import Caller, Job

    Chat = tuple[BotApp, RecordingAdapter]

# Backend-neutral: each scenario runs on the local backend and on the WebUI backend.
pytestmark = pytest.mark.usefixtures("scenario_backend")


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[Chat]:
    app = make_app(fast_config(tmp_path, local_delay=0.5, user_concurrency=2, daily_quota=5))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        yield app, adapter


async def submit(
    app: BotApp, adapter: RecordingAdapter, caller: Caller | None = None, text: str = "img2img x"
) -> tuple[Job | None, RecordingResponder]:
    r = RecordingResponder()
    job = await app.dispatcher.handle_text(
        caller or chat_caller(), text, [adapter.attach("a.png", png())], r
    )
    return job, r


async def ask(app: BotApp, caller: Caller, text: str) -> RecordingResponder:
    r = RecordingResponder()
    await app.dispatcher.handle_command(caller, parse(text), [], r)
    return r


async def test_per_user_concurrency_limit(chat: Chat) -> None:
    app, adapter = chat
    assert (await submit(app, adapter))[0] is not None
    assert (await submit(app, adapter))[0] is not None
    job, r = await submit(app, adapter)
    assert job is None
    assert "you have 2 jobs running; the limit here is 2" in r.refusals[0]
    # Someone else is not affected.
    assert (await submit(app, adapter, chat_caller("u2")))[0] is not None
    await app.runner.wait_idle()
    assert (await submit(app, adapter))[0] is not None  # room again once they finished


async def test_daily_quota_says_when_it_resets(chat: Chat) -> None:
    app, adapter = chat
    for _ in range(5):
        job, _ = await submit(app, adapter)
        assert job is not None
        await app.runner.wait_idle()
    job, r = await submit(app, adapter)
    assert job is None
    assert "used your 5 jobs for today" in r.refusals[0]
    assert "resets at 00:00 UTC (in " in r.refusals[0]


async def test_global_cap(tmp_path: Path) -> None:
    app = make_app(fast_config(tmp_path, local_delay=0.5, max_in_flight=2))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        await submit(app, adapter, chat_caller("a"))
        await submit(app, adapter, chat_caller("b"))
        job, r = await submit(app, adapter, chat_caller("c"))
        assert job is None
        assert "the bot is busy" in r.refusals[0]
        assert "try again" in r.refusals[0]


async def test_settings_are_shown_changed_validated_and_applied(chat: Chat) -> None:
    app, adapter = chat
    admin = chat_caller("boss", admin=True)
    shown = (await ask(app, admin, "settings")).replies[0][0]
    assert "concurrency = 2 · config" in shown
    assert "refused" not in shown
    assert "only admins" in (await ask(app, chat_caller(), "settings concurrency=9")).refusals[0]
    bad = await ask(app, admin, "settings model=nope.safetensors")
    assert "unknown model `nope.safetensors`" in bad.refusals[0]
    assert "unknown endpoint" in (await ask(app, admin, "settings endpoint=gpu")).refusals[0]
    assert "between 1 and 100" in str(
        (await ask_text(app, admin, "settings concurrency=0")).refusals
    )
    done = await ask(app, admin, "settings scope=server max_size=512 concurrency=1")
    assert "this server" in done.replies[0][0]
    await ask(app, admin, "settings concurrency=3")  # the channel overrides the server
    shown = (await ask(app, admin, "settings")).replies[0][0]
    assert "max_size = 512 · server" in shown and "concurrency = 3 · channel" in shown
    job, _ = await submit(app, adapter, text="img2img x")
    await app.runner.wait_idle()
    assert job is not None
    stored = await app.store.get(job.id)
    assert stored is not None and stored.params is not None
    assert max(stored.params.width, stored.params.height) <= 512
    too_big, refused = await submit(app, adapter, text="img2img x size=1024x1024")
    assert too_big is None and "cap of 512" in refused.refusals[0]
    await ask(app, admin, "settings reset=concurrency")
    await ask(app, admin, "settings scope=server reset=all")
    shown = (await ask(app, admin, "settings")).replies[0][0]
    assert "max_size = 1024 · config" in shown and "concurrency = 2 · config" in shown
    # Other servers keep their own settings.
    elsewhere = chat_caller("boss", admin=True, server="g2")
    await ask(app, admin, "settings scope=server max_size=256")
    assert "max_size = 1024 · config" in (await ask(app, elsewhere, "settings")).replies[0][0]


async def ask_text(app: BotApp, caller: Caller, text: str) -> RecordingResponder:
    r = RecordingResponder()
    await app.dispatcher.handle_text(caller, text, [], r)
    return r


async def test_allow_lists(tmp_path: Path) -> None:
    config = fast_config(
        tmp_path, allowed_servers=("g1",), allowed_channels=("c1",), allowed_roles=("artists",)
    )
    app = make_app(config)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        artist = replace(chat_caller(), roles=("artists",))
        assert (await submit(app, adapter, artist))[0] is not None
        _, r = await submit(app, adapter, replace(artist, server="g9"))
        assert "not enabled in this server" in r.refusals[0]
        _, r = await submit(app, adapter, chat_caller(channel="c2"))
        assert "not enabled in this channel" in r.refusals[0]
        _, r = await submit(app, adapter, chat_caller())
        assert "roles" in r.refusals[0]
        assert (await submit(app, adapter, chat_caller("boss", admin=True)))[0] is not None
        await app.runner.wait_idle()


async def test_retention_removes_old_images_and_keeps_rows(chat: Chat) -> None:
    app, adapter = chat
    old, _ = await submit(app, adapter)
    await app.runner.wait_idle()
    assert old is not None
    stored = await app.store.get(old.id)
    assert stored is not None
    await app.store.save(replace(stored, created_at=stored.created_at - timedelta(days=31)))
    fresh, _ = await submit(app, adapter)
    await app.runner.wait_idle()
    assert fresh is not None
    assert await app.retention.sweep() == 1
    old_job = await app.store.get(old.id)
    assert old_job is not None and old_job.thread is not None
    assert old_job.results_expired and await app.store.images(old.id) == []
    assert await app.store.images(fresh.id) != []
    details = (await ask(app, chat_caller(), f"job {old.id}")).replies[0][0]
    assert "expired" in details
    r = RecordingResponder()
    await app.dispatcher.handle_reply(
        replace(chat_caller(), conversation=old_job.thread), "steps=5", [], r
    )
    assert "no longer stored" in r.refusals[0]
