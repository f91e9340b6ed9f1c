"""Pure conversions between Discord's objects and limits and the core's values.

Nothing here talks to Discord: this module owns the platform's numeric limits, how result
images are grouped into messages, how long texts are split, the marker every result message
starts with, the result embed, `Caller` / `Conversation` / `AttachmentRef` construction from
discord.py objects, modal-submit payload reading, mention clean-up and the quoting that turns
modal fields back into the command grammar. Keeping it pure keeps it unit-testable.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import discord
from PIL import Image, UnidentifiedImageError

from bot.model import AttachmentRef, Caller, Conversation, JobState, Platform
from bot.ports import PlatformTraits

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence

    from bot.views import ResultView, StatusView


DISCORD = Platform("discord")
# How users give an image on Discord (`bot.ports.PlatformTraits`).
DISCORD_TRAITS = PlatformTraits(attach_hint="use the command's `{slot}` option")

MIB = 1024 * 1024
# Discord's own file hosts; attachments are downloaded from nowhere else (SPEC §7).
DISCORD_CDN_ORIGINS: tuple[str, ...] = (
    "https://cdn.discordapp.com",
    "https://media.discordapp.net",
)
MESSAGE_CHARS = 2000  # content of one message
EMBED_DESCRIPTION_CHARS = 4096
EMBED_FIELD_CHARS = 1024
EMBED_TITLE_CHARS = 256
# Every embed limit Discord enforces (dapi: developers/resources/message.mdx "Embed Limits"):
# a message with an embed over any of them is refused (400) and nothing is posted.
EMBED_TOTAL_CHARS = 6000  # title + description + field names and values + footer + author
EMBED_FIELDS = 25
EMBED_FIELD_NAME_CHARS = 256
EMBED_FOOTER_CHARS = 2048
THREAD_NAME_CHARS = 100
MODAL_TITLE_CHARS = 45
MODAL_LABEL_CHARS = 45
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})

_STATE_COLOURS: dict[JobState, discord.Colour] = {
    JobState.SUCCEED: discord.Colour.green(),
    JobState.FAILED: discord.Colour.red(),
    JobState.CANCELLED: discord.Colour.light_grey(),
}


@dataclass(frozen=True)
class DiscordLimits:
    """Discord's message limits (reference/chat-platforms.md §3 "Files")."""

    max_files: int = 10  # per message
    max_message_bytes: int = 25 * MIB  # a whole message request
    # Per file for bot posts where the server's own limit is unknown: 10 MiB, every server's
    # least (premium tiers 0-1; discord.py `Guild.filesize_limit`).
    default_file_bytes: int = 10 * MIB
    # Room kept in each message for the JSON part and multipart framing.
    message_overhead: int = 64 * 1024


# -- Files and texts ---------------------------------------------------------------------------


def plan_batches(sizes: Sequence[int], *, max_files: int, max_bytes: int) -> list[list[int]]:
    """Group files (by index, order kept) into messages of at most `max_files` / `max_bytes`.

    Every size must already be at most `max_bytes`; a file never waits for a later message.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, size in enumerate(sizes):
        if current and (len(current) >= max_files or total + size > max_bytes):
            batches.append(current)
            current, total = [], 0
        current.append(index)
        total += size
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class Shrunk:
    """An image re-encoded to fit a limit: its bytes, file extension and what was done."""

    data: bytes
    extension: str
    how: str


def shrink_image(data: bytes, limit: int) -> Shrunk | None:
    """The image re-encoded to fit in `limit` bytes, losing as little as possible, or None.

    In order: an optimised PNG (lossless), WebP at quality 95 then 90, JPEG at 92 then 85;
    only then the same picture at three quarters of its size and less. A smaller result is
    better than none, and the message says what was done.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            picture = image.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    scale = 1.0
    while scale >= 0.25:
        sized = picture
        if scale < 1.0:
            sized = picture.resize(
                (max(1, int(picture.width * scale)), max(1, int(picture.height * scale))),
                Image.Resampling.LANCZOS,
            )
        for fmt, options, extension, how in _ENCODINGS:
            if fmt == "PNG" and scale < 1.0:
                continue
            buffer = io.BytesIO()
            (sized if fmt != "JPEG" else sized.convert("RGB")).save(buffer, fmt, **options)
            if buffer.tell() <= limit:
                note = how if scale == 1.0 else f"{how}, at {scale:.0%} of its size"
                return Shrunk(buffer.getvalue(), extension, note)
        scale *= 0.75
    return None


_ENCODINGS: tuple[tuple[str, dict[str, Any], str, str], ...] = (
    ("PNG", {"optimize": True, "compress_level": 9}, "png", "re-compressed as PNG (lossless)"),
    ("WEBP", {"quality": 95, "method": 4}, "webp", "re-encoded as WebP (quality 95)"),
    ("WEBP", {"quality": 90, "method": 4}, "webp", "re-encoded as WebP (quality 90)"),
    ("JPEG", {"quality": 92, "optimize": True}, "jpg", "re-encoded as JPEG (quality 92)"),
    ("JPEG", {"quality": 85, "optimize": True}, "jpg", "re-encoded as JPEG (quality 85)"),
)


