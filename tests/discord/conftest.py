"""Offline harness for the Discord adapter: a loopback fake of Discord's REST API and CDN, and a
gateway-less discord.py client fed events through its own state parser.

`discord.http.Route.BASE` points at the fake (REST, webhooks and interaction callbacks all use
it); interactions and messages go through `ConnectionState.parse_interaction_create` /
`parse_message_create`, as the gateway would deliver them (reference/chat-platforms.md
Appendix A). Those are private discord.py APIs: this module is pinned to discord.py 2.7.

`FakeDiscord` keeps every request, stores posted messages per channel, creates threads, serves
attachments, and can inject faults (429 with `Via`, 5xx) and expire interaction tokens.
`DiscordHarness` runs the real core (SQLite store, local backend) with the real adapter.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import random
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import discord
import pytest
import yarl
from aiohttp import BodyPartReader, WSMsgType, web
from PIL import Image
from scenario_kit import fast_config, make_app

from adapters.cli import discord_core
from adapters.discord import DiscordAdapter, DiscordLimits
from adapters.discord.settings import DiscordSettings
from bot.model import JobOutput, Platform
from bot.ports import JobQuery
from cloud.local import LocalBackend, LocalBackendConfig
from commands import OPTIONS, Kind

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence
    from pathlib import Path

    from discord.types import gateway as gw
    from discord.types.guild import Guild as GuildPayload

    from bot.app import BotApp
    from bot.ports import PollTarget

TOKEN = "fake-bot-token"
APP_ID = 2000
BOT_ID = 1000
GUILD = 9000
CHANNEL = 7000
OTHER_GUILD = 9900
OTHER_CHANNEL = 7900
ADMIN_ROLE = 9100
ARTIST_ROLE = 9200
MANAGE_GUILD = 1 << 5
BASIC_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 15) | (1 << 16)  # view, send, files, history
TIMESTAMP = "2026-01-01T00:00:00+00:00"


def _message_fields() -> dict[str, Any]:
    """What every message object this fake makes says alike (a default message, dapi
    resources/message.mdx "Message Object"); new lists each time, as each message has its own."""
    return {
        "mention_roles": [],
        "pinned": False,
        "tts": False,
        "mention_everyone": False,
        "timestamp": TIMESTAMP,
        "edited_timestamp": None,
        "type": 0,
    }


EPHEMERAL = 64


@dataclass(frozen=True)
class User:
    id: int
    name: str
    admin: bool = False
    roles: tuple[int, ...] = ()

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "username": self.name, "discriminator": "0", "avatar": None}

    def member(self) -> dict[str, Any]:
        permissions = BASIC_PERMISSIONS | (MANAGE_GUILD if self.admin else 0)
        return {
            "user": self.payload(),
            "roles": [str(r) for r in ((ADMIN_ROLE,) if self.admin else ()) + self.roles],
            "joined_at": TIMESTAMP,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "permissions": str(permissions),
        }


ALICE = User(42, "alice")
BOB = User(43, "bob")
BOSS = User(44, "boss", admin=True)
CAROL = User(45, "carol", roles=(ARTIST_ROLE,))
BOT_USER = {
    "id": str(BOT_ID),
    "username": "sdbot",
    "discriminator": "0",
    "avatar": None,
    "bot": True,
}


@dataclass
class Request:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    bot_auth: bool  # sent with the bot token (not an interaction / webhook token)
    json: Any = None
    files: list[tuple[str, bytes]] = field(default_factory=list)
    status: int = 200


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    times: int
    with_files: bool = False  # only requests that upload files
    skip: int = 0  # let this many matching requests through first
    after: bool = False  # do the work, then answer with the fault (the answer was lost)


# The routes the fault run hits: messages (post, edit), threads, attachments on the CDN.
CHAOS_ROUTES = re.compile(r"^(/api/v10/channels/\d+/messages(/\d+)?(/threads)?|/cdn/.*)$")


@dataclass
class Chaos:
    """Seeded random overloads: each post or edit of a message, thread start and attachment
    download fails with probability `rate` — a 429 as Discord sends it, a 500 before the
    work, or a 500 after it (Discord did it, the answer was lost)."""

    seed: int
    rate: float
    injected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def pick(self, method: str, path: str) -> str | None:
        if method not in ("GET", "POST", "PATCH") or not CHAOS_ROUTES.match(path):
            return None
        if method == "GET" and not path.startswith("/cdn/"):
            return None
        if self._rng.random() >= self.rate:
            return None
        kind = self._rng.choice(("429", "500-before", "500-after"))
        self.injected[kind] = self.injected.get(kind, 0) + 1
        return kind


RATE_LIMIT_HEADERS = {"Via": "1.1 google", "Retry-After": "1", "X-RateLimit-Scope": "user"}


def _rate_limited(retry_after: float) -> dict[str, Any]:
    return {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    # discord.py compares the content type for equality (no charset suffix).
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


@dataclass
class GatewaySession:
    """One session on the fake gateway (dapi: developers/events/gateway.mdx "Connections"):
    its own id, sequence numbers and dispatches. Several may identify on the same shard, and
    each receives that shard's events ("Sharding": "You can establish multiple sessions with
    the same `[shard_id, num_shards]`"). A session cut off is kept, still collecting its
    events, so that a RESUME replays what it missed ("Resuming"). Heartbeats are acknowledged
    per connection; a connection missing its heartbeats is not closed (the interval is 45 s,
    longer than any test)."""

    id: str
    label: str  # the path it connected at (`/gateway-ws/<label>`): which client
    shard: tuple[int, int] | None  # [shard_id, num_shards] from its identify
    url: str
    sequence: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)  # every dispatch, for RESUME
    outbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    connected: bool = True
    socket: int = 0  # id() of the connection it is on

    def receives(self, guild_id: object) -> bool:
        """Whether events of `guild_id` (None: no server, such as DMs) come to this session:
        `shard_id = (guild_id >> 22) % num_shards`, and events without a guild go to shard 0
        only (dapi: developers/events/gateway.mdx "Sharding")."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        if guild_id is None:
            return shard_id == 0
        return (int(str(guild_id)) >> 22) % count == shard_id

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        self.sequence += 1
        frame = {"op": 0, "t": event, "s": self.sequence, "d": data}
        self.sent.append(frame)
        if self.connected:
            self.outbox.put_nowait(frame)

    def resumed(self, seq: int) -> None:
        """Connected again: what came after `seq` is sent first."""
        self.outbox = asyncio.Queue()
        for frame in self.sent:
            if frame["s"] > seq:
                self.outbox.put_nowait(frame)
        self.connected = True


