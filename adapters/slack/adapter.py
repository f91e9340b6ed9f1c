"""`SlackAdapter`: sdbot on Slack — the connection, and the core's `ChatAdapter` over the Web API.

It owns the Slack side's lifecycle: one aiohttp session (Web API calls and file downloads),
the Web client with sdbot's retry handlers, the Bolt `AsyncApp` with sdbot's listeners
(`adapters.slack.app`), and either a Socket Mode connection (when `SLACK_APP_TOKEN` is set; no
public URL needed) or an HTTP server on `SDBOT_HTTP_PORT` at `/slack/events` whose every
request is signature-verified with `SLACK_SIGNING_SECRET`. For the core it posts a job's
status message (its ts is the thread parent when the command was not in a thread), edits it
with `chat.update`, uploads all result images of a job in one `files_upload_v2` into the
thread and posts the summary with the Block Kit buttons as a separate message. Message ids
given to the core are `<channel>:<ts>` (uploaded files `<channel>:file:<id>`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError

from adapters.slack.app import SlackListeners
from adapters.slack.blocks import (
    Block,
    is_result_message,
    result_message,
    status_message,
    upload_comment,
)
from adapters.slack.client import make_web_client
from adapters.slack.convert import (
    attachment_refs,
    escape,
    file_message_id,
    message_id,
    parse_message_id,
    truncate,
)
from adapters.slack.files import SlackFileFetcher
from bot.errors import ChatDeliveryError, ConfigError
from bot.model import Conversation, Platform
from bot.ports import PostedStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence

    from slack_sdk.web.async_client import AsyncWebClient

    from adapters.slack.convert import FilePayload
    from bot.app import BotApp
    from bot.config import Config
    from bot.model import AttachmentRef, Caller
    from bot.views import ResultImage, ResultView, StatusView

_LOGGER = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
_GONE = frozenset({"message_not_found", "file_not_found", "file_deleted", "cant_delete_file"})
_REPLIES_PAGES = 5


class SlackCallError(ChatDeliveryError):
    """A Web API call failed; `code` is Slack's error code (`not_in_channel`, …) or the
    exception's name when Slack did not answer."""

    def __init__(self, what: str, code: str) -> None:
        super().__init__(f"Slack {what}: {code}")
        self.code = code


def slack_configured(config: Config) -> bool:
    """Whether the environment holds what the Slack adapter needs to run."""
    s = config.secrets
    return bool(s.slack_bot_token and (s.slack_app_token or s.slack_signing_secret))