def renamed(name: str, extension: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{stem}.{extension}"


def chunk_text(text: str, limit: int = MESSAGE_CHARS) -> list[str]:
    """`text` in pieces of at most `limit` characters, split between lines where possible."""
    if len(text) <= limit:
        return [text]
    chunks: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line) > limit:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:limit])
            line = line[limit:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- Result messages ---------------------------------------------------------------------------


def result_marker(job_id: str, what: str, part: int = 1, parts: int = 1) -> str:
    """The first line of every result message: the job id, so a restarted bot can find it."""
    line = f"job `{job_id}` · {what}"
    return f"{line} ({part}/{parts})" if parts > 1 else line


def is_result_message(content: str, job_id: str) -> bool:
    """Whether a message's text starts with the result marker of `job_id`.

    Status messages also name the job, but never start like this, so a status message is not
    mistaken for a posted result.
    """
    return content.startswith(f"job `{job_id}` · ")


def result_kind(view: ResultView) -> str:
    if view.state is JobState.FAILED:
        return "failed"
    if view.state is JobState.CANCELLED:
        return "cancelled"
    if view.caption is not None:
        return "caption"
    return "result"


def result_embed(view: ResultView) -> discord.Embed:
    """The embed of a result: prompt, negative, infotext, job id, endpoint and duration."""
    title = f"{view.command} · {view.job_id} · {view.state.value}"
    embed = discord.Embed(
        title=clip(title, EMBED_TITLE_CHARS), colour=_STATE_COLOURS.get(view.state)
    )
    if view.error is not None:
        embed.description = clip(f"failed: {view.error}", EMBED_DESCRIPTION_CHARS)
    elif view.caption is not None:
        embed.description = clip(view.caption, EMBED_DESCRIPTION_CHARS)
    elif view.prompt:
        embed.description = clip(view.prompt, EMBED_DESCRIPTION_CHARS)
    if view.caption is None and view.prompt and view.error is not None:
        embed.add_field(name="Prompt", value=clip(view.prompt, EMBED_FIELD_CHARS), inline=False)
    if view.negative:
        embed.add_field(name="Negative", value=clip(view.negative, EMBED_FIELD_CHARS), inline=False)
    if view.infotext:
        # A1111 infotext repeats the prompts above its parameter line; the fields show those.
        parameters = view.infotext.strip().splitlines()[-1]
        embed.add_field(name="Parameters", value=clip(parameters, EMBED_FIELD_CHARS), inline=False)
    embed.add_field(name="Job", value=f"`{view.job_id}`")
    if view.endpoint:
        embed.add_field(name="Endpoint", value=clip(f"`{view.endpoint}`", EMBED_FIELD_CHARS))
    if view.duration is not None:
        embed.add_field(name="Duration", value=_duration(view.duration))
    embed.set_footer(text=f"job {view.job_id}" + (f" · {view.notice}" if view.notice else ""))
    return fit_embed(embed)


def fit_embed(embed: discord.Embed, total: int = EMBED_TOTAL_CHARS) -> discord.Embed:
    """`embed` within every embed limit: each piece cut to its own limit, at most 25 fields,
    and — when the pieces together exceed `total` — the longest texts cut until they fit."""
    if embed.title:
        embed.title = clip(embed.title, EMBED_TITLE_CHARS)
    if embed.description:
        embed.description = clip(embed.description, EMBED_DESCRIPTION_CHARS)
    if embed.footer.text:
        embed.set_footer(text=clip(embed.footer.text, EMBED_FOOTER_CHARS))
    while len(embed.fields) > EMBED_FIELDS:
        embed.remove_field(-1)
    for index, f in enumerate(embed.fields):
        embed.set_field_at(
            index,
            name=clip(f.name or "-", EMBED_FIELD_NAME_CHARS),
            value=clip(f.value or "-", EMBED_FIELD_CHARS),
            inline=bool(f.inline),
        )
    while (excess := len(embed) - total) > 0:
        values = [(len(f.value or ""), i) for i, f in enumerate(embed.fields)]
        longest, index = max(values, default=(0, -1))
        if len(embed.description or "") >= longest:
            description = embed.description or ""
            embed.description = clip(description, max(1, len(description) - excess))
        else:
            f = embed.fields[index]
            value = clip(f.value or "", max(1, longest - excess))
            embed.set_field_at(index, name=f.name, value=value, inline=bool(f.inline))
    return embed


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def status_content(status: StatusView) -> str:
    return clip(status.text, MESSAGE_CHARS)


def thread_name(status: StatusView) -> str:
    return clip(f"{status.command} · {status.job_id}", THREAD_NAME_CHARS)


def status_channel(thread: Conversation, message: str) -> str:
    """The channel a status message lives in.

    A thread started from a message has that message's id, and the message itself stays in the
    parent channel; a status posted inside an existing thread (or a DM) lives there.
    """
    if thread.thread is None or thread.thread == message:
        return thread.channel
    return thread.thread


def post_target(thread: Conversation) -> str:
    """Where a job's results and notices go: its thread, else its channel."""
    return thread.thread or thread.channel


# -- Who and where -----------------------------------------------------------------------------


def conversation_of(channel: object, channel_id: int | None) -> Conversation:
    """The `Conversation` of a channel discord.py knows the type of (threads carry a parent)."""
    if isinstance(channel, discord.Thread):
        return Conversation(str(channel.parent_id), str(channel.id))
    return Conversation(str(channel_id if channel_id is not None else getattr(channel, "id", "")))


def member_roles(user: discord.User | discord.Member) -> tuple[str, ...]:
    """Role ids of a guild member (without @everyone), for allow-lists; () in DMs."""
    if not isinstance(user, discord.Member):
        return ()
    return tuple(str(role.id) for role in user.roles if not role.is_default())


def is_admin_permissions(permissions: discord.Permissions) -> bool:
    """Admins are members with Manage Server (SPEC §2.4); Administrator implies it."""
    return permissions.manage_guild or permissions.administrator


def interaction_caller(interaction: discord.Interaction[Any]) -> Caller:
    """The core's `Caller` for an interaction (slash command, button, modal, context menu)."""
    user = interaction.user
    guild_id = interaction.guild_id
    return Caller(
        DISCORD,
        server=str(guild_id) if guild_id is not None else f"dm:{user.id}",
        user=str(user.id),
        conversation=conversation_of(interaction.channel, interaction.channel_id),
        is_admin=guild_id is not None and is_admin_permissions(interaction.permissions),
        user_name=user.display_name,
        roles=member_roles(user),
    )


def message_caller(message: discord.Message, conversation: Conversation) -> Caller:
    """The core's `Caller` for a message (a reply in a job's thread)."""
    author = message.author
    guild_id = _message_guild_id(message)
    is_admin = isinstance(author, discord.Member) and is_admin_permissions(author.guild_permissions)
    return Caller(
        DISCORD,
        server=str(guild_id) if guild_id is not None else f"dm:{author.id}",
        user=str(author.id),
        conversation=conversation,
        is_admin=is_admin,
        user_name=author.display_name,
        roles=member_roles(author),
    )


def _message_guild_id(message: discord.Message) -> int | None:
    if message.guild is not None:
        return message.guild.id
    guild_id = getattr(message.channel, "guild_id", None)
    return guild_id if isinstance(guild_id, int) else None


def is_dm(message: discord.Message) -> bool:
    return isinstance(message.channel, discord.DMChannel | discord.GroupChannel)


def attachment_ref(attachment: discord.Attachment, slot: str = "") -> AttachmentRef:
    return AttachmentRef(
        attachment.filename, attachment.url, attachment.size, attachment.content_type, slot
    )


def is_image_attachment(attachment: discord.Attachment) -> bool:
    """A cheap first look (type and name come from the user); the core decodes for real."""
    if attachment.content_type is not None and attachment.content_type.startswith("image/"):
        return True
    name = attachment.filename.lower()
    return any(name.endswith(ext) for ext in IMAGE_EXTENSIONS)


# -- Texts users wrote -------------------------------------------------------------------------


def strip_bot_mention(text: str, bot_id: int) -> str:
    """The text without the bot's own mention; other mentions stay as written (SPEC §2.3)."""
    return re.sub(rf"<@!?{bot_id}>", " ", text).strip()


def mention_to_id(text: str) -> str:
    """`<@123>` (a user mention, as Discord writes it) → `123`; anything else unchanged."""
    match = re.fullmatch(r"\s*<@!?([0-9]+)>\s*", text)
    return match[1] if match else text


def grammar_quote(text: str) -> str:
    """`text` as one double-quoted word of the command grammar (commands.parse)."""
    escaped = "".join("\\" + char if char in '\\"“”' else char for char in text)
    return f'"{escaped}"'


def modal_values(components: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Text input values of a modal submit by `custom_id` (action rows or labels)."""
    values: dict[str, str] = {}
    for row in components:
        children: list[Mapping[str, Any]]
        if isinstance(row.get("components"), list):
            children = row["components"]
        elif isinstance(row.get("component"), dict):
            children = [row["component"]]
        else:
            children = [row]
        for child in children:
            custom_id, value = child.get("custom_id"), child.get("value")
            if isinstance(custom_id, str) and isinstance(value, str):
                values[custom_id] = value
    return values


# -- URLs --------------------------------------------------------------------------------------


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of a URL (lower case), or None when it has user info or no host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return None
    default = {"https": 443, "http": 80}.get(parts.scheme)
    suffix = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}{suffix}"


def allowed_url(url: str, origins: Collection[str]) -> bool:
    """Whether `url` is on one of Discord's own file hosts (`origins`)."""
    origin = origin_of(url)
    return origin is not None and origin in {o.lower().rstrip("/") for o in origins}
