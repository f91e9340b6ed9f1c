"""`DiscordAdapter`: sdbot on Discord through discord.py (SPEC §5).

It owns the Discord client's lifecycle (REST login, command sync, the gateway connection as a
tracked background task) and implements `bot.ports.ChatAdapter`: status messages that start a
thread per job, in-place status edits, result messages with files split to Discord's limits
and an embed and buttons, marker search after a crash, deletion, and attachment downloads from
Discord's own CDN only. Every job message is posted with the bot token into the job's thread
or channel, never through an interaction token, so a job that takes an hour still delivers.
What users do (commands, buttons, modals, menus, thread replies) is routed by
`adapters.discord.interactions.InteractionRouter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp
import discord
from discord import app_commands

from adapters.discord.commands import CommandSync, install
from adapters.discord.convert import (
    DISCORD,
    DISCORD_CDN_ORIGINS,
    DISCORD_TRAITS,
    MIB,
    DiscordLimits,
    allowed_url,
    chunk_text,
    is_result_message,
    plan_batches,
    post_target,
    renamed,
    result_embed,
    result_kind,
    result_marker,
    shrink_image,
    status_channel,
    status_content,
    thread_name,
)
from adapters.discord.interactions import (
    AUTO_DEFER_AFTER,
    NO_MENTIONS,
    InteractionRouter,
    action_view,
)
from bot.errors import (
    ChatDeliveryError,
    ConfigError,
    ImageInputError,
    OperationalError,
)
from bot.model import Conversation
from bot.ports import PostedStatus
from bot.recent import Recent
from bot.retry import RetryPolicy
from bot.tasks import Supervised, TaskSet, supervise
from bot.tasks import stop as stop_task
from transport.download import TooLargeError, UnavailableError, download
from transport.leased import LeasedConnector

if TYPE_CHECKING:
    from collections.abc import Collection, Coroutine, Iterator, Sequence
    from pathlib import Path

    from adapters.discord.settings import DiscordSettings
    from bot.catalog import Catalog
    from bot.dispatcher import Dispatcher
    from bot.model import AttachmentRef
    from bot.ports import ClaimStore, Clock
    from bot.views import Action, ResultImage, ResultView, StatusView

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

# What the bot needs in a channel; the invite URL asks for exactly these.
REQUIRED_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
)
INVITE_SCOPES = ("bot", "applications.commands")
COMMAND_STATE_FILE = "discord-commands.json"
SUGGESTIONS_REFRESH = 300.0  # seconds between refreshes of model / endpoint autocomplete
SUGGESTIONS_FIRST_WAIT = 10.0  # how long start-up waits for the first list
DOWNLOAD_TIMEOUT = 60.0
THREAD_ARCHIVE_MINUTES: Literal[60, 1440, 4320, 10080] = 1440
HISTORY_SCAN = 100  # recent messages `find_marker` looks through
_CACHE_SIZE = 4096
_SHRINK_TRIES = 3  # times a result is re-fitted after a 413 before giving up


@dataclass(frozen=True)
class Suggestions:
    """Autocomplete values from the backend, refreshed in the background."""

    models: tuple[str, ...] = ()
    endpoints: tuple[tuple[str, str, str], ...] = ()  # name, status, type


class _Tree(app_commands.CommandTree[discord.Client]):
    async def on_error(
        self, interaction: discord.Interaction[discord.Client], error: app_commands.AppCommandError
    ) -> None:
        # Mostly CommandSignatureMismatch: Discord still shows an older command definition.
        _LOGGER.error("app command failed: %r", error)
        if not interaction.response.is_done() and not interaction.is_expired():
            with contextlib.suppress(discord.HTTPException):
                await interaction.response.send_message(
                    "this command could not run (the bot's commands may have just changed; "
                    "try again in a minute)",
                    ephemeral=True,
                )


@dataclass(frozen=True)
class DiscordCore:
    """What the Discord adapter uses of the core, and nothing more (wired in `adapters.cli`):
    the dispatcher its users' events go to, the claims that let one session of a shard act on
    an event, the catalogue (autocomplete values), the clock (dates in options), the
    attachment size cap, and the folder where command sync keeps its state."""

    dispatcher: Dispatcher
    claims: ClaimStore
    catalog: Catalog
    clock: Clock
    max_bytes: int
    state_dir: Path


def invite_url(application_id: int) -> str:
    """The OAuth2 URL that adds the bot to a server with the permissions it needs."""
    return discord.utils.oauth_url(
        application_id, permissions=REQUIRED_PERMISSIONS, scopes=INVITE_SCOPES
    )


class DiscordAdapter:
    """`bot.ports.ChatAdapter` for Discord, plus the client that receives users' events.

    `client` and `gateway=False` let tests drive a REST-only client; `cdn_origins` and
    `limits` default to Discord's own. `message_content=None` takes the setting
    `discord_message_content` from its settings section (off when it has none).
    """

    platform = DISCORD
    traits = DISCORD_TRAITS

    def __init__(
        self,
        core: DiscordCore,
        config: DiscordSettings,
        *,
        client: discord.Client | None = None,
        gateway: bool = True,
        message_content: bool | None = None,
        cdn_origins: Collection[str] = DISCORD_CDN_ORIGINS,
        limits: DiscordLimits | None = None,
        defer_after: float = AUTO_DEFER_AFTER,
        retry: RetryPolicy | None = None,
        http_trace: aiohttp.TraceConfig | None = None,
    ) -> None:
        """`http_trace` observes discord.py's REST requests (request metrics)."""
        self._catalog = core.catalog
        self._config = config
        if message_content is None:
            message_content = config.discord_message_content
        if client is None:
            intents = discord.Intents.default()
            intents.message_content = message_content
            traced: dict[str, Any] = {"http_trace": http_trace} if http_trace else {}
            if config.discord_shard_count:
                # dpy: discord/shard.py: `shard_ids` (all shards when None) of `shard_count`.
                shards: dict[str, Any] = {"shard_count": config.discord_shard_count}
                if config.discord_shard_ids:
                    shards["shard_ids"] = list(config.discord_shard_ids)
                client = discord.AutoShardedClient(
                    intents=intents, allowed_mentions=NO_MENTIONS, **shards, **traced
                )
            else:
                client = discord.Client(intents=intents, allowed_mentions=NO_MENTIONS, **traced)
        self.message_content = client.intents.message_content
        self._client = client
        self._gateway_enabled = gateway
        self._cdn_origins = tuple(cdn_origins)
        self._limits = limits or DiscordLimits()
        self.defer_after = defer_after  # an unanswered interaction is deferred after this
        self._retry = retry or RetryPolicy()  # CDN downloads, threads (discord.py retries the API)
        self._guilds = _guild_ids(config.discord_guilds)
        self._tree = _Tree(client)
        self.router = InteractionRouter(
            self, core.dispatcher, core.claims, clock=core.clock, max_bytes=core.max_bytes
        )
        self._sync = CommandSync(self._tree, core.state_dir / COMMAND_STATE_FILE, self._guilds)
        self.suggestions = Suggestions()
        self._ready = asyncio.Event()
        # The work of each event: the tasks discord.py runs handlers in (adopted by `activity`)
        # and what they start (`spawn`). Held, errors logged, cancelled by `aclose`; the
        # gateway's task is tracked apart, as it outlives every event.
        self._events = TaskSet("the Discord adapter")
        self._connection = TaskSet("the Discord gateway")
        self._suggesting: Supervised | None = None
        self._gateway: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self.accepting = True  # False after `stop`: new requests are turned away
        # Interactions whose "thinking…" answer becomes a pointer to the job's thread; bounded
        # by age: the expired ones (15 minutes) are dropped at each new one.
        self._pending: dict[str, discord.Interaction[Any]] = {}
        # Learned from interactions: the server of each channel / thread id, and each
        # server's per-file upload limit for bot posts (its premium tier's).
        self._guild_of: Recent[str, int] = Recent(_CACHE_SIZE)
        self._guild_limits: Recent[str, int] = Recent(_CACHE_SIZE)
        # Channel id → parent channel id when it is a thread, None when it is not.
        self._parents: Recent[str, str | None] = Recent(_CACHE_SIZE)
        self._dm_channels: Recent[str, None] = Recent(_CACHE_SIZE)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def client(self) -> discord.Client:
        return self._client

    @property
    def bot_user_id(self) -> int | None:
        user = self._client.user
        return user.id if user is not None else None

    async def start(self) -> None:
        """Log in over REST, sync commands if they changed, then connect the gateway."""
        if self._started:
            raise RuntimeError("DiscordAdapter can be started once")
        self._started = True
        token = self._config.discord_token
        if not token:
            raise ConfigError("DISCORD_TOKEN is not set")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT))
        try:
            install(self._tree, self.router, self._guilds)
            self._client.add_dynamic_items(self.router.button)
            self._client.event(self.router.on_message)
            self._client.event(self.router.on_interaction)
            if self._client.http.connector is discord.utils.MISSING:
                # A job driver's requests leave only under its job's lease (transport/leased.py),
                # as on Slack. dpy: discord/http.py `static_login` makes `TCPConnector(limit=0)`
                # when none was given: the same pool, checked. discord.py builds its own session
                # (no `request_class`), so the last check is when the connection is in hand, not
                # in the step that writes the body (one loop turn later; `check_at_send`).
                self._client.http.connector = LeasedConnector(limit=0)
            try:
                await self._client.login(token)
            except discord.LoginFailure:
                raise ConfigError(
                    "DISCORD_TOKEN was rejected by Discord; copy the bot token again from the "
                    "Developer Portal (Bot → Reset Token)"
                ) from None
            self._check_intents()
            self._ready.set()
            application = self._client.application_id
            if application is not None:
                _LOGGER.info("Discord: invite the bot with %s", invite_url(application))
                await self.sync_commands()
            try:
                await asyncio.wait_for(self.refresh_suggestions(), SUGGESTIONS_FIRST_WAIT)
            except TimeoutError:
                _LOGGER.warning("the backend was slow to list models; autocomplete fills later")
            self._suggesting = supervise(
                "sdbot-discord-suggestions", self._refresh_suggestions_forever
            )
            if self._gateway_enabled:
                self._gateway = self._connection.spawn(self._run_gateway(), "sdbot-discord-gateway")
        except BaseException:
            await self.aclose()
            raise

    def _check_intents(self) -> None:
        if not (self._gateway_enabled and self.message_content):
            return
        application = self._client.application
        if application is None:
            return
        flags = application.flags
        if not (flags.gateway_message_content or flags.gateway_message_content_limited):
            raise ConfigError(
                "discord_message_content is on, but the Message Content intent is not enabled "
                "for this application: enable it in the Developer Portal (Bot → Privileged "
                "Gateway Intents) or turn the setting off (replies must then mention the bot)"
            )

    async def sync_commands(self, *, force: bool = False) -> list[str]:
        """Push the slash commands and menus to Discord if they changed (or with `force`)."""
        application = self._client.application_id
        if application is None:
            return []
        try:
            return await self._sync.sync(application, force=force)
        except discord.Forbidden:
            _LOGGER.error(
                "Discord refused to register the commands: invite the bot with the "
                "`applications.commands` scope (%s)",
                invite_url(application),
            )
        except discord.HTTPException as exc:
            _LOGGER.error("syncing Discord commands failed (retried on the next start): %s", exc)
        return []

    async def _run_gateway(self) -> None:
        try:
            await self._client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            raise ConfigError(
                "Discord refused the gateway connection: the Message Content intent is not "
                "enabled in the Developer Portal (Bot → Privileged Gateway Intents); enable it "
                "or turn discord_message_content off"
            ) from None
        except discord.LoginFailure:
            raise ConfigError("DISCORD_TOKEN was rejected by Discord's gateway") from None
        except discord.DiscordException as exc:
            # connect() reconnects by itself; what reaches here does not heal by waiting.
            raise ChatDeliveryError(f"the Discord gateway connection ended: {exc}") from exc

    async def wait_closed(self) -> None:
        """Return when the gateway connection ends: after `aclose`, or with its error.

        discord.py reconnects by itself after network failures; what ends the connection
        otherwise is a `ConfigError` (token, intents) or a `ChatDeliveryError`.
        """
        gateway = self._gateway
        if gateway is None:
            return
        await asyncio.wait({gateway})
        error = None if gateway.cancelled() else gateway.exception()
        if error is not None:
            raise error

    async def stop(self) -> None:
        """Stop taking new requests; posting stays possible while the core winds down.

        Commands, buttons and forms arriving after this are answered "restarting" (privately),
        thread replies are ignored.
        """
        self.accepting = False

    async def aclose(self) -> None:
        """Disconnect and stop every background task of the adapter."""
        self.accepting = False
        self._ready.clear()
        self._gateway = None
        suggesting, self._suggesting = self._suggesting, None
        await stop_task(suggesting.task if suggesting is not None else None)
        await self._events.aclose()
        try:
            await self._client.close()
        except Exception:
            _LOGGER.exception("closing the Discord client failed")
        await self._connection.aclose()  # the gateway ends when the client closes
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> DiscordAdapter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- bookkeeping shared with the router --------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, _T], name: str) -> asyncio.Task[_T]:
        """Start a named background task that `aclose` cancels; its error is logged."""
        return self._events.spawn(coro, name)

    @contextlib.contextmanager
    def activity(self) -> Iterator[None]:
        """Mark an event being handled: the task discord.py runs its handler in is tracked
        until it ends (`wait_idle` waits for none to be; `aclose` cancels them)."""
        task = asyncio.current_task()
        if task is not None:
            self._events.adopt(task)
        yield

    async def wait_idle(self) -> None:
        """Return once no user event is being handled (tests; orderly shutdown)."""
        await self._events.wait_idle()

    def learn(self, interaction: discord.Interaction[Any]) -> None:
        """Remember what an interaction tells about its channel: DM or not, its server.

        Not its `attachment_size_limit`: that is what the *invoking user* may upload (their
        Nitro: up to 500 MiB) for answers to this interaction, while bot-token posts are held
        to the server's own limit (dapi: developers/reference.mdx "Uploading Files")."""
        channel = interaction.channel
        ids = [str(interaction.channel_id)] if interaction.channel_id is not None else []
        if isinstance(channel, discord.Thread):
            ids.append(str(channel.parent_id))
            self._parents[str(channel.id)] = str(channel.parent_id)
        if interaction.guild_id is None and ids:
            self._dm_channels[ids[0]] = None
        if interaction.guild_id is not None:
            for channel_id in ids:
                self._guild_of[channel_id] = interaction.guild_id

    def remember_interaction(self, job_id: str, interaction: discord.Interaction[Any]) -> None:
        self._pending = {k: v for k, v in self._pending.items() if not v.is_expired()}
        self._pending[job_id] = interaction

    async def conversation_of_message(self, message: discord.Message) -> Conversation:
        """Channel and thread of a message, looking the channel up when it is not cached."""
        channel = message.channel
        if isinstance(channel, discord.Thread):
            return Conversation(str(channel.parent_id), str(channel.id))
        channel_id = str(channel.id)
        if not isinstance(channel, discord.PartialMessageable):
            return Conversation(channel_id)  # a cached channel that is not a thread, or a DM
        parent = await self._parent_of(channel_id)
        return Conversation(parent, channel_id) if parent is not None else Conversation(channel_id)

    async def _parent_of(self, channel_id: str) -> str | None:
        if channel_id in self._parents:
            self._parents.move_to_end(channel_id)
            return self._parents[channel_id]
        parent: str | None = None
        try:
            channel = await self._client.fetch_channel(int(channel_id))
        except discord.HTTPException as exc:
            _LOGGER.warning("could not look up channel %s: %s", channel_id, exc)
        else:
            if isinstance(channel, discord.Thread):
                parent = str(channel.parent_id)
        self._parents[channel_id] = parent
        return parent

    async def refresh_suggestions(self) -> None:
        """Re-read checkpoints and endpoints for autocomplete (kept when the backend fails)."""
        try:
            models = await self._catalog.models("Stable-diffusion")
            endpoints = await self._catalog.endpoints()
        except OperationalError as exc:
            _LOGGER.warning("could not refresh autocomplete values: %s", exc)
            return
        self.suggestions = Suggestions(
            tuple(sorted({m.name for m in models})),
            tuple((e.name, e.status, e.type) for e in sorted(endpoints, key=lambda e: e.name)),
        )

    async def _refresh_suggestions_forever(self) -> None:
        while True:
            await asyncio.sleep(SUGGESTIONS_REFRESH)
            await self.refresh_suggestions()

    # -- files -----------------------------------------------------------------------------

    async def _file_limit(self, thread: Conversation) -> int:
        """The per-file upload limit of bot posts in `thread`: its server's."""
        cached = self._client.get_channel(int(thread.channel))
        guild = getattr(cached, "guild", None)
        if isinstance(guild, discord.Guild):
            return guild.filesize_limit
        guild_id = self._guild_of.get(thread.channel)
        if guild_id is None:  # a DM, or a server the bot has not seen since it started
            return self._limits.default_file_bytes
        cached_guild = self._client.get_guild(guild_id)
        if cached_guild is not None:
            return cached_guild.filesize_limit
        key = str(guild_id)
        if key not in self._guild_limits:
            try:
                fetched = await self._client.fetch_guild(guild_id, with_counts=False)
            except (discord.DiscordException, aiohttp.ClientError, TimeoutError) as exc:
                _LOGGER.info("could not read server %s's upload limit: %s", guild_id, exc)
                return self._limits.default_file_bytes
            self._guild_limits[key] = fetched.filesize_limit
        return int(self._guild_limits[key])

    async def _fit_images(
        self, images: Sequence[ResultImage], per_file: int
    ) -> tuple[list[tuple[str, bytes]], list[str]]:
        """Images that fit the per-file limit (re-encoded when needed), and notes saying so."""
        fitted: list[tuple[str, bytes]] = []
        notes: list[str] = []
        limit = min(per_file, self._limits.max_message_bytes - self._limits.message_overhead)
        shown = f"{limit / MIB:.0f} MiB"
        for number, image in enumerate(images, start=1):
            if len(image.data) <= limit:
                fitted.append((image.name, image.data))
                continue
            smaller = await asyncio.to_thread(shrink_image, image.data, limit)
            if smaller is None:
                notes.append(f"image {number} cannot be made to fit this server's {shown} limit")
            else:
                fitted.append((renamed(image.name, smaller.extension), smaller.data))
                notes.append(f"image {number} was {smaller.how} to fit this server's {shown} limit")
        return fitted, notes

    def _batches(self, files: Sequence[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
        plan = plan_batches(
            [len(data) for _, data in files],
            max_files=self._limits.max_files,
            max_bytes=self._limits.max_message_bytes - self._limits.message_overhead,
        )
        return [[files[i] for i in batch] for batch in plan]

    async def file_batches(
        self, images: Sequence[ResultImage], per_file: int
    ) -> list[list[discord.File]]:
        """Images as message-sized groups of files (for interaction answers)."""
        if not images:
            return []
        fitted, notes = await self._fit_images(images, per_file)
        for note in notes:
            _LOGGER.info("answer: %s", note)
        return [_files(batch) for batch in self._batches(fitted)]

    # -- ChatAdapter -----------------------------------------------------------------------

    async def download(self, ref: AttachmentRef, max_bytes: int) -> bytes:
        await self._ready.wait()
        too_big = _too_big(ref, max_bytes)
        if ref.size is not None and ref.size > max_bytes:
            raise too_big
        if not allowed_url(ref.url, self._cdn_origins):
            raise ImageInputError(
                f"{ref.name} is not on Discord's file servers; attach the image itself"
            )
        try:
            return await self._fetch(ref, ref.url, max_bytes)
        except _Expired:
            fresh = await self._refresh_url(ref.url)
            if fresh is None:
                raise ImageInputError(
                    f"{ref.name}'s link on Discord has expired and could not be renewed; "
                    "attach it again"
                ) from None
            try:
                return await self._fetch(ref, fresh, max_bytes)
            except _Expired:
                raise ImageInputError(
                    f"{ref.name} is no longer on Discord (deleted?); attach it again"
                ) from None

    async def _refresh_url(self, url: str) -> str | None:
        """A fresh signed URL for an attachment whose link expired: Discord's
        `POST /attachments/refresh-urls` (dapi: developers/reference.mdx "Signed Attachment
        CDN URLs"); None when Discord does not renew it."""
        try:
            data = await self._client.http.request(
                discord.http.Route("POST", "/attachments/refresh-urls"),
                json={"attachment_urls": [url]},
            )
        except (discord.DiscordException, aiohttp.ClientError, TimeoutError) as exc:
            _LOGGER.warning("renewing an attachment link failed: %s", type(exc).__name__)
            return None
        for entry in (data or {}).get("refreshed_urls") or []:
            fresh = entry.get("refreshed")
            if isinstance(fresh, str) and allowed_url(fresh, self._cdn_origins):
                return fresh
        return None

    async def _fetch(self, ref: AttachmentRef, url: str, max_bytes: int) -> bytes:
        """The attachment's bytes; the CDN's 429 / 5xx / broken connections are tried again."""
        session = self._session
        if session is None:
            raise ChatDeliveryError("the Discord adapter is closed")
        try:
            fetched = await download(
                session,
                url,
                max_bytes=max_bytes,
                policy=self._retry,
                timeouts=aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT),
                allow_redirects=False,
            )
        except TooLargeError:
            raise _too_big(ref, max_bytes) from None
        except UnavailableError as exc:
            raise ImageInputError(
                f"{ref.name} could not be downloaded from Discord ({exc.what}); "
                "try again in a minute"
            ) from None
        if fetched.status in (403, 404) and "hm=" in url:
            # A signed link past its `ex` answers 404 "This content is no longer available"
            # (dapi: developers/reference.mdx "Signed Attachment CDN URLs").
            raise _Expired
        if fetched.status != 200:
            raise ImageInputError(
                f"{ref.name} could not be downloaded from Discord (HTTP {fetched.status}); "
                "attach it again"
            )
        return fetched.body

    async def open_job_thread(
        self, where: Conversation, status: StatusView, *, again: bool = False
    ) -> PostedStatus:
        # `again` needs no look here: the job's nonce below makes Discord return an earlier
        # post instead of making a second (for a few minutes after it).
        await self._ready.wait()
        try:
            # One nonce per job: a status post that Discord made before answering 5xx, and that
            # the runner repeats at delivery, comes back as the first message (see `_send`).
            message = await self._send(
                post_target(where),
                status_content(status),
                view=self._view(status.actions),
                nonce=f"sdbot-status-{status.job_id}",
            )
        except ChatDeliveryError:
            await self._point(
                status.job_id,
                "I cannot post in this channel: I need View Channel, Send Messages, Create "
                "Public Threads and Send Messages in Threads here",
            )
            raise
        thread = where
        if where.thread is None and where.channel not in self._dm_channels:
            thread = await self._start_thread(where, message, status)
        if thread.thread is not None and thread.thread != where.thread:
            pointer = f"job `{status.job_id}` accepted — follow it in <#{thread.thread}>"
        else:
            pointer = f"job `{status.job_id}` accepted — its status is below"
        await self._point(status.job_id, pointer)
        return PostedStatus(thread, str(message.id))

    async def _start_thread(
        self, where: Conversation, message: discord.Message, status: StatusView
    ) -> Conversation:

        async def once() -> Any:
            # Through the REST client: `Message.create_thread` wants the guild in the cache,
            # which a resumed job may not have yet.
            return await self._client.http.start_thread_with_message(
                int(where.channel),
                message.id,
                name=thread_name(status),
                auto_archive_duration=THREAD_ARCHIVE_MINUTES,
                rate_limit_per_user=None,
            )

        try:
            # discord.py retries a 5xx a few times; a longer outage is retried here too, so a
            # job keeps its thread (a try that made the thread and then failed comes back as
            # 160004 below).
            data = await self._retry.run(
                once, retry_if=_server_trouble, what=f"thread for job {status.job_id}"
            )
        except discord.HTTPException as exc:
            if exc.code == 160004:
                # "A thread has already been created for this message": an earlier try made it
                # and then failed (5xx after the work). A message's thread has its id
                # (dapi: developers/resources/channel.mdx "Start Thread from Message").
                thread_id = str(message.id)
                self._parents[thread_id] = where.channel
                return Conversation(where.channel, thread_id)
            _LOGGER.warning(
                "job %s: no thread in channel %s (%s); the job stays in the channel",
                status.job_id,
                where.channel,
                exc,
            )
            return where
        thread_id = str(data["id"])
        self._parents[thread_id] = where.channel
        if where.channel in self._guild_of:
            self._guild_of[thread_id] = self._guild_of[where.channel]
        return Conversation(where.channel, thread_id)

    async def _point(self, job_id: str, text: str) -> None:
        """Replace an interaction's "thinking…" with `text`, while its token lives."""
        interaction = self._pending.pop(job_id, None)
        if interaction is None or interaction.is_expired():
            return
        try:
            await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            _LOGGER.info("job %s: could not update the interaction answer: %s", job_id, exc)

    async def edit_status(self, thread: Conversation, message: str, status: StatusView) -> None:
        await self._ready.wait()
        channel = self._client.get_partial_messageable(int(status_channel(thread, message)))
        # A backend's live preview replaces the last one; a finished job's status drops it.
        files: dict[str, Any] = {}
        if status.preview is not None:
            files["attachments"] = [discord.File(io.BytesIO(status.preview), "preview.png")]
        elif status.state.terminal:
            files["attachments"] = []
        try:
            await channel.get_partial_message(int(message)).edit(
                content=status_content(status),
                view=self._view(status.actions),
                allowed_mentions=NO_MENTIONS,
                **files,
            )
        except (discord.DiscordException, aiohttp.ClientError, TimeoutError) as exc:
            raise ChatDeliveryError(f"editing status message {message} failed: {exc}") from exc

    async def post_result(self, thread: Conversation, result: ResultView) -> Sequence[str]:
        await self._ready.wait()
        limit = await self._file_limit(thread)
        for _ in range(_SHRINK_TRIES):
            try:
                return await self._post_result(thread, result, limit)
            except _TooLarge:
                # The server's limit is lower than we knew (boosts lost): never lose the
                # result to a 413 — fit the images to half and post again.
                limit //= 2
                _LOGGER.info("job %s: Discord refused the files as too large", result.job_id)
        return await self._post_result(thread, result, limit)

    async def _post_result(
        self, thread: Conversation, result: ResultView, limit: int
    ) -> Sequence[str]:
        target = post_target(thread)
        files, notes = await self._fit_images(result.images, limit)
        batches = self._batches(files) or [[]]
        kind = result_kind(result)
        posted: list[discord.Message] = []
        try:
            for number, batch in enumerate(batches, start=1):
                content = result_marker(result.job_id, kind, number, len(batches))
                if number == 1 and notes:
                    content += "\n" + "\n".join(notes)
                last = number == len(batches)
                message = await self._send(
                    target,
                    content,
                    embed=result_embed(result) if number == 1 else None,
                    files=_files(batch),
                    view=self._view(result.actions) if last else None,
                )
                posted.append(message)
        except ChatDeliveryError:
            # Take back a partly posted result, so the retry posts it whole, once.
            for message in posted:
                with contextlib.suppress(discord.HTTPException):
                    await message.delete()
            raise
        return [str(m.id) for m in posted]

    async def post_text(self, thread: Conversation, text: str) -> str:
        await self._ready.wait()
        target = post_target(thread)
        ids = [str((await self._send(target, chunk)).id) for chunk in chunk_text(text)]
        return ids[0]

    async def find_marker(self, thread: Conversation, marker: str) -> Sequence[str]:
        await self._ready.wait()
        channel = self._client.get_partial_messageable(int(post_target(thread)))
        found: list[str] = []
        try:
            async for message in channel.history(limit=HISTORY_SCAN):
                if message.author.id == self.bot_user_id and is_result_message(
                    message.content, marker
                ):
                    found.append(str(message.id))
        except (discord.DiscordException, aiohttp.ClientError, TimeoutError) as exc:
            raise ChatDeliveryError(f"reading the job's thread failed: {exc}") from exc
        return list(reversed(found))

    async def delete_messages(self, thread: Conversation, messages: Sequence[str]) -> None:
        await self._ready.wait()
        channel = self._client.get_partial_messageable(int(post_target(thread)))
        for message in messages:
            try:
                await channel.get_partial_message(int(message)).delete()
            except discord.NotFound:
                continue
            except (discord.DiscordException, aiohttp.ClientError, TimeoutError) as exc:
                raise ChatDeliveryError(f"deleting message {message} failed: {exc}") from exc

    # -- posting ---------------------------------------------------------------------------

    def _view(self, actions: Sequence[Action]) -> discord.ui.View | None:
        return action_view(actions, self.router.button)

    async def _send(
        self,
        target: str,
        content: str,
        *,
        embed: discord.Embed | None = None,
        files: Sequence[discord.File] = (),
        view: discord.ui.View | None = None,
        nonce: str | None = None,
    ) -> discord.Message:
        """Post with the bot token; Discord's 429s are waited out by discord.py itself."""
        channel = self._client.get_partial_messageable(int(target))
        # discord.py gives every message a random nonce with `enforce_nonce`, so its own retry
        # after a 5xx that Discord had already acted on returns the first message instead of
        # posting a second (dapi: developers/resources/message.mdx "Create Message").
        kwargs: dict[str, Any] = {"allowed_mentions": NO_MENTIONS}
        if embed is not None:
            kwargs["embed"] = embed
        if files:
            kwargs["files"] = list(files)
        if view is not None:
            kwargs["view"] = view
        if nonce is not None:
            # At most 25 characters (dapi: developers/resources/message.mdx "Create Message").
            kwargs["nonce"] = nonce[:25]
        try:
            return await channel.send(content, **kwargs)
        except discord.HTTPException as exc:
            # 413 / 40005: a file is over the server's upload limit
            # (dapi: developers/topics/opcodes-and-status-codes.mdx).
            error = _TooLarge if exc.status == 413 or exc.code == 40005 else ChatDeliveryError
            raise error(f"posting to Discord channel {target} failed: {exc}") from exc
        except (discord.DiscordException, aiohttp.ClientError, TimeoutError) as exc:
            raise ChatDeliveryError(f"posting to Discord channel {target} failed: {exc}") from exc


def _server_trouble(exc: Exception) -> bool:
    """Discord's 5xx (after discord.py's own retries) or a lost connection: worth a retry."""
    return isinstance(exc, (discord.DiscordServerError, aiohttp.ClientError, TimeoutError))


def _too_big(ref: AttachmentRef, max_bytes: int) -> ImageInputError:
    return ImageInputError(
        f"{ref.name} is over the {max_bytes / 1e6:.0f} MB limit; send a smaller image"
    )


class _Expired(Exception):
    """The CDN refused a signed attachment link (expired)."""


class _TooLarge(ChatDeliveryError):
    """Discord refused a post's files as over the upload limit."""


def _files(batch: Sequence[tuple[str, bytes]]) -> list[discord.File]:
    # discord.File objects are single use; a retry builds new ones.
    return [discord.File(io.BytesIO(data), filename=name) for name, data in batch]


def _guild_ids(values: Sequence[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ConfigError(
            f"discord_guilds must be guild ids (numbers), got {', '.join(values)}"
        ) from None
