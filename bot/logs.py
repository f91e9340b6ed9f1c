"""Logging set-up: structured lines on stderr with secrets redacted everywhere.

What is hidden is a `Redaction`: the credentials the configuration holds and the shapes of
credentials its sections declare (`bot.config.Section.secret_patterns`: Slack's `xoxb-…`,
Discord's webhook token paths, AWS key ids, each beside the code that uses them), plus what
the core knows on its own, URL query strings (presigned signatures, tokens in parameters).
They are replaced before any handler sees a record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import TextIO

# Query strings of URLs (presigned S3 signatures, tokens in query parameters).
_QUERY = re.compile(r"(https?://[^\s?\"'<>]+)\?[^\s\"'<>]*")
REDACTED = "[redacted]"


def _hide(match: re.Match[str]) -> str:
    """A pattern's match hidden: only its `secret` group when it has one (the context around
    it, such as a URL path, stays readable), else all of it."""
    if "secret" not in match.re.groupindex or match.group("secret") is None:
        return REDACTED
    start, end = match.span("secret")
    whole = match.group(0)
    return whole[: start - match.start()] + REDACTED + whole[end - match.start() :]


def redact(text: str, secrets: Iterable[str] = (), patterns: Iterable[re.Pattern[str]] = ()) -> str:
    """`text` with every known secret, URL query string and match of `patterns` hidden."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, REDACTED)
    text = _QUERY.sub(rf"\1?{REDACTED}", text)
    for pattern in patterns:
        text = pattern.sub(_hide, text)
    return text


@dataclass(frozen=True)
class Redaction:
    """What to hide wherever text leaves the bot (logs; failures and refusals users see): credential
    values, and patterns of credential shapes (`Settings.redaction()` gathers both from the
    configured sections)."""

    secrets: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()

    def __call__(self, text: str) -> str:
        return redact(text, self.secrets, self.patterns)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (with its arguments applied) through `redact`."""

    def __init__(self, redaction: Redaction) -> None:
        super().__init__()
        self._redact = redaction

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # Exceptions are formatted later by the handler; fold them in now so they are redacted.
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = self._redact(message)
        record.args = ()
        return True


class UtcFormatter(logging.Formatter):
    """Times in UTC with their offset, to the millisecond: `2026-12-03T21:04:02.123+00:00`."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(UtcFormatter):
    """One JSON object per line: time, level, logger, message (already redacted), and the
    replica that wrote it when one is named."""

    def __init__(self, replica: str | None = None) -> None:
        super().__init__()
        self._replica = replica

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._replica is not None:
            line["replica"] = self._replica
        return json.dumps(line, ensure_ascii=False)


def setup_logging(
    level: str = "INFO",
    redaction: Redaction = Redaction(),
    *,
    json_lines: bool = False,
    stream: TextIO | None = None,
    replica: str | None = None,
) -> None:
    """Send logs to stderr (stdout belongs to the console adapter), redacted.

    `json_lines` writes one JSON object per record, for log collectors. `replica` (the bot's
    replica id) goes on every line, so the logs of several replicas can be told apart.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter(replica))
    else:
        where = "" if replica is None else f"[{replica.replace('%', '%%')}] "
        handler.setFormatter(
            UtcFormatter(f"%(asctime)s {where}%(levelname)s %(name)s: %(message)s")
        )
    handler.addFilter(RedactingFilter(redaction))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
