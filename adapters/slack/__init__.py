"""The Slack adapter: Bolt (Socket Mode or HTTP) in, the Web API out (SPEC §5).

Slack Bolt is imported when the adapter is first used, not when the composition root reads
`SlackSettings` for every run: a bot without Slack credentials never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from adapters.slack.settings import SlackSettings

if TYPE_CHECKING:
    from adapters.slack.adapter import SlackAdapter, SlackCore, slack_configured

_MODULES = {
    "SlackAdapter": "adapters.slack.adapter",
    "SlackCore": "adapters.slack.adapter",
    "slack_configured": "adapters.slack.adapter",
}

__all__ = ["SlackAdapter", "SlackCore", "SlackSettings", "slack_configured"]


def __getattr__(name: str) -> object:
    """The adapter's names, from `adapters.slack.adapter` on first use (PEP 562)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
