"""The grammar's one error: what the user wrote does not follow it.

The grammar knows no chat platform and no core, so it raises its own error; the core
(`bot.dispatcher`) answers it like any other refusal (`bot.errors.UserInputError`), and adapters
that check text before handing it over (Slack's ack, Discord's forms) catch it themselves.
"""

from __future__ import annotations


class GrammarError(ValueError):
    """The command text or its options do not parse; the message says what to fix, fit to show
    in chat as it is."""

    # For operators' metrics, as `bot.errors.UserInputError.reason`.
    reason = "parse"
