"""The Discord adapter's settings section (docs/discord.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, model_validator

from bot.config import Names, Secret, Section, listed
from bot.errors import ConfigError


class DiscordSettings(Section):
    """`DISCORD_TOKEN` turns the adapter on."""

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