class FakeDiscord:
    """A loopback fake of the parts of Discord's REST API and CDN that sdbot uses."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.messages: dict[str, dict[str, Any]] = {}  # bot-token messages by id
        # Interaction responses and followups by id (each with its interaction's "token").
        self.answers: dict[str, dict[str, Any]] = {}
        self.interaction_channels: dict[str, str] = {}  # token → channel id
        self.channels: dict[str, dict[str, Any]] = {}  # threads created through the API
        self.cdn: dict[str, bytes] = {}
        # The valid signature (`hm`) of each CDN path; links with another one have expired.
        self.signatures: dict[str, str] = {}
        self.refreshable = True
        self.faults: list[Fault] = []
        self.chaos: Chaos | None = None
        self.nonces: dict[tuple[str, str], str] = {}  # (channel, nonce) → message id
        self.expired_tokens: set[str] = set()
        self.expire_all = False
        self.synced: list[tuple[str, list[dict[str, Any]]]] = []
        self.app_flags = 0
        # Upload limits (dapi: developers/reference.mdx "Uploading Files"): bot-token posts are
        # held to the server's limit — 10 MiB for premium tiers 0 and 1 (discord.py
        # `Guild._PREMIUM_GUILD_LIMITS`) — and interaction answers to the interaction's
        # `attachment_size_limit`. Over it: 413, code 40005, nothing posted.
        self.guild_upload_limit = 10 * 1024 * 1024
        self.token_upload_limits: dict[str, int] = {}
        self.originals: dict[str, str] = {}  # interaction token → original response message id
        self.acknowledged: set[str] = set()  # interactions that got their response
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        # The gateway: frames the clients sent, and their sessions, each with the events sent
        # or waiting to be sent to it.
        self.gateway_frames: list[dict[str, Any]] = []
        self.gateway_guilds: list[dict[str, Any]] = []
        self.gateway_close_code: int | None = None  # close the socket after IDENTIFY
        self.sessions: list[GatewaySession] = []
        # Identifies allowed per `identify_window` seconds and rate-limit bucket: Discord's
        # session start limit for a bot below 150,000 servers (dapi: developers/events/
        # gateway.mdx "Session Start Limit Object", "Sharding for Large Bots").
        self.max_concurrency = 1
        self.identify_window = 5.0
        self.identifies_refused = 0
        self._identified: dict[int, float] = {}  # bucket → when it last took an identify
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway-ws", self._gateway)
        app.router.add_get("/gateway-ws/{label}", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.origin}/api/v10"

    # -- helpers for tests -----------------------------------------------------------------

    def snowflake(self) -> int:
        return discord.utils.time_snowflake(discord.utils.utcnow()) + next(self._ids)

    def upload(self, name: str, data: bytes) -> dict[str, Any]:
        """An attachment as Discord's payloads describe it, served from the fake CDN."""
        attachment_id = str(self.snowflake())
        path = f"/cdn/attachments/{attachment_id}/{name}"
        self.cdn[path] = data
        self.signatures[path] = "signature"
        url = f"{self.origin}{path}?ex=1&is=2&hm=signature"
        return {
            "id": attachment_id,
            "filename": name,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": "image/png",
        }

    def start_chaos(self, seed: int, rate: float) -> Chaos:
        self.chaos = Chaos(seed, rate)
        return self.chaos

    def expire(self, url: str) -> None:
        """Let an attachment link pass its `ex`: the CDN then answers 404 until the link is
        renewed (dapi: developers/reference.mdx "Signed Attachment CDN URLs")."""
        path = yarl.URL(url).path
        self.signatures[path] = f"signature{self.snowflake()}"

    def fail(
        self,
        method: str,
        pattern: str,
        status: int,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        with_files: bool = False,
        skip: int = 0,
        after: bool = False,
    ) -> None:
        self.faults.append(
            Fault(
                method,
                re.compile(pattern),
                status,
                body or {"message": "fault"},
                headers or {},
                times,
                with_files,
                skip,
                after,
            )
        )

    def rate_limit(
        self, method: str, pattern: str, retry_after: float = 0.01, *, with_files: bool = False
    ) -> None:
        """A 429 as Discord sends it (discord.py retries only with the `Via` header)."""
        self.fail(
            method,
            pattern,
            429,
            _rate_limited(retry_after),
            RATE_LIMIT_HEADERS,
            with_files=with_files,
        )

    def calls(self, method: str | None = None, pattern: str = "") -> list[Request]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and re.search(pattern, r.path)
        ]

    def callbacks(self, token: str) -> list[Request]:
        return [r for r in self.requests if r.path.endswith(f"/{token}/callback")]

    def in_channel(self, channel: str | int) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if m["channel_id"] == str(channel)]

    def results(self, thread: str) -> list[dict[str, Any]]:
        """The bot's result messages in a thread (each begins with its job's id), oldest
        first."""
        return [
            m
            for m in sorted(self.in_channel(thread), key=lambda m: int(m["id"]))
            if m["content"].startswith("job `")
        ]

    def thread_of(self, message_id: str) -> dict[str, Any] | None:
        return self.channels.get(message_id)

    def answers_to(self, token: str) -> list[dict[str, Any]]:
        """What an interaction was answered (original response and followups), in order."""
        return sorted(
            (m for m in self.answers.values() if m["token"] == token), key=lambda m: int(m["id"])
        )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout)

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway-ws"

    def gateway_url_of(self, label: str) -> str:
        """The gateway URL for one client (a replica): its sessions carry `label`."""
        return f"{self.gateway_url}/{label}"

    def push(self, event: str, data: dict[str, Any]) -> int:
        """Send a gateway dispatch (MESSAGE_CREATE, INTERACTION_CREATE …) to every session
        of the shard it belongs to — all of them when none shards — and return how many.
        Sessions cut off and not resumed yet keep it for their RESUME."""
        guild = data.get("guild_id")
        receivers = [s for s in self.sessions if s.receives(guild)]
        for session in receivers:
            session.dispatch(event, data)
        return len(receivers)

    def ready_sessions(self, label: str | None = None) -> list[GatewaySession]:
        """The sessions (of one client, by `label`) connected now."""
        return [s for s in self.sessions if s.connected and label in (None, s.label)]

    # -- what users do, as the gateway delivers it ------------------------------------------

    def interaction_payload(
        self,
        kind: int,
        data: dict[str, Any] | None,
        *,
        user: User = ALICE,
        guild: int | None = GUILD,
        channel: str | int = CHANNEL,
        thread: str | None = None,
        message: dict[str, Any] | None = None,
        size_limit: int = 10 * 1024 * 1024,
    ) -> dict[str, Any]:
        """An INTERACTION_CREATE of `kind` (2 command, 3 component, 4 autocomplete, 5 modal
        submit) from `user` in `channel` / `thread`; its token is then known to the fake."""
        interaction_id = self.snowflake()
        token = f"itok{interaction_id}"
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(APP_ID),
            "token": token,
            "version": 1,
            "type": kind,
            "attachment_size_limit": size_limit,
            "app_permissions": "0",
            "locale": "en-US",
        }
        if data is not None:
            payload["data"] = data
        channel_id = str(thread or channel)
        if guild is None:
            payload["channel_id"] = channel_id
            payload["channel"] = {"id": channel_id, "type": 1, "recipients": [user.payload()]}
            payload["user"] = user.payload()
        else:
            payload["guild_id"] = str(guild)
            payload["channel_id"] = channel_id
            if thread is not None:
                payload["channel"] = _thread_channel(str(thread), str(channel), user.id, "t")
            else:
                payload["channel"] = _text_channel(channel_id, guild)
            payload["member"] = user.member()
        if message is not None:
            payload["message"] = message
        self.interaction_channels[token] = channel_id
        self.token_upload_limits[token] = size_limit
        return payload

    def slash_data(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        *,
        guild: str | None = None,
    ) -> dict[str, Any]:
        """A slash command's `data`; `files` maps attachment options to image bytes (served
        from the fake CDN), `guild` is named for a guild command."""
        wire: list[dict[str, Any]] = []
        resolved: dict[str, Any] = {}
        for option, value in (options or {}).items():
            kind = OPTIONS[option].kind if option in OPTIONS else Kind.TEXT  # `advanced`
            code = {Kind.INT: 4, Kind.FLOAT: 10, Kind.BOOL: 5}.get(kind, 3)
            wire.append({"name": option, "type": code, "value": value})
        for slot, content in (files or {}).items():
            attachment = self.upload(f"{slot}.png", content)
            resolved[attachment["id"]] = attachment
            wire.append({"name": slot, "type": 11, "value": attachment["id"]})
        data: dict[str, Any] = {"id": "123", "name": name, "type": 1, "options": wire}
        if guild is not None:
            data["guild_id"] = guild  # Discord names the guild of a guild command
        if resolved:
            data["resolved"] = {"attachments": resolved}
        return data

    def message_payload(
        self,
        text: str,
        *,
        user: User = ALICE,
        channel: str | int = CHANNEL,
        guild: int | None = GUILD,
        files: Mapping[str, bytes] | None = None,
        reply_to: dict[str, Any] | None = None,
        mention: bool = False,
        message_content: bool = True,
    ) -> dict[str, Any]:
        """A user's message as MESSAGE_CREATE carries it; without `message_content` (the
        intent), its text only when it mentions the bot or is a DM."""
        content = f"<@{BOT_ID}> {text}" if mention else text
        payload: dict[str, Any] = {
            "id": str(self.snowflake()),
            "channel_id": str(channel),
            "author": user.payload(),
            "content": content if (message_content or mention or guild is None) else "",
            "attachments": [self.upload(n, d) for n, d in (files or {}).items()],
            "embeds": [],
            "mentions": [BOT_USER] if mention else [],
            **_message_fields(),
            "flags": 0,
        }
        if guild is not None:
            payload["guild_id"] = str(guild)
            member = user.member()
            member.pop("user")
            member.pop("permissions")
            payload["member"] = member
        if reply_to is not None:
            payload["type"] = 19
            payload["message_reference"] = {
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
                **({"guild_id": str(guild)} if guild is not None else {}),
            }
            payload["referenced_message"] = reply_to
        return payload

    # -- the gateway -----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        url = f"ws://127.0.0.1:{self.port}{request.path}"
        label = request.match_info.get("label", "")
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 45000}, "s": None, "t": None})
        session: GatewaySession | None = None
        sender: asyncio.Task[None] | None = None
        try:
            async for message in socket:
                if message.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(message.data)
                self.gateway_frames.append(frame)
                op = frame["op"]
                if op == 1:  # heartbeat
                    await socket.send_json({"op": 11, "d": None, "s": None, "t": None})
                elif op == 2 and self.gateway_close_code is not None:
                    await socket.close(code=self.gateway_close_code)
                elif op in (2, 6) and session is not None:
                    # dapi: developers/topics/opcodes-and-status-codes.mdx, close code 4005.
                    await socket.close(code=4005, message=b"Already authenticated.")
                elif op in (2, 6):
                    session = (
                        self._identify(frame["d"], label, url)
                        if op == 2
                        else self._resume(frame["d"])
                    )
                    if session is not None:
                        session.socket = id(socket)
                        sender = asyncio.create_task(
                            self._send_events(socket, session.outbox), name="fake-gateway-sender"
                        )
                    else:
                        # dapi: developers/events/gateway-events.mdx "Invalid Session": `d`
                        # false, the client must identify anew.
                        await socket.send_json({"op": 9, "d": False, "s": None, "t": None})
                async with self._changed:
                    self._changed.notify_all()
        finally:
            if session is not None and session.socket == id(socket):
                session.connected = False
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            async with self._changed:
                self._changed.notify_all()
        return socket

    def _identify(self, data: dict[str, Any], label: str, url: str) -> GatewaySession | None:
        """A new session, or None when the identify comes too soon after another of its
        rate-limit bucket (dapi: developers/events/gateway.mdx "Identifying", "Rate Limiting":
        `max_concurrency` identifies per 5 seconds, the bucket being `shard_id %
        max_concurrency`; over it, Discord answers Invalid Session)."""
        shard = data.get("shard")
        bucket = (shard[0] if shard else 0) % self.max_concurrency
        now = asyncio.get_running_loop().time()
        last = self._identified.get(bucket)
        if last is not None and now - last < self.identify_window:
            self.identifies_refused += 1
            return None
        self._identified[bucket] = now
        session = GatewaySession(
            f"fake-session-{len(self.sessions) + 1}",
            label,
            (int(shard[0]), int(shard[1])) if shard else None,
            url,
        )
        self.sessions.append(session)
        session.dispatch(
            "READY",
            {
                "v": 10,
                "user": BOT_USER,
                "guilds": [],
                "session_id": session.id,
                "resume_gateway_url": url,
                "application": {"id": str(APP_ID), "flags": self.app_flags},
                # dapi: developers/events/gateway-events.mdx "Ready": the shard the session
                # identified with, when it named one.
                **({"shard": shard} if shard else {}),
            },
        )
        for guild in self.gateway_guilds:
            if session.receives(guild["id"]):
                session.dispatch("GUILD_CREATE", guild)
        return session

    def _resume(self, data: dict[str, Any]) -> GatewaySession | None:
        """The session `data` names, its missed dispatches queued again, then RESUMED
        (dapi: developers/events/gateway.mdx "Resuming"); None for an unknown session."""
        found = [s for s in self.sessions if s.id == data.get("session_id")]
        if not found:
            return None
        [session] = found
        session.resumed(int(data.get("seq") or 0))
        session.dispatch("RESUMED", {})
        return session

    async def _send_events(
        self, socket: web.WebSocketResponse, outbox: asyncio.Queue[dict[str, Any]]
    ) -> None:
        while True:
            await socket.send_json(await outbox.get())

    # -- serving ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body_json: Any = None
        files: list[tuple[str, bytes]] = []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):  # pragma: no cover
                    continue
                data = await part.read()
                if part.name == "payload_json":
                    body_json = json.loads(data)
                else:
                    files.append((part.filename or "file", bytes(data)))
        elif request.can_read_body:
            raw = await request.read()
            body_json = json.loads(raw) if raw else None
        auth = request.headers.get("Authorization", "")
        record = Request(
            request.method,
            request.path,
            dict(request.query),
            auth == f"Bot {TOKEN}",
            body_json,
            files,
        )
        self.requests.append(record)
        chaos = self.chaos.pick(request.method, request.path) if self.chaos else None
        try:
            if chaos == "429":  # as Discord sends it; discord.py retries only with `Via`
                response = _json(_rate_limited(0.01), 429, RATE_LIMIT_HEADERS)
            elif chaos == "500-before":
                response = _json({"message": "500: Internal Server Error", "code": 0}, 500)
            else:
                response = (
                    self._fault(request, record)
                    or _invalid_embeds(record.json)
                    or _invalid_nonce(record.json)
                    or self._route(request, record)
                )
                if chaos == "500-after":
                    response = _json({"message": "500: Internal Server Error", "code": 0}, 500)
        except KeyError:
            response = _json({"message": "Unknown Message", "code": 10008}, 404)
        record.status = response.status
        async with self._changed:
            self._changed.notify_all()
        return response

    def _fault(self, request: web.Request, record: Request) -> web.Response | None:
        for fault in self.faults:
            if not fault.times or fault.method != record.method:
                continue
            if not fault.pattern.search(record.path) or (fault.with_files and not record.files):
                continue
            if fault.skip:
                fault.skip -= 1
                continue
            fault.times -= 1
            if fault.after:
                self._route(request, record)
            return _json(fault.body, fault.status, fault.headers)
        return None

    def _expired(self, token: str) -> bool:
        return self.expire_all or token in self.expired_tokens

    def _route(self, request: web.Request, record: Request) -> web.Response:
        path = request.path.removeprefix("/api/v10")
        method = request.method
        if path.startswith("/cdn/"):
            data = self.cdn.get(path)
            if data is None or request.query.get("hm") != self.signatures.get(path):
                return web.Response(status=404, text="This content is no longer available.")
            return web.Response(body=data, content_type="image/png")
        if path == "/attachments/refresh-urls" and method == "POST":
            # dapi: developers/reference.mdx "Signed Attachment CDN URLs": the current link of
            # each attachment URL given.
            refreshed = []
            for url in (record.json or {}).get("attachment_urls") or []:
                link = yarl.URL(url)
                if link.path in self.cdn and self.refreshable:
                    fresh = link.with_query(
                        {"ex": "3", "is": "4", "hm": self.signatures[link.path]}
                    )
                    refreshed.append({"original": url, "refreshed": str(fresh)})
            return _json({"refreshed_urls": refreshed})
        if match := re.fullmatch(r"/guilds/(\d+)", path):
            return _json(guild_payload(int(match[1]), CHANNEL))
        if path == "/users/@me":
            if request.headers.get("Authorization") != f"Bot {TOKEN}":
                return _json({"message": "401: Unauthorized", "code": 0}, 401)
            return _json(BOT_USER)
        if path == "/oauth2/applications/@me":
            return _json(
                {
                    "id": str(APP_ID),
                    "name": "sdbot",
                    "icon": None,
                    "description": "",
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "verify_key": "x",
                    "flags": self.app_flags,
                    "owner": {"id": "3000", "username": "o", "discriminator": "0", "avatar": None},
                }
            )
        if match := re.fullmatch(r"/applications/\d+(?:/guilds/(\d+))?/commands", path):
            scope = f"guild {match[1]}" if match[1] else "global"
            commands = record.json or []
            self.synced.append((scope, commands))
            return _json(
                [
                    {
                        "description": "",
                        **c,
                        "id": str(self.snowflake()),
                        "application_id": str(APP_ID),
                        "version": "1",
                    }
                    for c in commands
                ]
            )
        if match := re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path):
            return self._callback(match[1], match[2], record)
        if match := re.fullmatch(r"/webhooks/\d+/([^/]+)(?:/messages/([^/]+))?", path):
            return self._webhook(method, match[1], match[2], record)
        if match := re.fullmatch(r"/channels/(\d+)/messages/(\d+)/threads", path):
            return self._thread(match[1], match[2], record)
        if match := re.fullmatch(r"/channels/(\d+)/messages(?:/(\d+))?", path):
            return self._channel_messages(method, match[1], match[2], request, record)
        if match := re.fullmatch(r"/channels/(\d+)", path):
            channel = self.channels.get(match[1])
            if channel is None:
                return _json(_text_channel(match[1]))
            return _json(channel)
        return _json({"message": f"fake: no route {method} {path}"}, 404)

    def _new_message(
        self,
        channel_id: str,
        body: Mapping[str, Any] | None,
        files: Sequence[tuple[str, bytes]],
        *,
        flags: int = 0,
        token: str | None = None,
    ) -> dict[str, Any]:
        body = body or {}
        nonce = body.get("nonce")
        if token is None and nonce is not None and body.get("enforce_nonce"):
            # dapi: developers/resources/message.mdx "Create Message": with `enforce_nonce`, a
            # nonce seen from the same author in the last few minutes returns that message.
            known = self.nonces.get((channel_id, str(nonce)))
            if known is not None and known in self.messages:
                return self.messages[known]
        message_id = str(self.snowflake())
        if token is None and nonce is not None:
            self.nonces[(channel_id, str(nonce))] = message_id
        attachments = [self.upload(name, data) for name, data in files]
        message = {
            "id": message_id,
            "channel_id": channel_id,
            "author": BOT_USER,
            "content": body.get("content") or "",
            "embeds": body.get("embeds") or [],
            "components": body.get("components") or [],
            "attachments": attachments,
            "mentions": [],
            **_message_fields(),
            "flags": flags | int(body.get("flags") or 0),
        }
        if token is None:
            self.messages[message_id] = message
        else:
            message["token"] = token
            self.answers[message_id] = message
        return message

    def _edit(
        self,
        message: dict[str, Any],
        body: Mapping[str, Any] | None,
        files: Sequence[tuple[str, bytes]],
    ) -> None:
        body = body or {}
        for key in ("content", "embeds", "components"):
            if key in body:
                message[key] = (
                    body[key] if body[key] is not None else ([] if key != "content" else "")
                )
        if isinstance(body.get("attachments"), list):
            # An edit's `attachments` lists what stays: kept ones by id, new ones by file index;
            # any other attachment of the message is removed (docs: Edit Message, "attachments").
            kept = {str(a.get("id")) for a in body["attachments"] if isinstance(a, dict)}
            message["attachments"] = [a for a in message["attachments"] if a["id"] in kept]
        if files:
            uploaded = [self.upload(name, data) for name, data in files]
            if isinstance(body.get("attachments"), list):
                message["attachments"] = message["attachments"] + uploaded
            else:
                message["attachments"] = uploaded
        message["edited_timestamp"] = TIMESTAMP

    def _callback(self, interaction_id: str, token: str, record: Request) -> web.Response:
        if self._expired(token):
            return _json({"message": "Unknown interaction", "code": 10062}, 404)
        if interaction_id in self.acknowledged:
            # An interaction takes one response (dapi: developers/interactions/
            # receiving-and-responding.mdx "Responding to an Interaction"); a second one is
            # refused with JSON error 40060 (developers/topics/opcodes-and-status-codes.mdx).
            return _json(
                {"message": "Interaction has already been acknowledged.", "code": 40060}, 400
            )
        if too_large := _too_large(record.files, self.token_upload_limits.get(token, 0) or 1 << 62):
            return too_large
        body = record.json or {}
        kind = body.get("type")
        data = body.get("data") or {}
        resource: dict[str, Any] | None = None
        if kind in (4, 5):
            message = self._new_message(
                self.interaction_channels.get(token, "0"),
                data,
                record.files,
                flags=int(data.get("flags") or 0),
                token=token,
            )
            self.originals[token] = message["id"]
            resource = {"type": kind, "message": message}
        answer: dict[str, Any] = {
            "interaction": {
                "id": interaction_id,
                "type": 2,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & EPHEMERAL),
            }
        }
        if resource is not None:
            answer["interaction"]["response_message_id"] = resource["message"]["id"]
            answer["resource"] = resource
        self.acknowledged.add(interaction_id)
        return _json(answer)

    def _webhook(
        self, method: str, token: str, message: str | None, record: Request
    ) -> web.Response:
        if self._expired(token):
            return _json({"message": "Invalid Webhook Token", "code": 50027}, 401)
        if too_large := _too_large(record.files, self.token_upload_limits.get(token, 0) or 1 << 62):
            return too_large
        if message is None and method == "POST":
            flags = int((record.json or {}).get("flags") or 0)
            channel = self.interaction_channels.get(token, "0")
            return _json(
                self._new_message(channel, record.json, record.files, flags=flags, token=token)
            )
        message_id = self.originals[token] if message == "@original" else str(message)
        stored = self.answers[message_id]
        if method == "PATCH":
            self._edit(stored, record.json, record.files)
        elif method == "DELETE":
            del self.answers[message_id]
            return web.Response(status=204)
        return _json(stored)

    def _thread(self, channel_id: str, message_id: str, record: Request) -> web.Response:
        if message_id in self.channels:
            return _json(
                {"message": "A thread has already been created for this message", "code": 160004},
                400,
            )
        body = record.json or {}
        thread = _thread_channel(
            message_id, channel_id, BOT_ID, body.get("name", ""), body.get("auto_archive_duration")
        )
        self.channels[message_id] = thread
        return _json(thread, 201)

    def _channel_messages(
        self,
        method: str,
        channel_id: str,
        message_id: str | None,
        request: web.Request,
        record: Request,
    ) -> web.Response:
        if message_id is None:
            if method == "POST":
                if too_large := _too_large(record.files, self.guild_upload_limit):
                    return too_large
                return _json(self._new_message(channel_id, record.json, record.files))
            limit = int(request.query.get("limit", "50"))
            found = sorted(self.in_channel(channel_id), key=lambda m: int(m["id"]), reverse=True)
            return _json(found[:limit])
        stored = self.messages[message_id]
        if method == "PATCH":
            self._edit(stored, record.json, record.files)
            return _json(stored)
        if method == "DELETE":
            del self.messages[message_id]
            return web.Response(status=204)
        return _json(stored)


