"""`sdbot run` against a loopback `FakeDiscord` (`tests/discord/conftest.py`): one replica of
`tests/replicas/test_replicas_discord.py`, run as `python -m tests.kit.discord_run run`.

discord.py has no setting for where it connects, so this process sets what the in-process
`discord_api` fixture sets: `Route.BASE` (REST, webhooks and interaction callbacks) and the
gateway URL (`DiscordWebSocket.DEFAULT_GATEWAY`, also where it identifies again after an
Invalid Session); and the adapter takes the fake's origin for Discord's file hosts. The rest is
`adapters.cli.main`, unchanged. From the environment: `FAKE_DISCORD_ORIGIN` (http://host:port)
and `FAKE_DISCORD_GATEWAY` (the replica's own gateway URL, so its sessions can be told apart).
"""

from __future__ import annotations

import os
from typing import Any

import discord
import yarl

import adapters.discord
from adapters import cli


def main() -> int:
    origin = os.environ["FAKE_DISCORD_ORIGIN"]
    discord.http.Route.BASE = f"{origin}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])

    class LoopbackAdapter(adapters.discord.DiscordAdapter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, cdn_origins=[origin], **kwargs)

    # `adapters.cli.chat_adapters` imports the adapter class when it builds it.
    adapters.discord.DiscordAdapter = LoopbackAdapter  # type: ignore[misc]
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
