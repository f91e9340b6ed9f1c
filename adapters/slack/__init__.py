"""The Slack adapter: Bolt (Socket Mode or HTTP) in, the Web API out (SPEC §5)."""

from adapters.slack.adapter import SlackAdapter, slack_configured
from adapters.slack.settings import SlackSettings

__all__ = ["SlackAdapter", "SlackSettings", "slack_configured"]