def _too_large(files: Sequence[tuple[str, bytes]], limit: int) -> web.Response | None:
    if any(len(data) > limit for _, data in files):
        return _json({"message": "Request entity too large", "code": 40005}, 413)
    return None


def _invalid_embeds(body: Any) -> web.Response | None:
    """Discord's embed limits (dapi: developers/resources/message.mdx "Embed Limits"): title
    256, description 4096, 25 fields, field name 256 / value 1024, footer 2048, author name 256,
    and 6000 characters over all of those in all embeds of the message. A message breaking any
    is refused with 400 / 50035 "Invalid Form Body" and not posted."""
    embeds = body.get("embeds") if isinstance(body, dict) else None
    if not embeds:
        return None
    total = 0
    problems = []
    for embed in embeds:
        pieces = [
            ("title", embed.get("title") or "", 256),
            ("description", embed.get("description") or "", 4096),
            ("footer", (embed.get("footer") or {}).get("text") or "", 2048),
            ("author", (embed.get("author") or {}).get("name") or "", 256),
        ]
        fields = embed.get("fields") or []
        if len(fields) > 25:
            problems.append("fields: at most 25")
        for f in fields:
            pieces += [("field name", f.get("name") or "", 256)]
            pieces += [("field value", f.get("value") or "", 1024)]
        for name, text, limit in pieces:
            total += len(text)
            if len(text) > limit:
                problems.append(f"{name}: at most {limit}")
    if total > 6000:
        problems.append("embeds: 6000 characters in total at most")
    if not problems:
        return None
    return _json({"message": "Invalid Form Body", "code": 50035, "errors": problems}, 400)


