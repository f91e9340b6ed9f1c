"""The Slack adapter's pure parts: text normalisation and escaping, hosts, ids, Block Kit
limits, modal context, de-duplication and the retry-after reading."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from slack_sdk.http_retry.response import HttpResponse

from adapters.slack.app import RecentKeys
from adapters.slack.blocks import (
    PRIVATE_METADATA_LIMIT,
    SECTION_LIMIT,
    ModalContext,
    edit_modal,
    result_message,
    sections,
    status_message,
)
from adapters.slack.client import api_base_url, retry_after_header
from adapters.slack.convert import (
    attachment_refs,
    escape,
    file_message_id,
    file_url_allowed,
    looks_like_html,
    mentions,
    message_from_event,
    message_id,
    normalize_text,
    parse_message_id,
    starts_with_command,
)
from bot.model import JobState
from bot.views import Action, ActionKind, ResultImage, ResultView, StatusView

if TYPE_CHECKING:
    from adapters.slack.convert import MessagePayload


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("<@UBOT> img2img a cat", "img2img a cat"),
        ("<@UBOT|sdbot> help", "help"),
        ("img2img a &lt;b&gt; &amp; c", "img2img a <b> & c"),
        ("img2img &amp;lt; stays", "img2img &lt; stays"),
        ("img2img like <@U2|bob> and <@U3>", "img2img like @bob and @U3"),
        ("img2img in <#C1|general> for <!here>", "img2img in #general for @here"),
        ("img2img <!subteam^S1|@artists>", "img2img @artists"),
        ("img2img <https://example.com|example.com> style", "img2img example.com style"),
        ("img2img <https://example.com>", "img2img https://example.com"),
        ("img2img prompt=\u201ca cat\u201d", "img2img prompt=\u201ca cat\u201d"),
    ],
)
def test_normalize_text(raw: str, text: str) -> None:
    assert normalize_text(raw, "UBOT") == text


@given(st.text())
def test_escape_then_unescape_is_identity_and_nothing_pings(text: str) -> None:
    escaped = escape(text)
    assert "<" not in escaped and ">" not in escaped
    assert normalize_text(escaped) == text.strip()


def test_mentions_and_commands() -> None:
    assert mentions("hey <@UBOT>", "UBOT") and mentions("<@UBOT|bot> x", "UBOT")
    assert not mentions("hey <@UBOTX>", "UBOT") and not mentions("x", "")
    assert starts_with_command("Inpaint_Sketch a hat") and starts_with_command("help")
    assert not starts_with_command("+ at night") and not starts_with_command("")


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://files.slack.com/files-pri/T1-F1/cat.png", True),
        ("https://files.slack-gov.com/files-pri/T1-F1/cat.png", True),
        ("https://FILES.SLACK.COM:443/files-pri/T1-F1/cat.png", True),
        ("http://files.slack.com/files-pri/T1-F1/cat.png", False),
        ("https://files.slack.com:8443/files-pri/T1-F1/cat.png", False),
        ("https://files.slack.com.evil.example/x.png", False),
        ("https://evil.example/files.slack.com/x.png", False),
        ("https://user@evil.example/x.png", False),
        ("http://127.0.0.1:8080/files-pri/x.png", True),  # the SLACK_API_URL origin
        ("http://127.0.0.1:9090/files-pri/x.png", False),
        ("http://localhost:8080/files-pri/x.png", False),
        ("file:///etc/passwd", False),
        ("not a url", False),
    ],
)
def test_file_hosts(url: str, allowed: bool) -> None:
    assert file_url_allowed(url, "http://127.0.0.1:8080/api/") is allowed


def test_without_an_api_override_only_slacks_hosts_are_trusted() -> None:
    assert not file_url_allowed("http://127.0.0.1:8080/files-pri/x.png", None)
    assert file_url_allowed("https://files.slack.com/files-pri/x.png", None)


def test_message_ids_round_trip() -> None:
    assert parse_message_id(message_id("C1", "1700.0001")) == parse_message_id("C1:1700.0001")
    ref = parse_message_id(message_id("C1", "1700.0001"))
    assert ref is not None and (ref.channel, ref.ts, ref.file_id) == ("C1", "1700.0001", None)
    ref = parse_message_id(file_message_id("C1", "F9"))
    assert ref is not None and (ref.channel, ref.ts, ref.file_id) == ("C1", None, "F9")
    assert parse_message_id("status-abc") is None and parse_message_id(":") is None


def test_html_sniffing() -> None:
    assert looks_like_html(b"\n  <!DOCTYPE html><html>")
    assert looks_like_html(b"<html lang=en>")
    assert not looks_like_html(b"\x89PNG\r\n\x1a\n")


def test_events_that_are_not_people_writing_are_dropped() -> None:
    base: MessagePayload = {
        "type": "message",
        "channel": "C1",
        "user": "U1",
        "text": "hi",
        "ts": "1.0",
    }
    assert message_from_event(base, "T1") is not None
    extras: tuple[MessagePayload, ...] = (
        {"subtype": "message_changed"},
        {"bot_id": "B1"},
        {"user": ""},
    )
    for extra in extras:
        assert message_from_event({**base, **extra}, "T1") is None
    reply = message_from_event({**base, "thread_ts": "0.5"}, "T1")
    assert reply is not None and reply.is_thread_reply and reply.thread_root == "0.5"
    top = message_from_event({**base, "thread_ts": "1.0"}, "T1")
    assert top is not None and not top.is_thread_reply


def test_files_without_a_private_url_are_left_out() -> None:
    refs = attachment_refs(
        [
            {
                "name": "a.png",
                "url_private_download": "https://files.slack.com/a",
                "size": 5,
                "mimetype": "image/png",
            },
            {"name": "gone.png", "mode": "tombstone"},
            {"name": "ext.png", "mode": "external", "url_private": "https://drive/x"},
            {"title": "b", "url_private": "https://files.slack.com/b"},
        ]
    )
    assert [(r.name, r.size, r.slot) for r in refs] == [("a.png", 5, ""), ("b", None, "")]


def test_long_text_is_split_into_sections_under_slacks_limit() -> None:
    text = "\n".join("x" * 100 for _ in range(80))
    blocks = sections(text)
    assert len(blocks) == 3
    assert all(len(b["text"]["text"]) <= SECTION_LIMIT for b in blocks)
    assert "".join(b["text"]["text"] for b in blocks).replace("\n", "") == text.replace("\n", "")
    assert all(len(b["text"]["text"]) <= SECTION_LIMIT for b in sections("y" * 7000))


def test_status_and_result_blocks_carry_the_actions_and_escape_text() -> None:
    status = StatusView(
        "abc",
        "img2img",
        JobState.CREATED,
        "img2img `abc` <!channel>",
        "",
        (Action(ActionKind.CANCEL, "abc"),),
    )
    text, blocks = status_message(status)
    assert "<!channel>" not in text and "&lt;!channel&gt;" in blocks[0]["text"]["text"]
    assert blocks[-1]["elements"][0]["action_id"] == "sdbot:cancel:abc"
    result = ResultView(
        "abc",
        "img2img",
        JobState.SUCCEED,
        "img2img `abc` — succeed",
        images=(ResultImage("a.png", b"x"), ResultImage("b.png", b"y")),
        actions=tuple(Action(ActionKind.USE_AS_INPUT, "abc", i) for i in (1, 2)),
        endpoint="ep",
    )
    _, blocks = result_message(result)
    buttons = blocks[-1]["elements"]
    assert [b["text"]["text"] for b in buttons] == ["Use as input 1", "Use as input 2"]
    assert all(len(b["action_id"]) <= 255 and len(b["text"]["text"]) <= 75 for b in buttons)
    assert "job `abc`" in blocks[-2]["elements"][0]["text"]


def test_modal_context_round_trips_and_respects_the_metadata_limit() -> None:
    meta = ModalContext(
        "C1",
        "1.0",
        action="sdbot:edit:abc",
        files=(("a.png", "https://files.slack.com/a", 5, "image/png"),),
        message="1.0",
    )
    assert ModalContext.load(meta.dump()) == meta
    assert ModalContext.load("{not json") is None
    assert ModalContext.load(json.dumps({"t": "x"})) is None
    view = edit_modal({"prompt": "a cat", "seed": "5"}, ModalContext("C1", None, action="x"))
    assert [b["block_id"] for b in view["blocks"]] == ["prompt", "negative", "strength", "seed"]
    assert len(view["title"]["text"]) <= 24
    huge = ModalContext("C1", None, files=(("a", "u" * PRIVATE_METADATA_LIMIT, None, None),))
    with pytest.raises(ValueError, match="3000"):
        edit_modal({}, huge)


def test_recent_keys_claim_once_and_stay_bounded() -> None:
    keys = RecentKeys(ttl=3600, size=2)
    assert keys.claim("a") and not keys.claim("a")
    assert keys.claim("b") and keys.claim("c")  # "a" is pushed out by the size bound
    assert keys.claim("a")


def test_retry_after_and_base_url() -> None:
    def response(headers: dict[str, str | list[str]]) -> HttpResponse:
        return HttpResponse(status_code=429, headers=headers)

    # slack_sdk hands headers over as lists under the names the server used.
    assert retry_after_header(response({"Retry-After": ["7"]}).headers) == 7.0
    assert retry_after_header(response({"retry-after": ["0"]}).headers) == 0.0
    assert retry_after_header(response({"Retry-After": ["soon"]}).headers) is None
    assert retry_after_header(response({}).headers) is None
    assert api_base_url(None) == "https://slack.com/api/"
    assert api_base_url("https://slack-gov.com/api") == "https://slack-gov.com/api/"
