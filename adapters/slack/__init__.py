"""The Slack adapter: Bolt (Socket Mode or HTTP) in, the Web API out (SPEC §5)."""

from adapters.slack.adapter import SlackAdapter, SlackCore, slack_configured
from adapters.slack.settings import SlackSettings

__all__ = ["SlackAdapter", "SlackCore", "SlackSettings", "slack_configured"]