class SlackAdapter:
    """`bot.ports.ChatAdapter` for Slack, plus the Bolt app that feeds the core."""

    platform = Platform.SLACK

    def __init__(
        self,
        app: BotApp,
        config: Config,
        *,
        http_host: str = "0.0.0.0",  # noqa: S104 - Slack must reach HTTP mode from outside
        http_port: int | None = None,
        ack_budget: float = 2.0,
        mention_grace: float = 2.0,
        socket_ping_interval: float = 10.0,
    ) -> None:
        secrets = config.secrets
        if not secrets.slack_bot_token:
            raise ConfigError("SLACK_BOT_TOKEN is not set (the bot token, xoxb-…)")
        if secrets.slack_app_token is not None and not secrets.slack_app_token.startswith("xapp-"):
            raise ConfigError("SLACK_APP_TOKEN must be an app-level token (xapp-…)")
        if not secrets.slack_app_token and not secrets.slack_signing_secret:
            raise ConfigError(
                "set SLACK_APP_TOKEN for Socket Mode, or SLACK_SIGNING_SECRET for HTTP mode"
            )
        self._app = app
        self._config = config
        self._token = secrets.slack_bot_token
        self._http_host = http_host
        self._http_port = config.http_port if http_port is None else http_port
        self._ack_budget = ack_budget
        self._mention_grace = mention_grace
        self._ping_interval = socket_ping_interval
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None
        self._files: SlackFileFetcher | None = None
        self._bolt: AsyncApp | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._site_runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        # Files of a job already uploaded, so a retried `post_result` does not upload twice.
        self._uploaded: dict[str, list[str]] = {}
        self._started = False
        self._stopped = False
        self._stopped_event = asyncio.Event()
        self._closed = False
        self.bot_user_id = ""
        self.bot_id = ""
        self.port: int | None = None  # the bound HTTP port once started in HTTP mode

    @property
    def socket_mode(self) -> bool:
        return bool(self._config.secrets.slack_app_token)

    @property
    def bolt(self) -> AsyncApp:
        """The Bolt app (after `start`)."""
        if self._bolt is None:
            raise RuntimeError("the Slack adapter is not started")
        return self._bolt

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the token, build the Bolt app, and connect (Socket Mode) or listen (HTTP)."""
        if self._started:
            raise RuntimeError("SlackAdapter can be started once")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        config = self._config
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        client = make_web_client(self._token, config.slack_api_url, self._session)
        self._client = client
        auth = await self._checked(client.auth_test(), "SLACK_BOT_TOKEN")
        self.bot_user_id = str(auth.get("user_id") or "")
        self.bot_id = str(auth.get("bot_id") or "")
        self._files = SlackFileFetcher(self._session, self._token, config.slack_api_url)
        bolt = AsyncApp(
            client=client,
            signing_secret=config.secrets.slack_signing_secret or "",
            process_before_response=True,
            name="sdbot",
            logger=logging.getLogger("adapters.slack.bolt"),
        )
        SlackListeners(
            self,
            self._app.dispatcher,
            self._app.store,
            config,
            ack_budget=self._ack_budget,
            mention_grace=self._mention_grace,
        ).register(bolt)
        self._bolt = bolt
        if self.socket_mode:
            await self._connect_socket(bolt, client)
        else:
            await self._listen(bolt)

    async def _connect_socket(self, bolt: AsyncApp, client: AsyncWebClient) -> None:
        app_token = self._config.secrets.slack_app_token
        assert app_token is not None
        # Ask for the WebSocket URL ourselves first: slack_sdk's client retries a refused
        # app token forever, and a wrong token should fail start-up with its name.
        opened = await self._checked(
            client.apps_connections_open(app_token=app_token), "SLACK_APP_TOKEN"
        )
        handler = AsyncSocketModeHandler(bolt, app_token, ping_interval=self._ping_interval)
        self._socket = handler
        handler.client.wss_uri = str(opened["url"])
        await handler.connect_async()  # type: ignore[no-untyped-call]
        _LOGGER.info("Slack: connected in Socket Mode as %s", self.bot_user_id)

    async def _listen(self, bolt: AsyncApp) -> None:
        runner = web.AppRunner(bolt.web_app(path=EVENTS_PATH, port=self._http_port))
        await runner.setup()
        self._site_runner = runner
        site = web.TCPSite(runner, self._http_host, self._http_port)
        await site.start()
        bound = runner.addresses[0] if runner.addresses else None
        self.port = int(bound[1]) if bound else self._http_port
        _LOGGER.info("Slack: HTTP mode on port %s at %s", self.port, EVENTS_PATH)

    async def _checked(self, call: Awaitable[Any], setting: str) -> Any:
        try:
            return await call
        except SlackApiError as exc:
            code = exc.response.get("error") if exc.response is not None else None
            raise ConfigError(f"Slack refused {setting}: {code or 'unknown error'}") from None
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise ChatDeliveryError(f"cannot reach Slack: {type(exc).__name__}") from None

    async def stop(self) -> None:
        """Stop receiving from Slack (close the Socket Mode connection or the HTTP server) and
        finish the listener work in progress; posting for running jobs still works.

        Closing in the order `adapter.stop()` → `app.aclose()` → `adapter.aclose()` lets job
        drivers the app is stopping still reach Slack while no new request comes in.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopped_event.set()
        if self._socket is not None:
            client = self._socket.client
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            pending = [
                f
                for f in (
                    client.message_processor,
                    client.current_session_monitor,
                    client.message_receiver,
                )
                if f is not None
            ]
            await asyncio.gather(*pending, return_exceptions=True)
        if self._site_runner is not None:
            await self._site_runner.cleanup()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_closed(self) -> None:
        """Return once the adapter has stopped receiving. Socket Mode reconnects by itself and
        the HTTP server does not end on its own, so only `stop()` ends the wait."""
        await self._stopped_event.wait()

    async def aclose(self) -> None:
        """`stop()`, then close the connection to Slack's Web API and file hosts."""
        if self._closed:
            return
        await self.stop()
        self._closed = True
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> SlackAdapter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- tasks -----------------------------------------------------------------------------

    def spawn(self, work: Awaitable[object], name: str) -> asyncio.Task[None]:
        """Run listener work in a named task the adapter tracks (and cancels on `aclose`)."""

        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                _LOGGER.exception("Slack task %s failed", name)

        task = asyncio.create_task(run(), name=name)
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no listener work is running (jobs run on in the core)."""
        await self._idle.wait()

    # -- Web API helpers -------------------------------------------------------------------

    def _api(self) -> AsyncWebClient:
        if self._client is None or self._closed:
            raise ChatDeliveryError("the Slack adapter is not running")
        return self._client

    async def _call(self, what: str, call: Awaitable[Any]) -> Mapping[str, Any]:
        """One Web API call; failures become `ChatDeliveryError` with Slack's error code."""
        try:
            response = await call
        except SlackApiError as exc:
            code = exc.response.get("error") if exc.response is not None else None
            raise SlackCallError(what, str(code or "error")) from None
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise SlackCallError(what, type(exc).__name__) from None
        data = getattr(response, "data", None)
        return data if isinstance(data, dict) else {}

    async def post_message(
        self,
        channel: str,
        thread: str | None,
        text: str,
        blocks: Sequence[Block] | None = None,
    ) -> str:
        """Post a bot message (text from the core, escaped here); return its ts."""
        data = await self._call(
            "chat.postMessage",
            self._api().chat_postMessage(
                channel=channel,
                thread_ts=thread,
                text=text if blocks is not None else truncate(escape(text), 39_000),
                blocks=list(blocks) if blocks is not None else None,
                unfurl_links=False,
                unfurl_media=False,
            ),
        )
        return str(data.get("ts", ""))

    async def post_ephemeral(self, channel: str, user: str, thread: str | None, text: str) -> None:
        await self._call(
            "chat.postEphemeral",
            self._api().chat_postEphemeral(
                channel=channel, user=user, thread_ts=thread, text=truncate(escape(text), 39_000)
            ),
        )

    async def open_modal(self, trigger_id: str, view: Block) -> None:
        try:
            await self._call("views.open", self._api().views_open(trigger_id=trigger_id, view=view))
        except ChatDeliveryError as exc:
            _LOGGER.warning("opening a modal failed: %s", exc)

    async def upload_reply(
        self, channel: str, thread: str | None, text: str, images: Sequence[ResultImage]
    ) -> list[str]:
        """Upload images with `text` as their message, in one `files_upload_v2`."""
        return await self._upload(channel, thread, escape(text), images, "")

    async def _upload(
        self,
        channel: str,
        thread: str | None,
        comment: str,
        images: Sequence[ResultImage],
        alt: str,
    ) -> list[str]:
        uploads = [
            {
                "file": image.data,
                "filename": image.name,
                "title": image.name,
                **({"alt_txt": truncate(alt, 1000)} if alt else {}),
            }
            for image in images
        ]
        try:
            response = await self._api().files_upload_v2(
                channel=channel,
                thread_ts=thread,
                initial_comment=comment,
                file_uploads=uploads,
            )
        except SlackApiError as exc:
            code = exc.response.get("error") if exc.response is not None else None
            raise SlackCallError("file upload", str(code or "error")) from None
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise SlackCallError("file upload", type(exc).__name__) from None
        files = response.get("files") or []
        ids = [file_message_id(channel, str(f["id"])) for f in files if f.get("id")]
        share = _share_ts(files, channel)
        if share:
            ids.insert(0, message_id(channel, share))
        return ids

    async def fetch_message_files(
        self, channel: str, ts: str, thread_ts: str | None
    ) -> tuple[AttachmentRef, ...]:
        """The files of one message, read back from Slack (when a payload lacks them)."""
        try:
            if thread_ts and thread_ts != ts:
                data = await self._call(
                    "conversations.replies",
                    self._api().conversations_replies(
                        channel=channel, ts=thread_ts, latest=ts, oldest=ts, inclusive=True, limit=2
                    ),
                )
            else:
                data = await self._call(
                    "conversations.history",
                    self._api().conversations_history(
                        channel=channel, latest=ts, oldest=ts, inclusive=True, limit=1
                    ),
                )
        except ChatDeliveryError as exc:
            _LOGGER.warning("reading message %s in %s failed: %s", ts, channel, exc)
            return ()
        for message in data.get("messages") or []:
            if message.get("ts") == ts:
                return attachment_refs(cast("list[FilePayload]", message.get("files") or []))
        return ()

    async def thread_has_job(self, caller: Caller) -> bool:
        """Whether the caller's thread holds a job of their workspace."""
        job = await self._app.store.latest_in_thread(
            caller.platform, caller.server, caller.conversation
        )
        return job is not None

    # -- ChatAdapter -----------------------------------------------------------------------

    async def download(self, ref: AttachmentRef, max_bytes: int) -> bytes:
        if self._files is None or self._closed:
            raise ChatDeliveryError("the Slack adapter is not running")
        return await self._files.fetch(ref, max_bytes)

    async def open_job_thread(self, where: Conversation, status: StatusView) -> PostedStatus:
        text, blocks = status_message(status)
        ts = await self.post_message(where.channel, where.thread, text, blocks)
        thread = where if where.thread else Conversation(where.channel, ts)
        return PostedStatus(thread, message_id(where.channel, ts))

    async def edit_status(self, thread: Conversation, message: str, status: StatusView) -> None:
        ref = parse_message_id(message)
        if ref is None or ref.ts is None:
            raise ChatDeliveryError(f"not a Slack message id: {message}")
        text, blocks = status_message(status)
        await self._call(
            "chat.update",
            self._api().chat_update(channel=ref.channel, ts=ref.ts, text=text, blocks=blocks),
        )

    async def post_result(self, thread: Conversation, result: ResultView) -> Sequence[str]:
        posted: list[str] = []
        if result.images:
            uploaded = self._uploaded.get(result.job_id)
            if uploaded is None:
                uploaded = await self._upload(
                    thread.channel,
                    thread.thread,
                    upload_comment(result),
                    result.images,
                    result.prompt,
                )
                self._uploaded[result.job_id] = uploaded
            posted.extend(uploaded)
        text, blocks = result_message(result)
        ts = await self.post_message(thread.channel, thread.thread, text, blocks)
        self._uploaded.pop(result.job_id, None)
        return [message_id(thread.channel, ts), *posted]

    async def post_text(self, thread: Conversation, text: str) -> str:
        ts = await self.post_message(thread.channel, thread.thread, text)
        return message_id(thread.channel, ts)

    async def find_marker(self, thread: Conversation, marker: str) -> Sequence[str]:
        """The job's result message and uploaded files in `thread`, if the result message is
        there; an upload without its result message counts as not posted (the result is
        posted again rather than left without its buttons)."""
        if thread.thread is None:
            return []
        results: list[str] = []
        files: list[str] = []
        cursor: str | None = None
        for _ in range(_REPLIES_PAGES):
            try:
                data = await self._call(
                    "conversations.replies",
                    self._api().conversations_replies(
                        channel=thread.channel, ts=thread.thread, limit=200, cursor=cursor
                    ),
                )
            except ChatDeliveryError as exc:
                # Retries are behind us (429 / 5xx / connection): this will not heal by itself.
                # Posting again risks a duplicate; not posting would lose the result.
                _LOGGER.warning("cannot read thread %s to check for a result: %s", thread, exc)
                return []
            for message in data.get("messages") or []:
                mine = message.get("user") == self.bot_user_id or (
                    self.bot_id and message.get("bot_id") == self.bot_id
                )
                if not mine:
                    continue
                if is_result_message(message, marker):
                    results.append(message_id(thread.channel, str(message["ts"])))
                elif message.get("files") and marker in str(message.get("text") or ""):
                    files.extend(
                        file_message_id(thread.channel, str(f["id"]))
                        for f in message["files"]
                        if f.get("id")
                    )
            cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                break
        return [*results, *files] if results else []

    async def delete_messages(self, thread: Conversation, messages: Sequence[str]) -> None:
        failed: list[str] = []
        for value in messages:
            ref = parse_message_id(value)
            if ref is None:
                continue
            try:
                if ref.file_id is not None:
                    await self._call("files.delete", self._api().files_delete(file=ref.file_id))
                elif ref.ts is not None:
                    await self._call(
                        "chat.delete", self._api().chat_delete(channel=ref.channel, ts=ref.ts)
                    )
            except SlackCallError as exc:
                if exc.code not in _GONE:  # already gone is as good as deleted
                    failed.append(str(exc))
        if failed:
            raise ChatDeliveryError("; ".join(failed))


def _share_ts(files: Sequence[Mapping[str, Any]], channel: str) -> str | None:
    """The ts of the message that shared uploaded files in `channel`, when Slack says it
    (sharing happens asynchronously, so it is often not known yet)."""
    for f in files:
        shares = f.get("shares") or {}
        for kind in ("public", "private"):
            for share in (shares.get(kind) or {}).get(channel) or []:
                if share.get("ts"):
                    return str(share["ts"])
    return None
