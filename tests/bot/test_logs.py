"""Nothing secret reaches logs, stored errors or chat: redaction, and a full scenario grepped."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    ScriptedBackend,
    chat_caller,
    fast_config,
    make_app,
    png,
)

from adapters.cli import SECTIONS
from bot.config import Config, Section, load_settings
from bot.errors import BackendError
from bot.logs import Redaction, redact, setup_logging

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from bot.model import CloudJob, GenerationParams, Submitted

ESD_KEY = "Zq8vT3kW9pL2mN5xR7yB"
DISCORD = "MTA5ODc2NTQzMjEwOTg3NjU0.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"
SLACK = "xoxb-1111111111-2222222222-abcdefABCDEF1234567890ab"
SIGNATURE = "X-Amz-Signature=9f2c0d7e6b5a4f3e2d1c0b9a8f7e6d5c"
PRESIGNED = (
    f"https://bucket.s3.amazonaws.com/out/j/result/image_0.png?X-Amz-Expires=3600&{SIGNATURE}"
)
WEBHOOK = "https://discord.com/api/v10/webhooks/123456789012345678/aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OkFCQw"


def test_redact_each_kind() -> None:
    text = f"key {ESD_KEY} url {PRESIGNED} hook {WEBHOOK} {DISCORD} {SLACK} AKIAABCDEFGHIJKLMNOP"
    # The token shapes are the sections' (Discord's, Slack's, ESD's), not the core's.
    patterns = load_settings(SECTIONS, {}).redaction().patterns
    out = redact(text, [ESD_KEY], patterns)
    for secret in (ESD_KEY, SIGNATURE, "aW50ZXJhY3Rpb24", DISCORD, SLACK, "AKIAABCDEFGHIJKLMNOP"):
        assert secret not in out
    assert "https://bucket.s3.amazonaws.com/out/j/result/image_0.png?[redacted]" in out
    assert "/webhooks/123456789012345678/[redacted]" in out
    # The core alone knows URL query strings, and no platform's token shapes.
    alone = redact(text, [], load_settings([Config], {}).redaction().patterns)
    assert SLACK in alone and DISCORD in alone and SIGNATURE not in alone


class _Chat(Section):
    """A platform added later: its section declares its tokens' shape, nothing in bot/ does."""

    secret_patterns: ClassVar[tuple[re.Pattern[str], ...]] = (
        re.compile(r"\bchat_[0-9a-f]{16}\b"),
        re.compile(r"/hooks/(?P<secret>[0-9a-f]{12,})"),
    )


def test_a_section_declares_the_shape_of_its_tokens() -> None:
    redaction = load_settings([Config, _Chat], {}).redaction()
    stream = io.StringIO()
    setup_logging("INFO", redaction, stream=stream)
    logging.getLogger("sdbot.test").warning(
        "posting with %s to https://chat.example/hooks/0123456789abcdef failed",
        "chat_00ff00ff00ff00ff",
    )
    line = stream.getvalue()
    assert "chat_00ff00ff00ff00ff" not in line and "0123456789abcdef" not in line
    assert "posting with [redacted] to https://chat.example/hooks/[redacted] failed" in line
    assert redaction("chat_1234 is no token") == "chat_1234 is no token"


def test_the_filter_covers_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", Redaction((ESD_KEY,)), stream=stream)
    log = logging.getLogger("sdbot.test")
    log.info("calling with key %s", ESD_KEY)
    try:
        raise RuntimeError(f"GET {PRESIGNED} failed")
    except RuntimeError:
        log.exception("download failed")
    text = stream.getvalue()
    assert ESD_KEY not in text and SIGNATURE not in text
    assert "RuntimeError" in text and "download failed" in text


def test_json_lines() -> None:
    stream = io.StringIO()
    setup_logging("INFO", Redaction((ESD_KEY,)), json_lines=True, stream=stream)
    logging.getLogger("sdbot.test").warning("key=%s", ESD_KEY)
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert record["level"] == "WARNING" and record["message"] == "key=[redacted]"


