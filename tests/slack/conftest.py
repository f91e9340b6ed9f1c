"""Offline Slack: a loopback fake of Slack's Web API and a rig around the real Bolt app.

`FakeSlack` is one aiohttp server on 127.0.0.1 (ephemeral port) that plays every Slack host
the adapter talks to: the Web API (`/api/<method>`, token-checked, parameters read from the
query, JSON and form bodies alike), private files (`/files-pri/…`, which answer Slack's HTML
sign-in page without the bot token), the upload URLs `files.getUploadURLExternal` hands out
(`/upload/v1/…`), `response_url`s (`/respond/…`), and the Socket Mode WebSocket that
`apps.connections.open` points at. Faults are injected per route with `fail_next` (before
or after the work is done, as Slack does), or at random with a seeded `Chaos`.

`SlackRig` runs the real core (SQLite store, local backend) with the real `SlackAdapter` in
HTTP mode (requests signed like Slack's) or Socket Mode (envelopes over the fake WebSocket),
and builds the payloads Slack would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from scenario_kit import fast_config, make_app
from slack_sdk.signature import SignatureVerifier

from adapters.cli import slack_core
from adapters.slack import SlackAdapter
from adapters.slack.settings import SlackSettings
from bot.model import Job, Platform
from bot.ports import JobQuery
from bot.retry import RetryPolicy
from commands import COMMANDS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
    from pathlib import Path

    from bot.app import BotApp

BOT_TOKEN = "xoxb-test-bot-token"
APP_TOKEN = "xapp-test-app-token"
SIGNING_SECRET = "test-signing-secret"
TEAM = "T1"
BOT_USER = "UBOT"
BOT_ID = "BBOT"
ADMIN = "UADMIN"
LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in</body></html>"


@dataclass
class Message:
    """A message the fake holds: posted by the bot or written (in the test) by a person."""

    channel: str
    ts: str
    text: str
    user: str
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    bot_id: str | None = None
    updates: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    metadata: dict[str, Any] | None = None

    def as_payload(self, *, metadata: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        # Message metadata comes back only with `include_all_metadata`
        # (https://docs.slack.dev/reference/methods/conversations.history#arguments).
        if metadata and self.metadata:
            data["metadata"] = self.metadata
        data["user"] = self.user
        if self.bot_id:
            data["bot_id"] = self.bot_id
        if self.thread_ts:
            data["thread_ts"] = self.thread_ts
        if self.files:
            data["files"] = self.files
        if self.blocks:
            data["blocks"] = self.blocks
        return data

    def action_ids(self) -> list[str]:
        blocks = self.updates[-1][1] if self.updates else self.blocks
        return [e["action_id"] for b in blocks if b.get("type") == "actions" for e in b["elements"]]


@dataclass
class Fault:
    status: int
    headers: dict[str, str]
    body: bytes
    when: Callable[[dict[str, Any]], bool] | None = None
    after: bool = False  # do the work, then answer the fault (Slack's 5xx after success)

    def response(self) -> web.Response:
        return web.Response(status=self.status, headers=self.headers, body=self.body)


# What Slack answers when it is overloaded, each as documented:
# - HTTP 429 with Retry-After (https://docs.slack.dev/apis/web-api/rate-limits);
# - HTTP 200 with `{"ok": false, "error": "ratelimited"}` (listed among chat.postMessage's
#   errors, https://docs.slack.dev/reference/methods/chat.postMessage#errors);
# - HTTP 500 before the work, and HTTP 500 *after* it (a 5xx does not say nothing happened;
#   https://docs.slack.dev/apis/web-api/#errors — the 9 duplicated results of 20).
OVERLOADS = ("429", "ratelimited", "500-before", "500-after")


def overload(kind: str, when: Callable[[dict[str, Any]], bool] | None = None) -> Fault:
    """One of the `OVERLOADS` answers."""
    if kind == "429":
        body = b'{"ok": false, "error": "ratelimited"}'
        return Fault(429, {"Retry-After": "1"}, body, when)
    if kind == "ratelimited":
        body = b'{"ok": false, "error": "ratelimited"}'
        return Fault(200, {"Content-Type": "application/json"}, body, when)
    return Fault(500, {}, b"", when, after=kind == "500-after")


@dataclass
class Chaos:
    """Seeded random faults: each request to one of `routes` fails with probability `rate`,
    as one of the four overload answers above."""

    seed: int
    rate: float
    routes: frozenset[str]
    injected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def pick(self, route: str) -> Fault | None:
        if route not in self.routes or self._rng.random() >= self.rate:
            return None
        # `ok: false` bodies are the Web API's; the file and upload hosts answer HTTP codes.
        kinds = OVERLOADS if route not in ("file", "upload") else ("429", "500-before", "500-after")
        kind = self._rng.choice(kinds)
        self.injected[kind] = self.injected.get(kind, 0) + 1
        return overload(kind)


class FakeSlack:
    """Slack on loopback (see the module docstring)."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_route("*", "/api/{method}", self._api)
        # The same Web API under a prefix naming the caller, for tests that run several bot
        # processes against one fake (`SLACK_API_URL=<base>/<caller>/api/`).
        self.app.router.add_route("*", "/{caller}/api/{method}", self._api)
        self.app.router.add_get("/files-pri/{key}/{name}", self._file)
        self.app.router.add_get("/elsewhere/{name}", self._file)
        self.app.router.add_post("/upload/v1/{file_id}", self._upload)
        self.app.router.add_post("/respond/{n}", self._respond)
        self.app.router.add_get("/link", self._socket)
        self.base = ""
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.messages: list[Message] = []
        self.ephemerals: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []
        self.uploaded: dict[str, bytes] = {}
        self.upload_attempts = 0
        self.file_requests: list[tuple[str, str | None]] = []
        self._files: dict[str, tuple[bytes, str]] = {}
        self._chunked: set[str] = set()
        self.redirects: dict[str, str] = {}
        self._pending_uploads: dict[str, dict[str, Any]] = {}
        self._faults: dict[str, list[Fault]] = {}
        self.chaos: Chaos | None = None
        # Called with (caller, method, params) when a Web API call's work is done, before it is
        # answered: where a test stops the caller in the middle of a post.
        self.on_done: Callable[[str, str, dict[str, Any]], Awaitable[None]] | None = None
        # Channels the bot is not a member of: posting there answers `not_in_channel`
        # (https://docs.slack.dev/reference/methods/chat.postMessage#errors).
        self.outside: set[str] = set()
        self.completed: dict[str, dict[str, Any]] = {}  # uploaded files, for files.info
        self.connect_files: dict[str, dict[str, Any]] = {}  # Slack Connect files by id
        self.respond_uses: dict[str, int] = {}
        self._counter = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._ws: web.WebSocketResponse | None = None
        self._ws_ready = asyncio.Event()
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.socket_connections = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def aclose(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return self.base + "/api/"

    # -- helpers for tests -----------------------------------------------------------------

    def next_ts(self) -> str:
        return f"1700000000.{next(self._counter):06d}"

    def fail_next(
        self,
        route: str,
        status: int,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        when: Callable[[dict[str, Any]], bool] | None = None,
        after: bool = False,
    ) -> None:
        """Answer the next request to `route` (an API method, `upload` or `file`) whose
        parameters satisfy `when` with a fault (`after`: once the work is done)."""
        self._faults.setdefault(route, []).append(Fault(status, headers or {}, body, when, after))

    def overload_next(
        self, route: str, kind: str, *, when: Callable[[dict[str, Any]], bool] | None = None
    ) -> None:
        """Answer the next request to `route` matching `when` with one of `OVERLOADS`."""
        self._faults.setdefault(route, []).append(overload(kind, when))

    def start_chaos(self, seed: int, rate: float, routes: Iterable[str]) -> Chaos:
        """From now on fail `rate` of the requests to `routes` at random (seeded)."""
        self.chaos = Chaos(seed, rate, frozenset(routes))
        return self.chaos

    def add_connect_file(
        self, name: str, data: bytes, mimetype: str = "image/png"
    ) -> dict[str, Any]:
        """A file shared from another organisation over Slack Connect: events carry only a
        stub without URLs; `files.info` returns the whole file object
        (https://docs.slack.dev/reference/events/message/file_share#slack-connect-files)."""
        full = self.add_file(name, data, mimetype=mimetype)
        self.connect_files[full["id"]] = full
        return {
            "id": full["id"],
            "mode": "file_access",
            "file_access": "check_file_info",
            "created": 0,
            "timestamp": 0,
            "user": "",
        }

    def add_file(
        self,
        name: str,
        data: bytes,
        *,
        mimetype: str = "image/png",
        host_path: str = "files-pri",
        chunked: bool = False,
    ) -> dict[str, Any]:
        """A private file as Slack describes it in events; served at its url on the fake
        (`chunked`: without a Content-Length, so only counting the bytes finds its size)."""
        file_id = f"F{next(self._counter)}"
        if host_path == "files-pri":
            path = f"/files-pri/{TEAM}-{file_id}/{name}"
        else:
            path = f"/{host_path}/{name}"
        self._files[path] = (data, mimetype)
        if chunked:
            self._chunked.add(path)
        return {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1],
            "size": len(data),
            "mode": "hosted",
            "url_private": self.base + path,
            "url_private_download": self.base + path + "?download=1",
        }

    def serve_html_for(self, file: dict[str, Any]) -> None:
        """Make a file answer Slack's sign-in page even with the right token."""
        path = file["url_private"].removeprefix(self.base)
        self._files[path] = (LOGIN_PAGE, "text/html")

    def user_message(
        self,
        text: str,
        *,
        channel: str = "C1",
        user: str = "U1",
        thread_ts: str | None = None,
        files: Iterable[dict[str, Any]] = (),
    ) -> Message:
        message = Message(channel, self.next_ts(), text, user, thread_ts, files=list(files))
        self.messages.append(message)
        return message

    def response_url(self) -> str:
        return f"{self.base}/respond/{next(self._counter)}"

    def bot_messages(self, channel: str | None = None) -> list[Message]:
        return [
            m
            for m in self.messages
            if m.user == BOT_USER and (channel is None or m.channel == channel)
        ]

    def in_thread(self, channel: str, thread_ts: str) -> list[Message]:
        return [
            m
            for m in self.messages
            if m.channel == channel and (m.ts == thread_ts or m.thread_ts == thread_ts)
        ]

    def message(self, channel: str, ts: str) -> Message:
        return next(m for m in self.messages if m.channel == channel and m.ts == ts)

    def called(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    # -- Web API ---------------------------------------------------------------------------

    @staticmethod
    async def _params(request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        for key in ("blocks", "files", "view"):
            if isinstance(params.get(key), str):
                with contextlib.suppress(ValueError):
                    params[key] = json.loads(params[key])
        return params

    def _fault(self, route: str, params: dict[str, Any] | None = None) -> Fault | None:
        queue = self._faults.get(route) or []
        for fault in queue:
            if fault.when is None or fault.when(params or {}):
                queue.remove(fault)
                return fault
        return self.chaos.pick(route) if self.chaos is not None else None

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params = await self._params(request)
        self.calls.append((method, params))
        fault = self._fault(method, params)
        if fault is not None and not fault.after:
            return fault.response()
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if request.headers.get("Authorization") != f"Bearer {expected}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        channel = params.get("channel") or params.get("channel_id")
        if channel in self.outside and method != "conversations.join":
            return web.json_response({"ok": False, "error": "not_in_channel"})
        result: dict[str, Any] = await handler(params)
        if self.on_done is not None:
            await self.on_done(request.match_info.get("caller", ""), method, params)
        if fault is not None:
            return fault.response()
        return web.json_response({"ok": "error" not in result, **result})

    async def _m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"user_id": BOT_USER, "bot_id": BOT_ID, "team_id": TEAM, "user": "sdbot"}

    async def _m_apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"url": self.base.replace("http://", "ws://") + "/link"}

    async def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        message = Message(
            p["channel"],
            self.next_ts(),
            p.get("text", ""),
            BOT_USER,
            p.get("thread_ts"),
            blocks=p.get("blocks") or [],
            bot_id=BOT_ID,
            metadata=_json(p.get("metadata")),
        )
        self.messages.append(message)
        return {"channel": message.channel, "ts": message.ts, "message": message.as_payload()}

    async def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        try:
            message = self.message(p["channel"], p["ts"])
        except StopIteration:
            return {"error": "message_not_found"}
        blocks = _json(p.get("blocks")) or []
        if not all(self._image_ok(block) for block in blocks):
            return {"error": "invalid_blocks"}
        message.text = p.get("text", "")
        message.updates.append((message.text, blocks))
        return {"channel": message.channel, "ts": message.ts}

    def _image_ok(self, block: dict[str, Any]) -> bool:
        """An image block shows a Slack file given by `id` or `url`, not both, that exists and
        the poster can see: here, a completed upload not deleted since
        (https://docs.slack.dev/reference/block-kit/composition-objects/slack-file-object)."""
        if block.get("type") != "image" or "image_url" in block:
            return True
        file = block.get("slack_file") or {}
        if ("id" in file) == ("url" in file):
            return False
        return file.get("id") in self.completed and file.get("id") in self.uploaded

    async def _m_chat_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        before = len(self.messages)
        self.messages = [
            m for m in self.messages if not (m.channel == p["channel"] and m.ts == p["ts"])
        ]
        return {} if len(self.messages) < before else {"error": "message_not_found"}

    async def _m_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        self.ephemerals.append(p)
        return {"message_ts": self.next_ts()}

    async def _m_views_open(self, p: dict[str, Any]) -> dict[str, Any]:
        self.views.append(p["view"])
        return {"view": {"id": f"V{len(self.views)}", **p["view"]}}

    async def _m_conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        found = self.in_thread(p["channel"], p["ts"])
        found.sort(key=lambda m: m.ts)
        if "oldest" in p:
            found = [m for m in found if p["oldest"] <= m.ts <= p.get("latest", m.ts)]
        meta = _flag(p.get("include_all_metadata"))
        return {"messages": [m.as_payload(metadata=meta) for m in found], "has_more": False}

    async def _m_conversations_history(self, p: dict[str, Any]) -> dict[str, Any]:
        # Newest first, at most `limit` (https://docs.slack.dev/reference/methods/conversations.history).
        found = [m for m in self.messages if m.channel == p["channel"] and not m.thread_ts]
        if "latest" in p:
            found = [m for m in found if p.get("oldest", m.ts) <= m.ts <= p["latest"]]
        found = sorted(found, key=lambda m: m.ts, reverse=True)[: int(p.get("limit", 100))]
        meta = _flag(p.get("include_all_metadata"))
        return {"messages": [m.as_payload(metadata=meta) for m in found]}

    async def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        file_id = f"F{next(self._counter)}"
        self._pending_uploads[file_id] = {"filename": p["filename"], "length": int(p["length"])}
        return {"upload_url": f"{self.base}/upload/v1/{file_id}", "file_id": file_id}

    async def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        files = []
        for entry in p["files"]:
            pending = self._pending_uploads.pop(entry["id"], None)
            if pending is None or entry["id"] not in self.uploaded:
                return {"error": "file_upload_not_found"}
            files.append({"id": entry["id"], "name": pending["filename"], "title": entry["title"]})
        for file in files:
            self.completed[file["id"]] = file
        if not p.get("channel_id"):
            # No channel: the file is private to the uploader, shared nowhere and no message
            # is posted (https://docs.slack.dev/reference/methods/files.completeUploadExternal).
            return {"files": files}
        message = Message(
            p["channel_id"],
            self.next_ts(),
            p.get("initial_comment", ""),
            BOT_USER,
            p.get("thread_ts"),
            files=files,
            bot_id=BOT_ID,
        )
        self.messages.append(message)
        return {"files": files}

    async def _m_files_info(self, p: dict[str, Any]) -> dict[str, Any]:
        # Known once completeUploadExternal ran for it; an upload never completed is not a file
        # yet (https://docs.slack.dev/reference/methods/files.completeUploadExternal).
        file = self.connect_files.get(p["file"]) or self.completed.get(p["file"])
        return {"file": file} if file is not None else {"error": "file_not_found"}

    async def _m_files_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        for message in self.messages:
            message.files = [f for f in message.files if f["id"] != p["file"]]
        return {} if self.uploaded.pop(p["file"], None) is not None else {"error": "file_not_found"}

    # -- other hosts -----------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        self.upload_attempts += 1
        # No token goes to upload URLs: the URL itself is the credential.
        assert "Authorization" not in request.headers
        fault = self._fault("upload")
        if fault is not None and not fault.after:
            return fault.response()
        file_id = request.match_info["file_id"]
        self.uploaded[file_id] = await request.read()
        if fault is not None:
            return fault.response()
        return web.Response(text=f"OK - {len(self.uploaded[file_id])}", content_type="text/plain")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.file_requests.append((request.path, request.headers.get("Authorization")))
        fault = self._fault("file")
        if fault is not None:  # reading has no side effect: before and after are alike
            return fault.response()
        if request.path in self.redirects:
            raise web.HTTPFound(self.redirects[request.path])
        found = self._files.get(request.path)
        if found is None:
            return web.Response(status=404)
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            # What Slack does for a missing or wrong token: a sign-in page, with status 200.
            return web.Response(body=LOGIN_PAGE, content_type="text/html")
        data, mimetype = found
        if request.path not in self._chunked:
            return web.Response(body=data, content_type=mimetype)
        response = web.StreamResponse(headers={"Content-Type": mimetype})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(data), 1024):
            await response.write(data[start : start + 1024])
        await response.write_eof()
        return response

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        # A response_url takes at most 5 posts within 30 minutes
        # (https://docs.slack.dev/interactivity/handling-user-interaction#message_responses);
        # later ones are refused and never shown.
        url = request.path
        self.respond_uses[url] = self.respond_uses.get(url, 0) + 1
        if self.respond_uses[url] > 5:
            return web.Response(status=404, text="used_url")
        self.responses.append(await request.json())
        return web.Response(text="ok")

    # -- Socket Mode -----------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.socket_connections += 1
        self._ws = ws
        await ws.send_json({"type": "hello", "num_connections": 1})
        self._ws_ready.set()
        async for frame in ws:
            if frame.type is aiohttp.WSMsgType.TEXT:
                data = json.loads(frame.data)
                waiter = self._acks.pop(str(data.get("envelope_id")), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(data.get("payload") or {})
        return ws

    async def socket_send(self, kind: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Send one envelope over the Socket Mode connection; return the ack's payload."""
        await asyncio.wait_for(self._ws_ready.wait(), 5)
        assert self._ws is not None
        envelope_id = f"env-{next(self._counter)}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = waiter
        await self._ws.send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": kind != "events_api",
                **extra,
            }
        )
        return await asyncio.wait_for(waiter, 5)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


