"""Pure conversions between Slack's wire payloads and sdbot's values (no I/O).

Slack's JSON stays here: incoming events, slash commands and interactive payloads are read
through `TypedDict`s once and turned into frozen dataclasses (`SlackMessage`, `SlackTarget`);
message text is normalised for the grammar (SPEC §2.3: Slack's HTML escapes undone, the bot's
own mention removed, other mention tokens kept as text), and text going back to Slack is
escaped so a prompt can never ping `@channel`. Message ids handed to the core are
`<channel>:<ts>` (a Slack ts is only unique within its channel); uploaded files are
`<channel>:file:<file id>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlsplit

from bot.model import AttachmentRef, Platform
from bot.ports import PlatformTraits
from commands import COMMANDS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


SLACK = Platform("slack")
# How users give an image on Slack (`bot.ports.PlatformTraits`).
SLACK_TRAITS = PlatformTraits(attach_hint="attach the file(s) to a message that mentions the bot")

# Slack's own file hosts (commercial Slack and GovSlack); private files live there.
SLACK_FILE_HOSTS: frozenset[str] = frozenset({"files.slack.com", "files.slack-gov.com"})

# Message subtypes that are a person writing (files shared, thread replies sent to the channel
# too); edits, deletions, joins and bot messages are not commands.
_USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
# `<@U123>`, `<@U123|name>`, `<#C123|general>`, `<!here>`, `<https://x|label>` …
_TOKEN = re.compile(r"<([^<>\n]*)>")
_FILE_PART = ":file:"
# Files shared from another organisation (Slack Connect) arrive as a stub with
# `file_access: "check_file_info"` and no URLs; `files.info` tells the rest
# (https://docs.slack.dev/reference/events/message/file_share#slack-connect-files). Until
# then the reference carries this scheme and the file id.
CHECK_FILE_INFO = "slack-file-info:"
_ENTITY = re.compile(r"&(?:[A-Za-z]{2,8}|#[0-9]{1,6});")


# -- Wire shapes ------------------------------------------------------------------------------


class FilePayload(TypedDict, total=False):
    """A file object as Slack sends it in message events and shortcut payloads."""

    id: str
    name: str
    title: str
    mimetype: str
    filetype: str
    size: int
    mode: str  # "hosted", "external", "tombstone" (deleted), "hidden_by_limit", …
    url_private: str
    url_private_download: str
    file_access: str  # "check_file_info" for Slack Connect stubs


class MessagePayload(TypedDict, total=False):
    """A `message` / `app_mention` event, or the `message` of a message shortcut."""

    type: str
    subtype: str
    channel: str
    channel_type: str
    user: str
    bot_id: str
    text: str
    ts: str
    thread_ts: str
    files: list[FilePayload]
    team: str


# -- Values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlackMessage:
    """A message a person wrote, as the adapter routes it."""

    team: str
    channel: str
    user: str
    text: str  # raw Slack text (escapes and tokens as Slack sent them)
    ts: str
    thread_ts: str | None
    files: tuple[AttachmentRef, ...]
    channel_type: str = ""
    has_files: bool = False  # the payload carried a `files` list (possibly empty)

    @property
    def is_thread_reply(self) -> bool:
        """A reply inside a thread: Slack marks those with `thread_ts` ≠ `ts`."""
        return self.thread_ts is not None and self.thread_ts != self.ts

    @property
    def thread_root(self) -> str:
        """The ts that threads under this message: its thread's parent, else itself."""
        return self.thread_ts or self.ts

    @property
    def is_direct(self) -> bool:
        return self.channel_type == "im" or self.channel.startswith("D")


@dataclass(frozen=True)
class SlackTarget:
    """Where an interactive payload (button, shortcut, modal) came from."""

    team: str
    user: str
    user_name: str
    channel: str
    thread: str | None  # the thread's parent ts, when the payload came from a thread


# -- Reading payloads -------------------------------------------------------------------------


def message_from_event(event: MessagePayload, team: str) -> SlackMessage | None:
    """A person's message from a `message` / `app_mention` event, or None for anything else
    (edits, deletions, bot messages, channel joins …)."""
    if event.get("subtype") not in _USER_SUBTYPES:
        return None
    if event.get("bot_id") or not event.get("user") or not event.get("ts"):
        return None
    channel = event.get("channel")
    if not isinstance(channel, str) or not channel:
        return None
    raw_files = event.get("files")
    files = attachment_refs(raw_files) if isinstance(raw_files, list) else ()
    thread_ts = event.get("thread_ts")
    return SlackMessage(
        team=team,
        channel=channel,
        user=str(event["user"]),
        text=str(event.get("text") or ""),
        ts=str(event["ts"]),
        thread_ts=str(thread_ts) if thread_ts else None,
        files=files,
        channel_type=str(event.get("channel_type") or ""),
        has_files=isinstance(raw_files, list),
    )


def attachment_refs(files: Iterable[FilePayload]) -> tuple[AttachmentRef, ...]:
    """Slack file objects as attachment references, in the order the user attached them.

    Files without a private URL (deleted, external, hidden by the plan's limit) are left out;
    Slack Connect stubs (`file_access: "check_file_info"`) are kept as `CHECK_FILE_INFO`
    references for the adapter to resolve with `files.info`. The slot stays "" so the core
    assigns image / mask / sketch by name, then order.
    """
    refs = []
    for f in files:
        if f.get("file_access") == "check_file_info" and f.get("id"):
            file_id = str(f["id"])
            refs.append(AttachmentRef(name=file_id, url=CHECK_FILE_INFO + file_id))
            continue
        url = f.get("url_private_download") or f.get("url_private")
        if not isinstance(url, str) or not url or f.get("mode") in ("tombstone", "external"):
            continue
        size = f.get("size")
        mimetype = f.get("mimetype")
        refs.append(
            AttachmentRef(
                name=str(f.get("name") or f.get("title") or f.get("id") or "file"),
                url=url,
                size=size if isinstance(size, int) else None,
                content_type=mimetype if isinstance(mimetype, str) else None,
            )
        )
    return tuple(refs)


