"""The acknowledgement path: a burst of commands reads a channel's settings once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    make_app,
    png,
)

if TYPE_CHECKING:
    from bot.model import Platform


async def test_a_burst_in_a_new_channel_reads_its_settings_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(fast_config(tmp_path, local_delay=5.0, max_in_flight=1000))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    reads: list[tuple[Any, ...]] = []
    settings = app.store.settings

    async def counted(platform: Platform, server: str, scope: str) -> dict[str, str]:
        reads.append((platform, server, scope))
        return await settings(platform, server, scope)

    monkeypatch.setattr(app.store, "settings", counted)
    image = png(32, 32)
    async with app:
        responders = [RecordingResponder() for _ in range(50)]
        await asyncio.gather(
            *(
                app.dispatcher.handle_text(
                    chat_caller(f"user{n}"), "img2img a cat", [adapter.attach("a.png", image)], r
                )
                for n, r in enumerate(responders)
            )
        )
        assert all(r.accepted_ids for r in responders)
        # One read of the server's settings and one of the channel's, for the whole burst
        # (before: two per command, every command reading before the first had answered).
        assert sorted(reads) == sorted(set(reads)) and len(reads) == 2
        await app.runner.aclose()