def _flag(value: Any) -> bool:
    return value in (True, "true", "1", 1)


@dataclass
class Answer:
    """What Slack got back for a request: the HTTP status and the ack's body."""

    status: int
    body: dict[str, Any]


class SlackRig:
    """The real core and the real Slack adapter, driven like Slack drives them."""

    def __init__(
        self, fake: FakeSlack, app: BotApp, adapter: SlackAdapter, mode: str, slack: SlackSettings
    ) -> None:
        self.fake = fake
        self.app = app
        self.adapter = adapter
        self.slack = slack  # the adapter's settings section
        self.mode = mode
        self._events = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None

    # -- transport -------------------------------------------------------------------------

    async def _post(self, body: str, content_type: str, headers: dict[str, str]) -> Answer:
        assert self._http is not None
        url = f"http://127.0.0.1:{self.adapter.port}/slack/events"
        async with self._http.post(
            url, data=body.encode(), headers={"Content-Type": content_type, **headers}
        ) as response:
            text = await response.text()
            try:
                parsed = json.loads(text) if text else {}
            except ValueError:
                parsed = {"text": text}
            return Answer(response.status, parsed if isinstance(parsed, dict) else {})

    async def signed(
        self,
        body: str,
        content_type: str,
        *,
        retry: int = 0,
        secret: str = SIGNING_SECRET,
    ) -> Answer:
        stamp = str(int(time.time()))
        signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
        assert signature is not None
        headers = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}
        if retry:
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        return await self._post(body, content_type, headers)

    async def send_event(
        self,
        event: dict[str, Any],
        *,
        team: str = TEAM,
        retry: int = 0,
        event_id: str | None = None,
    ) -> Answer:
        body = {
            "token": "legacy",
            "team_id": team,
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._events)}",
            "event_time": int(time.time()),
            "event": event,
            "authorizations": [
                {"team_id": team, "user_id": BOT_USER, "is_bot": True, "enterprise_id": None}
            ],
        }
        if self.mode == "socket":
            extra = {"retry_attempt": retry, "retry_reason": "timeout"} if retry else {}
            return Answer(200, await self.fake.socket_send("events_api", body, **extra))
        return await self.signed(json.dumps(body), "application/json", retry=retry)

    async def send_interactive(self, payload: dict[str, Any]) -> Answer:
        if self.mode == "socket":
            return Answer(200, await self.fake.socket_send("interactive", payload))
        body = urlencode({"payload": json.dumps(payload)})
        return await self.signed(body, "application/x-www-form-urlencoded")

    # -- what people do --------------------------------------------------------------------

    async def slash(
        self, text: str, *, user: str = "U1", channel: str = "C1", team: str = TEAM
    ) -> Answer:
        form = {
            "token": "legacy",
            "team_id": team,
            "team_domain": "test",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/sd",
            "text": text,
            "api_app_id": "A1",
            "response_url": self.fake.response_url(),
            "trigger_id": f"trigger-{next(self._events)}",
        }
        if self.mode == "socket":
            return Answer(200, await self.fake.socket_send("slash_commands", form))
        return await self.signed(urlencode(form), "application/x-www-form-urlencoded")

    async def post(
        self,
        text: str,
        *,
        files: Iterable[dict[str, Any]] = (),
        user: str = "U1",
        channel: str = "C1",
        thread_ts: str | None = None,
        team: str = TEAM,
        events: Iterable[str] = ("message",),
        mention_files: bool = True,
        channel_type: str = "channel",
    ) -> Message:
        """A person posts a message; Slack sends the `events` for it, in that order
        (`message` always carries the files; `app_mention` only with `mention_files`)."""
        message = self.fake.user_message(
            text, channel=channel, user=user, thread_ts=thread_ts, files=files
        )
        event: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "channel_type": channel_type,
            "user": user,
            "text": text,
            "ts": message.ts,
            "team": team,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        if message.files:
            event |= {"subtype": "file_share", "files": message.files}
        for kind in events:
            payload = dict(event)
            if kind == "app_mention":
                payload["type"] = "app_mention"
                payload.pop("subtype", None)
                payload.pop("channel_type", None)
                if not mention_files:
                    payload.pop("files", None)
            answer = await self.send_event(payload, team=team)
            assert answer.status == 200
        return message

    def _interaction_base(
        self, kind: str, user: str, channel: str, team: str, message: Message | None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": kind,
            "token": "legacy",
            "api_app_id": "A1",
            "team": {"id": team, "domain": "test"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team},
            "channel": {"id": channel, "name": "general"},
            "trigger_id": f"trigger-{next(self._events)}",
            "response_url": self.fake.response_url(),
        }
        if message is not None:
            payload["message"] = message.as_payload()
        return payload

    async def click(
        self, message: Message, action_id: str, *, user: str = "U1", team: str = TEAM
    ) -> Answer:
        payload = self._interaction_base("block_actions", user, message.channel, team, message)
        payload["container"] = {
            "type": "message",
            "message_ts": message.ts,
            "channel_id": message.channel,
            "is_ephemeral": False,
        }
        payload["actions"] = [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "b1",
                "value": action_id.split(":")[2],
                "action_ts": str(time.time()),
            }
        ]
        return await self.send_interactive(payload)

    async def shortcut(
        self,
        callback_id: str,
        message: Message,
        *,
        user: str = "U1",
        team: str = TEAM,
        include_files: bool = True,
    ) -> Answer:
        payload = self._interaction_base("message_action", user, message.channel, team, message)
        if not include_files:
            payload["message"].pop("files", None)
        payload |= {"callback_id": callback_id, "message_ts": message.ts, "action_ts": "1"}
        return await self.send_interactive(payload)

    async def submit(
        self, view: dict[str, Any], values: dict[str, str], *, user: str = "U1", team: str = TEAM
    ) -> Answer:
        """Submit a modal the bot opened, with `values` typed into its fields."""
        state = {
            block["block_id"]: {
                block["element"]["action_id"]: {
                    "type": "plain_text_input",
                    "value": values.get(block["block_id"], block["element"].get("initial_value")),
                }
            }
            for block in view["blocks"]
            if block["type"] == "input"
        }
        payload = self._interaction_base("view_submission", user, "", team, None)
        payload.pop("channel")
        payload.pop("response_url")
        payload["view"] = {
            "id": "V1",
            "type": "modal",
            "team_id": team,
            "callback_id": view["callback_id"],
            "private_metadata": view["private_metadata"],
            "state": {"values": state},
        }
        return await self.send_interactive(payload)

    # -- waiting and reading ---------------------------------------------------------------

    async def jobs(self, team: str = TEAM) -> list[Job]:
        """Every job of a workspace, oldest first."""
        found = await self.app.store.query(JobQuery(Platform("slack"), team, limit=1000))
        return sorted(found, key=lambda j: j.created_at)

    async def settle(self) -> None:
        """Wait until the adapter's listener work and every job driver are done."""
        for _ in range(20):
            await self.adapter.wait_idle()
            await self.app.runner.wait_idle()
            await asyncio.sleep(0)
            if not self.app.runner.in_flight and not self.adapter._tasks:
                return
        raise AssertionError("the bot never settled")

    def status_of(self, job_id: str) -> Message:
        """The status message of a job (the bot message naming it without results or files)."""
        return next(
            m
            for m in self.fake.bot_messages()
            if f"`{job_id}`" in m.text
            and not m.files
            and not any(b.get("type") == "context" for b in m.blocks)
            and m.text.split("`")[0].strip() in COMMANDS
        )

    def results_in(self, channel: str, thread_ts: str) -> list[Message]:
        """The result (buttons) messages in a thread, oldest first."""
        return [
            m
            for m in self.fake.in_thread(channel, thread_ts)
            if m.user == BOT_USER and any(b.get("type") == "context" for b in m.blocks)
        ]

    def uploads_in(self, channel: str, thread_ts: str) -> list[Message]:
        return [
            m for m in self.fake.in_thread(channel, thread_ts) if m.user == BOT_USER and m.files
        ]


