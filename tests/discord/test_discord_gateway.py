"""`sdbot run` on Discord: the adapter's own client logs in, identifies on a (fake, loopback)
gateway with the intents it needs, and serves commands and thread replies that arrive as
gateway events, exactly as in production."""

from __future__ import annotations

import asyncio
import shutil
import socket
from typing import TYPE_CHECKING, Any

import discord
import pytest
from scenario_kit import fast_config, make_app, png

from adapters import cli
from adapters.cli import discord_core
from adapters.discord import DiscordAdapter
from adapters.discord.settings import DiscordSettings
from bot.errors import ConfigError, StorageLostError
from bot.model import Delivery, JobState
from bot.store import sqlite as store_sqlite

if TYPE_CHECKING:
    from pathlib import Path

MESSAGE_CONTENT_LIMITED = 1 << 19  # application flag: the intent is enabled in the portal


async def test_the_bot_connects_and_serves_gateway_events(harness: Any) -> None:
    harness.gateway = True
    harness.fake.app_flags = MESSAGE_CONTENT_LIMITED
    bot = await harness.start()
    [identify] = [f for f in bot.fake.gateway_frames if f["op"] == 2]
    intents = discord.Intents._from_value(identify["d"]["intents"])
    assert intents.guilds and intents.guild_messages and intents.dm_messages
    assert intents.message_content  # asked for, and enabled for the application
    assert not intents.members and not intents.presences  # nothing else privileged

    token = bot.slash("img2img", {"prompt": "over the gateway"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.state is JobState.SUCCEED and job.delivery is Delivery.DONE
    thread = job.thread.thread
    assert len(bot.results(thread)) == 1

    bot.say("steps=3", channel=thread)  # MESSAGE_CREATE over the socket, no mention needed
    await bot.fake.wait_for(lambda: len(bot.results(thread)) == 2)
    await bot.settle()
    made = (await bot.jobs())[-1]
    assert made.parent_id == job.id and made.params.steps == 3

    gateway = bot.adapter._gateway
    assert gateway is not None and not gateway.done()
    await bot.adapter.aclose()
    await asyncio.wait_for(bot.adapter.wait_closed(), 5)
    assert gateway.done() and bot.client.is_closed()


async def test_default_client_asks_for_no_privileged_intent(harness: Any) -> None:
    harness.gateway = True
    harness.message_content = False
    bot = await harness.start()
    [identify] = [f for f in bot.fake.gateway_frames if f["op"] == 2]
    intents = discord.Intents._from_value(identify["d"]["intents"])
    assert not intents.message_content and not intents.members and not intents.presences
    assert bot.adapter.message_content is False


async def test_a_refused_intent_ends_the_gateway_with_a_config_error(
    tmp_path: Path, discord_api: Any
) -> None:
    discord_api.app_flags = MESSAGE_CONTENT_LIMITED  # the REST check passes …
    discord_api.gateway_close_code = 4014  # … but the gateway refuses the intent
    config = fast_config(tmp_path, discord_token="fake-bot-token")
    app = make_app(config)
    adapter = DiscordAdapter(
        discord_core(app),
        config[DiscordSettings],
        message_content=True,
        cdn_origins=[discord_api.origin],
    )
    app.add_adapter(adapter)
    async with app:
        await adapter.start()
        try:
            with pytest.raises(ConfigError, match="Message Content intent is not enabled"):
                await asyncio.wait_for(adapter.wait_closed(), 10)
        finally:
            await adapter.aclose()


async def test_an_event_still_being_handled_is_cancelled_when_the_adapter_closes(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # discord.py runs each event's handler in a task of its own; the adapter tracks it, so a
    # handler stuck on a slow call does not outlive the adapter.
    harness.gateway = True
    harness.fake.app_flags = MESSAGE_CONTENT_LIMITED
    bot = await harness.start()
    entered = asyncio.Event()
    ended: list[str] = []

    async def stuck(*args: Any, **kwargs: Any) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    monkeypatch.setattr(bot.app.dispatcher, "handle_command", stuck)
    bot.slash("img2img", {"prompt": "a cat"}, {"image": png()})
    await asyncio.wait_for(entered.wait(), 10)
    await asyncio.wait_for(bot.adapter.aclose(), 10)
    assert ended == ["cancelled"]
    await asyncio.wait_for(bot.adapter.wait_idle(), 10)


async def test_sdbot_run_stops_with_its_error_when_the_data_folder_is_deleted(
    tmp_path: Path, discord_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `sdbot run`'s own loop, connected to the (fake) gateway: a deleted data folder is seen
    # while nothing writes, and the run ends with the error (`main` prints it, exit 1) after
    # closing the adapter and the core.
    discord_api.app_flags = MESSAGE_CONTENT_LIMITED
    monkeypatch.setattr(store_sqlite, "LOST_CHECK_SECONDS", 0.01)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = fast_config(tmp_path, discord_token="fake-bot-token", metrics_port=port)
    run = asyncio.create_task(cli._run(config))
    await discord_api.wait_for(lambda: any(f["op"] == 2 for f in discord_api.gateway_frames))
    assert not run.done()
    shutil.rmtree(config.data_dir)
    with pytest.raises(StorageLostError, match="deleted or replaced"):
        await asyncio.wait_for(run, 30)