class LeakyBackend(ScriptedBackend):
    """A backend whose errors carry every kind of secret, as real libraries' errors can."""

    async def submit(
        self,
        job_id: str,
        params: GenerationParams,
        init_png: bytes,
        mask_png: bytes | None,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted:
        if params.prompt == "leak":
            raise BackendError(
                f"PUT {PRESIGNED} with x-api-key {ESD_KEY} failed via {WEBHOOK}",
                user_message=f"upload to {PRESIGNED} refused for key {ESD_KEY}",
            )
        return await super().submit(job_id, params, init_png, mask_png, created=created)


class LeakyHistory(ScriptedBackend):
    """A backend whose refusal to list quotes a token, as a service echoing its input can."""

    async def history(self, task_type: str, limit: int) -> Sequence[CloudJob]:
        raise BackendError("listing refused", user_message=f"no history for {SLACK} {PRESIGNED}")


async def test_a_refusal_quoting_a_backend_shows_no_secret(tmp_path: Path) -> None:
    config = fast_config(tmp_path)
    app = make_app(config, LeakyHistory())
    app.add_adapter(RecordingAdapter())
    responder = RecordingResponder()
    async with app:
        await app.dispatcher.handle_text(
            chat_caller(admin=True), "jobs source=cloud", [], responder
        )
    [refusal] = responder.refusals
    assert refusal.startswith("no history for [redacted]")
    assert SLACK not in refusal and SIGNATURE not in refusal


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_a_full_scenario_leaks_no_secret(tmp_path: Path) -> None:
    stream = io.StringIO()
    config = fast_config(
        tmp_path, discord_token=DISCORD, slack_bot_token=SLACK, esd_api_key=ESD_KEY
    )
    setup_logging("DEBUG", config.redaction(), stream=stream)
    app = make_app(config, LeakyBackend())
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        for prompt in ("leak", "fine"):
            await app.dispatcher.handle_text(
                chat_caller(),
                f"img2img {prompt}",
                [adapter.attach("a.png", png())],
                RecordingResponder(),
            )
        await app.runner.wait_idle()
        jobs = [await app.store.get(v.job_id) for v in adapter.results()]
    logs = stream.getvalue()
    shown = "\n".join(
        [str(p.payload) for p in adapter.posts] + [repr(j) for j in jobs] + [repr(config)]
    )
    assert "refused for key" in shown  # the leaky error did reach the user, redacted
    for secret in (ESD_KEY, DISCORD, SLACK, SIGNATURE, "aW50ZXJhY3Rpb24"):
        assert secret not in logs
        assert secret not in shown
    assert "job" in logs  # the run did log


@pytest.mark.parametrize("json_lines", [False, True])
def test_log_times_are_utc_with_their_offset(
    json_lines: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # a local zone far from UTC
    time.tzset()
    try:
        stream = io.StringIO()
        setup_logging("INFO", json_lines=json_lines, stream=stream)
        record = logging.LogRecord("sdbot.test", logging.INFO, __file__, 1, "hello", (), None)
        record.created = datetime(2026, 12, 3, 21, 4, 2, 123000, tzinfo=UTC).timestamp()
        logging.getLogger().handlers[0].handle(record)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    line = stream.getvalue().strip()
    shown = json.loads(line)["time"] if json_lines else line.split(" ", 1)[0]
    assert shown == "2026-12-03T21:04:02.123+00:00"


@pytest.mark.parametrize("json_lines", [False, True])
def test_every_line_names_the_replica(json_lines: bool) -> None:
    stream = io.StringIO()
    setup_logging("INFO", json_lines=json_lines, stream=stream, replica="host-a:41%")
    logging.getLogger("sdbot.test").info("took job %s", "j1")
    line = stream.getvalue().strip()
    if json_lines:
        assert json.loads(line)["replica"] == "host-a:41%"
    else:
        assert " [host-a:41%] INFO sdbot.test: took job j1" in line