def _invalid_nonce(body: Any) -> web.Response | None:
    """A message nonce is at most 25 characters (dapi: developers/resources/message.mdx
    "Create Message"). The fake remembers nonces for its whole life, where Discord remembers
    them "in the past few minutes"."""
    nonce = body.get("nonce") if isinstance(body, dict) else None
    if isinstance(nonce, str) and len(nonce) > 25:
        problems = ["nonce: Must be 25 or fewer in length."]
        return _json({"message": "Invalid Form Body", "code": 50035, "errors": problems}, 400)
    return None


def _text_channel(channel_id: str, guild_id: int = GUILD) -> dict[str, Any]:
    return {
        "id": channel_id,
        "type": 0,
        "guild_id": str(guild_id),
        "name": "gen",
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
    }


def _thread_channel(
    thread_id: str, parent_id: str, owner: int, name: str, archive: int | None = None
) -> dict[str, Any]:
    return {
        "id": thread_id,
        "type": 11,
        "guild_id": str(GUILD),
        "parent_id": parent_id,
        "name": name,
        "owner_id": str(owner),
        "message_count": 0,
        "member_count": 1,
        "rate_limit_per_user": 0,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": archive or 1440,
            "archive_timestamp": TIMESTAMP,
            "locked": False,
        },
    }


