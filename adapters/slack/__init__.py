"""The Slack adapter: Bolt (Socket Mode or HTTP) in, the Web API out (SPEC §5)."""

from adapters.slack.adapter import SlackAdapter, slack_configured

__all__ = ["SlackAdapter", "slack_configured"]
