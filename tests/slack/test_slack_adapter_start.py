"""The core resumes jobs before the adapters start (`adapters.cli`): the Slack adapter's job-facing
methods wait for its start instead of failing, and learn that it is not running if it closes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest
from scenario_kit import fast_config, make_app

from adapters.cli import slack_core
from adapters.slack import SlackAdapter
from adapters.slack.settings import SlackSettings
from bot.errors import ChatDeliveryError
from bot.model import Conversation
from tests.slack.conftest import BOT_TOKEN, SIGNING_SECRET, FakeSlack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@contextlib.asynccontextmanager
async def _unstarted(tmp_path: Path) -> AsyncIterator[tuple[FakeSlack, SlackAdapter]]:
    """A running core with a Slack adapter made but not started (as `adapters.cli` resumes)."""
    fake = FakeSlack()
    await fake.start()
    config = fast_config(
        tmp_path,
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=fake.api_url,
    )
    app = make_app(config)
    settings = config[SlackSettings]
    adapter = SlackAdapter(slack_core(app), settings, http_host="127.0.0.1", http_port=0)
    try:
        async with app:
            yield fake, adapter
    finally:
        await adapter.aclose()
        await fake.aclose()


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_post_made_before_the_adapter_starts_waits_and_lands(tmp_path: Path) -> None:
    async with _unstarted(tmp_path) as (fake, adapter):
        asked = fake.user_message("img2img a cat", channel="C1")
        posting = asyncio.create_task(adapter.post_text(Conversation("C1", asked.ts), "hello"))
        await _turns()
        assert not posting.done()  # waiting, not failed with "not running"
        assert fake.bot_messages("C1") == []
        await adapter.start()
        await asyncio.wait_for(posting, 10)
        [posted] = fake.bot_messages("C1")
        assert posted.text == "hello" and posted.thread_ts == asked.ts


async def test_a_post_waiting_for_a_start_that_never_comes_fails_at_close(tmp_path: Path) -> None:
    async with _unstarted(tmp_path) as (_fake, adapter):
        posting = asyncio.create_task(adapter.post_text(Conversation("C1", None), "hello"))
        await _turns()
        assert not posting.done()
        await adapter.aclose()
        with pytest.raises(ChatDeliveryError, match="not running"):
            await asyncio.wait_for(posting, 10)