def guild_payload(guild_id: int, channel_id: int) -> dict[str, Any]:
    return {
        "id": str(guild_id),
        "name": f"guild {guild_id}",
        "owner_id": "1",
        "roles": [
            {
                "id": str(guild_id),
                "name": "@everyone",
                "permissions": str(BASIC_PERMISSIONS),
                "position": 0,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
            },
            {
                "id": str(ARTIST_ROLE),
                "name": "artists",
                "permissions": str(BASIC_PERMISSIONS),
                "position": 1,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
            },
            {
                "id": str(ADMIN_ROLE),
                "name": "admins",
                "permissions": str(MANAGE_GUILD | BASIC_PERMISSIONS),
                "position": 1,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
            },
        ],
        "emojis": [],
        "stickers": [],
        "features": [],
        "channels": [_text_channel(str(channel_id), guild_id)],
        "threads": [],
        "members": [],
        "member_count": 3,
        "premium_tier": 0,
    }


def png(width: int = 96, height: int = 64, seed: int = 1) -> bytes:
    """A picture with some structure (the local backend's preview transforms it)."""
    image = Image.new("RGB", (width, height), (40 + seed * 20 % 200, 90, 200))
    for x in range(0, width, 6):
        for y in range(0, height, 6):
            image.putpixel((x, y), ((x * 7 + seed) % 256, (y * 5) % 256, 120))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class GatedBackend(LocalBackend):
    """The local backend whose status answers wait for `gate` (to hold a job in flight)."""

    def __init__(self, config: LocalBackendConfig) -> None:
        super().__init__(config)
        self.gate = asyncio.Event()
        self.gate.set()
        self.big_results: tuple[bytes, ...] = ()  # results to return instead of the previews

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, Any]:
        await self.gate.wait()
        return dict(await super().statuses(targets))

    async def results(self, backend_id: str) -> JobOutput:
        output = await super().results(backend_id)
        return replace(output, images=self.big_results) if self.big_results else output