def target_from_interaction(body: Mapping[str, Any], team: str) -> SlackTarget:
    """The user and conversation of a `block_actions` / `message_action` payload."""
    user = body.get("user") or {}
    channel = body.get("channel") or {}
    message = body.get("message") or {}
    thread = message.get("thread_ts") or message.get("ts")
    return SlackTarget(
        team=team,
        user=str(user.get("id") or ""),
        user_name=str(user.get("username") or user.get("name") or ""),
        channel=str(channel.get("id") or ""),
        thread=str(thread) if thread else None,
    )


def team_of(body: Mapping[str, Any], context_team: str | None) -> str:
    """The workspace a request belongs to (Bolt's resolution first, then the body's fields)."""
    if context_team:
        return context_team
    for key in ("team_id", "enterprise_id"):
        if isinstance(body.get(key), str) and body[key]:
            return str(body[key])
    team = body.get("team")
    if isinstance(team, dict) and team.get("id"):
        return str(team["id"])
    user = body.get("user")
    if isinstance(user, dict) and user.get("team_id"):
        return str(user["team_id"])
    return ""


# -- Text -------------------------------------------------------------------------------------


def mentions(text: str, user_id: str) -> bool:
    """Whether `text` mentions `user_id` (`<@U123>` or `<@U123|name>`)."""
    return bool(user_id) and (f"<@{user_id}>" in text or f"<@{user_id}|" in text)


def normalize_text(text: str, bot_user_id: str | None = None) -> str:
    """Slack message text as the grammar reads it (SPEC §2.3).

    Tokens are rewritten first (they use real angle brackets), then the HTML escapes that
    stand for the user's own `<`, `>` and `&` are undone — `&amp;` last, so `&amp;lt;` stays
    the literal text `&lt;`.
    """

    def token(match: re.Match[str]) -> str:
        target, _, label = match[1].partition("|")
        if target.startswith("@"):
            if bot_user_id and target[1:] == bot_user_id:
                return " "
            return "@" + (label or target[1:])
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!"):
            # <!here>, <!channel>, <!subteam^S1|@team>, <!date^…|fallback>
            return label or "@" + target[1:].split("^", 1)[0]
        return label or target  # links: what the user typed

    text = _TOKEN.sub(token, text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.strip()


def escape(text: str) -> str:
    """Text safe to post as Slack mrkdwn: `&`, `<`, `>` escaped, so nothing becomes a
    mention, a channel-wide ping or a link the user did not write as one."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def starts_with_command(text: str) -> bool:
    """Whether normalised text begins with a command name (`img2img …`, `help`)."""
    words = text.split(maxsplit=1)
    return bool(words) and words[0].lower().replace("_", "-") in COMMANDS


def safe_cut(text: str, limit: int) -> int:
    """The longest prefix length ≤ `limit` that does not end inside an HTML entity (`&lt;`)
    or a mrkdwn token (`<@U123>`, `<https://x|label>`): Slack would show half of one as
    garbage, or swallow the rest of the message into a broken link."""
    cut = min(limit, len(text))
    amp = text.rfind("&", max(0, cut - 9), cut)
    if amp != -1:
        entity = _ENTITY.match(text, amp)
        if entity is not None and entity.end() > cut:
            cut = amp
    opening = text.rfind("<", 0, cut)
    if opening != -1 and text.rfind(">", opening, cut) == -1:
        closing = text.find(">", opening)
        if closing != -1 and "\n" not in text[opening:closing]:
            cut = opening
    return cut


def truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marking the cut; never inside an entity or token."""
    return text if len(text) <= limit else text[: safe_cut(text, limit - 1)] + "…"


# -- Ids and hosts ----------------------------------------------------------------------------


def message_id(channel: str, ts: str) -> str:
    return f"{channel}:{ts}"


def file_message_id(channel: str, file_id: str) -> str:
    return f"{channel}{_FILE_PART}{file_id}"


@dataclass(frozen=True)
class MessageRef:
    """A message id from the core, split: a message (`ts`) or an uploaded file (`file_id`)."""

    channel: str
    ts: str | None = None
    file_id: str | None = None


def parse_message_id(value: str) -> MessageRef | None:
    """The channel and ts (or file id) of an id made by `message_id` / `file_message_id`."""
    if _FILE_PART in value:
        channel, _, file_id = value.partition(_FILE_PART)
        return MessageRef(channel, file_id=file_id) if channel and file_id else None
    channel, _, ts = value.partition(":")
    return MessageRef(channel, ts=ts) if channel and ts else None


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, lower-cased; the port only when written."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def file_url_allowed(url: str, api_url: str | None) -> bool:
    """Whether the bot may send its token to fetch `url` (SPEC §7).

    Slack's own file hosts over https on the default port, and, when `SLACK_API_URL`
    overrides the Web API, that URL's own origin (scheme, host and port).
    """
    scheme, host, port = origin(url)
    if scheme == "https" and host in SLACK_FILE_HOSTS and port in (None, 443):
        return True
    return api_url is not None and origin(api_url) == (scheme, host, port)


def looks_like_html(head: bytes) -> bool:
    """Whether a download starts like a web page (Slack's sign-in page for a bad token)."""
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<!--"))
