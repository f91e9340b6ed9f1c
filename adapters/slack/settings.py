"""The Slack adapter's settings section (docs/slack.md)."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from bot.config import Env, Names, Secret, Section


class SlackSettings(Section):
    """`SLACK_BOT_TOKEN` with `SLACK_APP_TOKEN` (Socket Mode) or `SLACK_SIGNING_SECRET` (HTTP
    mode) turns the adapter on."""

    # Bot, user and configuration tokens (xoxb-, xoxp-, …) and app-level tokens (xapp-).
    secret_patterns: ClassVar[tuple[re.Pattern[str], ...]] = (
        re.compile(r"\b(?:xox[abposr]|xapp)-[A-Za-z0-9-]{10,}\b"),
    )
    slack_bot_token: Annotated[str | None, Secret("SLACK_BOT_TOKEN")] = None
    slack_app_token: Annotated[str | None, Secret("SLACK_APP_TOKEN")] = None
    slack_signing_secret: Annotated[str | None, Secret("SLACK_SIGNING_SECRET")] = None
    slack_api_url: Annotated[str | None, Env("SLACK_API_URL")] = None  # GovSlack, proxies, tests
    admins: Names = ()  # Slack admin user ids (Discord admins are members with Manage Server)

    @property
    def http_mode(self) -> bool:
        """Events arrive over HTTP (signing secret, no app token) rather than Socket Mode."""
        return bool(self.slack_signing_secret and not self.slack_app_token)


__all__ = ["SlackSettings"]
