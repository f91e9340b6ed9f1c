"""Logging set-up: structured lines on stderr with secrets redacted everywhere.

Tokens and keys the configuration holds, presigned-URL query strings and token path segments
(Discord webhook / interaction tokens) are replaced before any handler sees a record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import TextIO

# Query strings of URLs (presigned S3 signatures, tokens in query parameters).
_QUERY = re.compile(r"(https?://[^\s?\"'<>]+)\?[^\s\"'<>]*")
# Discord webhook / interaction token path segments: /webhooks/<id>/<token>, /interactions/<id>/<t>.
_TOKEN_PATH = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9._-]{20,}")
# Slack, Discord and AWS credential shapes, in case one arrives from somewhere the config does
# not know (a token pasted into a prompt, a library's error message).
_TOKEN_SHAPES = re.compile(
    r"\b(xox[abposr]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{10,}"
    r"|[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16})\b"
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret, URL query string and token path segment hidden."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "[redacted]")
    text = _QUERY.sub(r"\1?[redacted]", text)
    text = _TOKEN_PATH.sub(r"\1[redacted]", text)
    return _TOKEN_SHAPES.sub("[redacted]", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (with its arguments applied) through `redact`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # Exceptions are formatted later by the handler; fold them in now so they are redacted.
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg = redact(message, self._secrets)
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
    secrets: Iterable[str] = (),
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
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