@contextlib.asynccontextmanager
async def _running_rig(
    tmp_path: Path,
    mode: str,
    adapter_options: dict[str, Any] | None = None,
    backend: Any = None,
    **overrides: Any,
) -> AsyncIterator[SlackRig]:
    fake = FakeSlack()
    await fake.start()
    values: dict[str, Any] = {
        "slack_bot_token": BOT_TOKEN,
        "slack_app_token": APP_TOKEN if mode == "socket" else None,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": fake.api_url,
        "admins": (ADMIN,),
    }
    values.update(overrides)
    config = fast_config(tmp_path, **values)
    app = make_app(config, backend)
    options: dict[str, Any] = {
        "http_host": "127.0.0.1",
        "http_port": 0,
        "mention_grace": 0.05,
        # Real back-off shapes, a thousandth of the waits: fault runs take seconds. More
        # attempts than production's 8, so a seeded run whose order the event loop shuffles
        # never meets 13 failures in a row (0.35^13 ≈ 1e-6 per call).
        "retry": RetryPolicy(attempts=12, scale=0.001),
    }
    options.update(adapter_options or {})
    adapter = SlackAdapter(slack_core(app), config[SlackSettings], **options)
    app.add_adapter(adapter)
    rig = SlackRig(fake, app, adapter, mode, config[SlackSettings])
    try:
        async with app:
            await adapter.start()
            try:
                async with aiohttp.ClientSession() as http:
                    rig._http = http
                    yield rig
                    await rig.settle()
            finally:
                await adapter.aclose()
                await rig.adapter.aclose()
    finally:
        await fake.aclose()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[SlackRig]:
    """HTTP mode: requests signed like Slack's, to the adapter's own server."""
    async with _running_rig(tmp_path, "http") as running:
        yield running


@pytest.fixture(params=["http", "socket"])
async def any_rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SlackRig]:
    """Both connection modes."""
    async with _running_rig(tmp_path, request.param) as running:
        yield running


if TYPE_CHECKING:
    # `make_rig(mode, **settings)`: the fixture below, as tests annotate it.
    MakeRig = Callable[..., contextlib.AbstractAsyncContextManager[SlackRig]]


@pytest.fixture
def make_rig(tmp_path: Path) -> MakeRig:
    """A rig with other settings: `async with make_rig("http", allowed_channels=…) as rig`;
    `adapter_options=` go to `SlackAdapter` (ack budget, mention grace …), `backend=` replaces
    the local backend."""
    count = itertools.count()

    def factory(
        mode: str = "http", **overrides: Any
    ) -> contextlib.AbstractAsyncContextManager[SlackRig]:
        return _running_rig(tmp_path / f"rig{next(count)}", mode, **overrides)

    return factory