class DiscordHarness:
    """The real core and the real adapter, with a REST-only client against `FakeDiscord`.

    Test modules cannot import this conftest, so the people and places they need are here.
    """

    alice, bob, boss, carol = ALICE, BOB, BOSS, CAROL
    artist_role = ARTIST_ROLE
    guild, channel, other_guild, other_channel = GUILD, CHANNEL, OTHER_GUILD, OTHER_CHANNEL
    bot_id, app_id = BOT_ID, APP_ID
    ephemeral = EPHEMERAL

    def __init__(self, tmp_path: Path, fake: FakeDiscord) -> None:
        self.tmp_path = tmp_path
        self.fake = fake
        self.overrides: dict[str, Any] = {}
        self.limits: DiscordLimits | None = None
        self.adapter_options: dict[str, Any] = {}
        self.message_content = True
        # True: the adapter builds its own client and connects to the fake gateway, and events
        # arrive over the websocket; False: a REST-only client fed through its state parser.
        self.gateway = False
        self.backend: GatedBackend | None = None
        self.app: BotApp
        self.client: discord.Client
        self.adapter: DiscordAdapter
        self._running = False

    async def start(self, **overrides: Any) -> DiscordHarness:
        self.overrides.update(overrides)
        config = fast_config(self.tmp_path, discord_token=TOKEN, local_delay=0.02, **self.overrides)
        # A restart keeps a closed gate closed: the resumed job's first status read must not
        # slip through before the test can close the new backend's gate.
        held = self.backend is not None and not self.backend.gate.is_set()
        # Durable like the production local backend (adapters.cli.make_backend): a restart
        # finds the jobs in flight again instead of reporting them lost.
        self.backend = GatedBackend(
            LocalBackendConfig(
                delay=config.local_delay, state_dir=config.data_dir / "local-backend"
            )
        )
        if held:
            self.backend.gate.clear()
        self.app = make_app(config, self.backend)
        client: discord.Client | None = None
        if not self.gateway:
            intents = discord.Intents.default()
            intents.message_content = self.message_content
            client = discord.Client(intents=intents)
        self.adapter = DiscordAdapter(
            discord_core(self.app),
            config[DiscordSettings],
            client=client,
            gateway=self.gateway,
            message_content=self.message_content if self.gateway else None,
            cdn_origins=[self.fake.origin],
            limits=self.limits,
            **self.adapter_options,
        )
        self.client = self.adapter.client
        self.app.add_adapter(self.adapter)
        guilds = [guild_payload(GUILD, CHANNEL), guild_payload(OTHER_GUILD, OTHER_CHANNEL)]
        self.fake.gateway_guilds = guilds
        await self.app.start()
        await self.adapter.start()
        self._running = True
        if not self.gateway:
            # Payloads here are wire JSON, as the gateway sends it; discord.py's state parser
            # reads them as its TypedDicts (discord/types/), hence the casts.
            for guild in guilds:
                self.client._connection._add_guild_from_data(cast("GuildPayload", guild))
            return self
        # The guilds arrive over the gateway, as in production: those of the client's shards.
        count = int(self.overrides.get("discord_shard_count", 0))
        shards = self.overrides.get("discord_shard_ids") or range(count)
        routed = [g for g in guilds if not count or (int(g["id"]) >> 22) % count in shards]
        for _ in range(1000):
            if all(self.client.get_guild(int(g["id"])) for g in routed):
                return self
            await asyncio.sleep(0.01)
        raise AssertionError("the fake gateway's guilds never reached the client")

    async def stop(self, *, settle: bool = True) -> None:
        """Stop the adapter and the core; without `settle`, jobs in flight are left to resume."""
        if not self._running:
            return
        self._running = False
        if settle:
            if self.backend is not None:
                self.backend.gate.set()
            await self.settle()
        await self.adapter.aclose()
        await self.app.aclose()

    async def restart(self, *, settle: bool = True) -> None:
        await self.stop(settle=settle)
        await self.start()

    # -- waiting ---------------------------------------------------------------------------

    async def settle(self) -> None:
        """Wait until the adapter handles no event and the core drives no job."""
        for _ in range(3):
            for _ in range(20):
                await asyncio.sleep(0)
            await asyncio.wait_for(self.adapter.wait_idle(), 10)
            await asyncio.wait_for(self.app.runner.wait_idle(), 10)

    async def answered(self, token: str) -> Request:
        """Wait for an interaction's first response, then for everything to settle."""
        await self.fake.wait_for(lambda: bool(self.fake.callbacks(token)))
        await self.settle()
        return self.fake.callbacks(token)[0]

    # -- events ----------------------------------------------------------------------------

    def interaction(self, kind: int, data: dict[str, Any] | None, **where: Any) -> str:
        """Deliver an INTERACTION_CREATE of `kind` (2 command, 3 component, 4 autocomplete,
        5 modal submit) from `user` in `channel` / `thread` (`FakeDiscord.interaction_payload`);
        returns its token."""
        payload = self.fake.interaction_payload(kind, data, **where)
        if self.gateway:
            self.fake.push("INTERACTION_CREATE", payload)
        else:
            self.client._connection.parse_interaction_create(
                cast("gw.InteractionCreateEvent", payload)
            )
        return str(payload["token"])

    def slash(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        **where: Any,
    ) -> str:
        """Run a slash command; `files` maps attachment options to image bytes."""
        guild = where.get("guild", GUILD)
        named = guild is not None and str(guild) in self.overrides.get("discord_guilds", ())
        data = self.fake.slash_data(name, options, files, guild=str(guild) if named else None)
        return self.interaction(2, data, **where)

    def autocomplete(self, name: str, option: str, value: str, **where: Any) -> str:
        data = {
            "id": "123",
            "name": name,
            "type": 1,
            "options": [{"name": option, "type": 3, "value": value, "focused": True}],
        }
        return self.interaction(4, data, **where)

    def menu(self, name: str, target: dict[str, Any], **where: Any) -> str:
        data = {
            "id": "124",
            "name": name,
            "type": 3,
            "target_id": target["id"],
            "resolved": {"messages": {target["id"]: target}},
        }
        return self.interaction(2, data, **where)

    def click(self, message: dict[str, Any], custom_id: str, **where: Any) -> str:
        """Press a button of a message the bot posted (the payload carries its components)."""
        channel = message["channel_id"]
        thread = self.fake.channels.get(channel)
        if thread is not None and "thread" not in where:
            where = {"channel": thread["parent_id"], "thread": channel, **where}
        data = {"custom_id": custom_id, "component_type": 2}
        return self.interaction(3, data, message=message, **where)

    def submit(self, custom_id: str, values: Mapping[str, str], **where: Any) -> str:
        components = [
            {
                "type": 18,
                "id": n + 1,
                "component": {"type": 4, "id": n + 10, "custom_id": k, "value": v},
            }
            for n, (k, v) in enumerate(values.items())
        ]
        return self.interaction(5, {"custom_id": custom_id, "components": components}, **where)

    def say(self, text: str, **how: Any) -> dict[str, Any]:
        """A user's message, as the gateway's MESSAGE_CREATE would deliver it
        (`FakeDiscord.message_payload`)."""
        payload = self.fake.message_payload(text, message_content=self.message_content, **how)
        if self.gateway:
            self.fake.push("MESSAGE_CREATE", payload)
        else:
            self.client._connection.parse_message_create(cast("gw.MessageCreateEvent", payload))
        return payload

    # -- looking at what happened ----------------------------------------------------------

    async def jobs(self) -> list[Any]:
        found: list[Any] = []
        for server in (str(GUILD), str(OTHER_GUILD), f"dm:{ALICE.id}"):
            found += await self.app.store.query(JobQuery(Platform("discord"), server, limit=100))
        return sorted(found, key=lambda j: j.created_at)

    def results(self, thread: str) -> list[dict[str, Any]]:
        """The bot's result messages in a thread, oldest first."""
        return self.fake.results(thread)


class _FastAsyncio:
    """`asyncio` as discord.http sees it, with its sleeps shortened."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result: Any = None) -> Any:
        return await asyncio.sleep(delay / 1000, result)


@pytest.fixture
def fast_discord_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """discord.py waits 1 + 2·n seconds before retrying a 5xx itself; a thousandth of that."""
    monkeypatch.setattr(discord.http, "asyncio", _FastAsyncio())


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def discord_api(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> FakeDiscord:
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
    )
    return fake


@pytest.fixture
async def harness(tmp_path: Path, discord_api: FakeDiscord) -> AsyncIterator[DiscordHarness]:
    h = DiscordHarness(tmp_path, discord_api)
    yield h
    await h.stop()


@pytest.fixture
async def bot(harness: DiscordHarness) -> DiscordHarness:
    """A started harness with default settings."""
    return await harness.start()
