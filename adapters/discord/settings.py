"""The Discord adapter's settings section (docs/discord.md)."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import BeforeValidator, model_validator

from bot.config import Names, Secret, Section, listed
from bot.errors import ConfigError


class DiscordSettings(Section):
    """`DISCORD_TOKEN` turns the adapter on."""

    secret_patterns: ClassVar[tuple[re.Pattern[str], ...]] = (
        # A bot token: base64 user id, timestamp and HMAC, dot-separated.
        re.compile(r"\b[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}\b"),
        # Webhook and interaction tokens in URL paths: /webhooks/<id>/<token>,
        # /interactions/<id>/<token> (a request's URL in an error or a debug line).
        re.compile(r"/(?:webhooks|interactions)/\d+/(?P<secret>[A-Za-z0-9._-]{20,})"),
    )
    discord_token: Annotated[str | None, Secret("DISCORD_TOKEN")] = None
    discord_guilds: Names = ()  # sync commands to these guilds (fast); else globally
    # With the privileged message-content intent, any reply in a job thread re-generates;
    # without it, replies must mention the bot (docs/discord.md).
    discord_message_content: bool = False
    # Gateway shards (docs/discord.md "Several replicas and shards"): 0 = one session that
    # Discord sends every event to. With a count, this process runs `discord_shard_ids` of
    # them (all of them when empty); processes may run the same shards (each event is acted on
    # once) or split them.
    discord_shard_count: int = 0
    discord_shard_ids: Annotated[tuple[int, ...], BeforeValidator(listed)] = ()

    @model_validator(mode="after")
    def _check(self) -> DiscordSettings:
        if self.discord_shard_count < 0:
            raise ConfigError("discord_shard_count must be 0 (no sharding) or more")
        if self.discord_shard_ids and not self.discord_shard_count:
            raise ConfigError("discord_shard_ids needs discord_shard_count")
        for shard in self.discord_shard_ids:
            if not 0 <= shard < self.discord_shard_count:
                raise ConfigError(
                    f"discord_shard_ids: shard {shard} is not between 0 and "
                    f"discord_shard_count - 1 ({self.discord_shard_count - 1})"
                )
        return self


__all__ = ["DiscordSettings"]
