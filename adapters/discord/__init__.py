"""The Discord adapter: slash commands, job threads, persistent buttons and modals (SPEC §5)."""

from adapters.discord.adapter import (
    REQUIRED_PERMISSIONS,
    DiscordAdapter,
    DiscordCore,
    invite_url,
)
from adapters.discord.convert import DISCORD_CDN_ORIGINS, DiscordLimits

__all__ = [
    "DISCORD_CDN_ORIGINS",
    "REQUIRED_PERMISSIONS",
    "DiscordAdapter",
    "DiscordCore",
    "DiscordLimits",
    "invite_url",
]
