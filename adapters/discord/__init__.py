"""The Discord adapter: slash commands, job threads, persistent buttons and modals (SPEC §5).

discord.py is imported when the adapter is first used, not when the composition root reads
`adapters.discord.settings` for every run: a bot without a Discord token never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.discord.adapter import (
        REQUIRED_PERMISSIONS,
        DiscordAdapter,
        DiscordCore,
        invite_url,
    )
    from adapters.discord.convert import DISCORD_CDN_ORIGINS, DiscordLimits

_MODULES = {
    "DISCORD_CDN_ORIGINS": "adapters.discord.convert",
    "DiscordLimits": "adapters.discord.convert",
    "REQUIRED_PERMISSIONS": "adapters.discord.adapter",
    "DiscordAdapter": "adapters.discord.adapter",
    "DiscordCore": "adapters.discord.adapter",
    "invite_url": "adapters.discord.adapter",
}

__all__ = [
    "DISCORD_CDN_ORIGINS",
    "REQUIRED_PERMISSIONS",
    "DiscordAdapter",
    "DiscordCore",
    "DiscordLimits",
    "invite_url",
]


def __getattr__(name: str) -> object:
    """The package's names, each from its module on first use (PEP 562)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
