"""`SlackAdapter`: sdbot on Slack — the connection, and the core's `ChatAdapter` over the Web API.

It owns the Slack side's lifecycle: one aiohttp session (Web API calls and file downloads),
the Web client with sdbot's retry handlers, the Bolt `AsyncApp` with sdbot's listeners
(`adapters.slack.app`), and either a Socket Mode connection (when `SLACK_APP_TOKEN` is set; no
public URL needed) or an HTTP server on `SDBOT_HTTP_PORT` at `/slack/events` whose every
request is signature-verified with `SLACK_SIGNING_SECRET`. For the core it posts a job's
status message (its ts is the thread parent when the command was not in a thread), edits it
with `chat.update`, uploads all result images of a job in one upload into the thread and
posts the summary with the Block Kit buttons as a separate message. Message ids given to the
core are `<channel>:<ts>` (uploaded files `<channel>:file:<id>`).

Posting is exactly-once: every bot message carries a key in its `metadata`, and a post or
upload Slack answered with 5xx is looked for before it is sent again. A channel that refuses
the bot (`not_in_channel`, …) raises `ConversationClosedError`, after the job's requester was
told privately (their request's `response_url`, else a direct message) how to invite the bot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError

from adapters.slack.app import SlackListeners
from adapters.slack.blocks import (
    Block,
    result_message,
    status_message,
    upload_comment,
)
from adapters.slack.client import SERVER_ERRORS, make_web_client
from adapters.slack.convert import (
    CHECK_FILE_INFO,
    SLACK,
    SLACK_TRAITS,
    attachment_refs,
    escape,
    file_message_id,
    message_id,
    parse_message_id,
    safe_cut,
    truncate,
)
from adapters.slack.files import SlackFileFetcher
from bot.errors import ChatDeliveryError, ConfigError, ConversationClosedError, ImageInputError
from bot.model import Conversation
from bot.ports import PostedStatus
from bot.recent import Recent
from bot.retry import RetryPolicy, TransientError, parse_retry_after
from bot.tasks import TaskSet
from bot.views import ResultImage
from transport.leased import LeasedConnector, LeasedRequest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence

    from slack_sdk.web.async_client import AsyncWebClient

    from adapters.slack.convert import FilePayload
    from adapters.slack.settings import SlackSettings
    from bot.dispatcher import Dispatcher
    from bot.model import AttachmentRef, Caller
    from bot.ports import ClaimStore, JobRepo
    from bot.views import ResultView, StatusView

_LOGGER = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
_GONE = frozenset({"message_not_found", "file_not_found", "file_deleted", "cant_delete_file"})
_REPLIES_PAGES = 5
POST_EVENT = "sdbot_post"  # the metadata event type of every bot message
# Errors that mean the bot may not post in the channel at all (chat.postMessage's errors,
# https://docs.slack.dev/reference/methods/chat.postMessage#errors): no retry helps.
CLOSED_CODES = frozenset({"not_in_channel", "channel_not_found", "is_archived"})
DIRECT_LIMIT = 39_000  # characters per direct message (Slack cuts text at 40,000)

if TYPE_CHECKING:
    Notify = Callable[[str], Awaitable[None]]


class SlackCallError(ChatDeliveryError):
    """A Web API call failed; `code` is Slack's error code (`not_in_channel`, …) or the
    exception's name when Slack did not answer. `unsure`: Slack may have done the work
    anyway (5xx, or no answer)."""

    def __init__(self, what: str, code: str, *, unsure: bool = False) -> None:
        super().__init__(f"Slack {what}: {code}")
        self.code = code
        self.unsure = unsure


@dataclass(frozen=True)
class SlackCore:
    """What the Slack adapter uses of the core, and nothing more (wired in `adapters.cli`):
    the dispatcher its users' events go to, the claims that recognise an event Slack sends
    again, and the job rows (whether a thread holds a job)."""

    dispatcher: Dispatcher
    claims: ClaimStore
    jobs: JobRepo


def slack_configured(s: SlackSettings) -> bool:
    """Whether the environment holds what the Slack adapter needs to run."""
    return bool(s.slack_bot_token and (s.slack_app_token or s.slack_signing_secret))


class SlackAdapter:
    """`bot.ports.ChatAdapter` for Slack, plus the Bolt app that feeds the core."""

    platform = SLACK
    traits = SLACK_TRAITS

    def __init__(
        self,
        core: SlackCore,
        config: SlackSettings,
        *,
        http_host: str = "0.0.0.0",  # noqa: S104 - Slack must reach HTTP mode from outside
        http_port: int = 3000,
        ack_budget: float = 2.0,
        mention_grace: float = 2.0,
        socket_ping_interval: float = 10.0,
        retry: RetryPolicy | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        web_routes: Sequence[web.RouteDef] = (),
    ) -> None:
        """`trace_configs` observe Web API requests; `web_routes` (the operators' endpoints)
        are served beside `/slack/events` in HTTP mode."""
        """`http_port`: where HTTP mode listens (the composition root's `http_port` setting)."""
        if not config.slack_bot_token:
            raise ConfigError("SLACK_BOT_TOKEN is not set (the bot token, xoxb-…)")
        if config.slack_app_token is not None and not config.slack_app_token.startswith("xapp-"):
            raise ConfigError("SLACK_APP_TOKEN must be an app-level token (xapp-…)")
        if not config.slack_app_token and not config.slack_signing_secret:
            raise ConfigError(
                "set SLACK_APP_TOKEN for Socket Mode, or SLACK_SIGNING_SECRET for HTTP mode"
            )
        self._core = core
        self._config = config
        self._token = config.slack_bot_token
        self._http_host = http_host
        self._http_port = http_port
        self._ack_budget = ack_budget
        self._mention_grace = mention_grace
        self._ping_interval = socket_ping_interval
        self._retry = retry or RetryPolicy()
        # Posts whose outcome is unknown (5xx / no answer), by metadata key: look first.
        self._unsure: Recent[str, None] = Recent(10_000)
        # How to reach each recent job's requester privately.
        self._requesters: Recent[str, Notify] = Recent(10_000)
        self._trace_configs = list(trace_configs)
        self._web_routes = tuple(web_routes)
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None
        self._files: SlackFileFetcher | None = None
        self._bolt: AsyncApp | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._site_runner: web.AppRunner | None = None
        self._tasks = TaskSet("the Slack adapter")  # listener work (`spawn`)
        # Files of a job already uploaded, so a retried `post_result` does not upload twice
        # (dropped once posted; a post that keeps failing is retried at the next start).
        self._uploaded: Recent[str, list[str]] = Recent(1000)
        # Private files holding running jobs' live previews (file id, digest of the bytes),
        # newest last; the status shows the newest, the others are deleted (`edit_status`).
        self._previews: Recent[str, list[tuple[str, bytes]]] = Recent(1000)
        self._started = False
        self._stopped = False
        self._stopped_event = asyncio.Event()
        # Set once the Web API client exists (or the adapter closed): the core may resume jobs
        # before the adapter is started, and their drivers wait here rather than fail.
        self._ready = asyncio.Event()
        self._closed = False
        self.bot_user_id = ""
        self.bot_id = ""
        self.bot_name = ""
        self.port: int | None = None  # the bound HTTP port once started in HTTP mode

    @property
    def socket_mode(self) -> bool:
        return bool(self._config.slack_app_token)

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
        self._session = aiohttp.ClientSession(
            # A job driver's requests leave only while it holds the job's lease.
            connector=LeasedConnector(),
            request_class=LeasedRequest,
            timeout=aiohttp.ClientTimeout(total=60),
            trace_configs=self._trace_configs or None,
        )
        client = make_web_client(
            self._token, config.slack_api_url, self._session, policy=self._retry
        )
        self._client = client
        auth = await self._checked(client.auth_test(), "SLACK_BOT_TOKEN")
        self.bot_user_id = str(auth.get("user_id") or "")
        self.bot_id = str(auth.get("bot_id") or "")
        self.bot_name = str(auth.get("user") or "")
        self._files = SlackFileFetcher(
            self._session, self._token, config.slack_api_url, self._retry
        )
        self._ready.set()
        bolt = AsyncApp(
            client=client,
            signing_secret=config.slack_signing_secret or "",
            process_before_response=True,
            name="sdbot",
            logger=logging.getLogger("adapters.slack.bolt"),
        )
        SlackListeners(
            self,
            self._core.dispatcher,
            self._core.claims,
            admins=frozenset(config.admins),
            ack_budget=self._ack_budget,
            mention_grace=self._mention_grace,
        ).register(bolt)
        self._bolt = bolt
        if self.socket_mode:
            await self._connect_socket(bolt, client)
        else:
            await self._listen(bolt)

    async def _connect_socket(self, bolt: AsyncApp, client: AsyncWebClient) -> None:
        app_token = self._config.slack_app_token
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
        web_app = bolt.web_app(path=EVENTS_PATH, port=self._http_port)
        web_app.add_routes(self._web_routes)
        runner = web.AppRunner(web_app)
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
        await self._tasks.aclose()

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
        self._ready.set()  # whoever waits learns that it is not running
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> SlackAdapter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- tasks -----------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, object], name: str) -> asyncio.Task[object]:
        """Run listener work in a named task the adapter tracks (and cancels on `stop`);
        an exception is logged with its traceback."""
        return self._tasks.spawn(work, name)

    async def wait_idle(self) -> None:
        """Return once no listener work is running (jobs run on in the core)."""
        await self._tasks.wait_idle()

    # -- Web API helpers -------------------------------------------------------------------

    def _api(self) -> AsyncWebClient:
        if self._client is None or self._closed:
            raise ChatDeliveryError("the Slack adapter is not running")
        return self._client

    async def _call(self, what: str, call: Awaitable[Any]) -> Mapping[str, Any]:
        """One Web API call; failures become `SlackCallError` with Slack's error code."""
        try:
            response = await call
        except SlackApiError as exc:
            answer = exc.response
            code = answer.get("error") if answer is not None else None
            status = getattr(answer, "status_code", None)
            if not code and isinstance(status, int) and status != 200:
                code = f"http_{status}"
            raise SlackCallError(
                what, str(code or "error"), unsure=isinstance(status, int) and status >= 500
            ) from None
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise SlackCallError(what, type(exc).__name__, unsure=True) from None
        data = getattr(response, "data", None)
        return data if isinstance(data, dict) else {}

    def _closed_error(self, code: str) -> ConversationClosedError:
        name = f"@{self.bot_name}" if self.bot_name else "the bot"
        if code == "is_archived":
            return ConversationClosedError(
                "this channel is archived, so the bot cannot post there; "
                "run the command in another channel"
            )
        return ConversationClosedError(
            "the bot is not a member of this channel, so it cannot post there. "
            f"Invite it with `/invite {name}` in the channel (or mention it and choose "
            "Invite), then run the command again"
        )

    async def post_message(
        self,
        channel: str,
        thread: str | None,
        text: str,
        blocks: Sequence[Block] | None = None,
        *,
        key: str | None = None,
        escaped: bool = False,
        look_first: bool = False,
    ) -> str:
        """Post a bot message (text from the core, escaped here) exactly once; return its ts.

        Every post carries `key` in its `metadata`. When Slack answers 5xx or the connection
        breaks, the post may have happened anyway (Slack does the work and then fails), so
        the thread (or channel) is searched for the key before posting again; `look_first`
        searches before the first try too (another process may have posted it).
        """
        key = key or f"post:{uuid.uuid4().hex}"
        if look_first:
            self._remember_unsure(key)

        async def once() -> str:
            if key in self._unsure:
                try:
                    found = await self._find_post(channel, thread, key)
                except ChatDeliveryError as exc:
                    raise TransientError(f"looking for an earlier post failed: {exc}") from None
                if found is not None:
                    self._unsure.pop(key, None)
                    return found
            try:
                data = await self._call(
                    "chat.postMessage",
                    self._api().chat_postMessage(
                        channel=channel,
                        thread_ts=thread,
                        text=text
                        if blocks is not None or escaped
                        else truncate(escape(text), 39_000),
                        blocks=list(blocks) if blocks is not None else None,
                        metadata={"event_type": POST_EVENT, "event_payload": {"key": key}},
                        unfurl_links=False,
                        unfurl_media=False,
                    ),
                )
            except SlackCallError as exc:
                if exc.code in CLOSED_CODES:
                    raise self._closed_error(exc.code) from None
                if not exc.unsure:
                    raise
                self._remember_unsure(key)
                raise TransientError(f"{exc.code}; checking before posting again") from None
            self._unsure.pop(key, None)
            return str(data.get("ts", ""))

        try:
            return await self._retry.run(once, what="Slack chat.postMessage")
        except TransientError:
            raise SlackCallError("chat.postMessage", "no answer after retries") from None

    def _remember_unsure(self, key: str) -> None:
        self._unsure[key] = None

    async def _find_post(self, channel: str, thread: str | None, key: str) -> str | None:
        """The ts of the bot's message carrying `key` in its metadata, if Slack has it.

        Metadata is only returned with `include_all_metadata`
        (https://docs.slack.dev/reference/methods/conversations.replies).
        """
        cursor: str | None = None
        for _ in range(_REPLIES_PAGES):
            if thread:
                data = await self._call(
                    "conversations.replies",
                    self._api().conversations_replies(
                        channel=channel,
                        ts=thread,
                        limit=200,
                        cursor=cursor,
                        include_all_metadata=True,
                    ),
                )
            else:  # a new top-level post is among the channel's newest messages
                data = await self._call(
                    "conversations.history",
                    self._api().conversations_history(
                        channel=channel, limit=100, include_all_metadata=True
                    ),
                )
            for message in data.get("messages") or []:
                if self._mine(message) and _post_key(message) == key:
                    return str(message["ts"])
            cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
            if not thread or cursor is None:
                return None
        return None

    def _mine(self, message: Mapping[str, Any]) -> bool:
        return message.get("user") == self.bot_user_id or bool(
            self.bot_id and message.get("bot_id") == self.bot_id
        )

    async def post_ephemeral(self, channel: str, user: str, thread: str | None, text: str) -> None:
        await self._call(
            "chat.postEphemeral",
            self._api().chat_postEphemeral(
                channel=channel, user=user, thread_ts=thread, text=truncate(escape(text), 39_000)
            ),
        )

    async def post_direct(self, user: str, text: str) -> None:
        """A message to `user` in the app's direct messages (posting to a user id does that,
        https://docs.slack.dev/reference/methods/chat.postMessage#app_home); long text is
        split into several messages."""
        rest = escape(text)
        while rest:
            cut = len(rest)
            if cut > DIRECT_LIMIT:
                cut = rest.rfind("\n", 0, DIRECT_LIMIT)
                cut = cut if cut > 0 else safe_cut(rest, DIRECT_LIMIT) or DIRECT_LIMIT
            await self.post_message(user, None, rest[:cut], escaped=True)
            rest = rest[cut:].lstrip("\n")

    # -- private notices for a job's requester ---------------------------------------------

    def remember_requester(self, job_id: str, notify: Notify) -> None:
        """How to reach the user who started `job_id` privately (their request's
        `response_url`, else a direct message), should the job's channel refuse the bot."""
        self._requesters[job_id] = notify

    async def _tell_requester(self, job_id: str, text: str) -> None:
        notify = self._requesters.pop(job_id, None)
        if notify is None:
            _LOGGER.warning("job %s: cannot tell its requester: %s", job_id, text)
            return
        try:
            await notify(f"Job `{job_id}`: {text}.")
        except ChatDeliveryError as exc:
            _LOGGER.warning("job %s: telling the requester failed: %s", job_id, exc)

    async def open_modal(self, trigger_id: str, view: Block) -> None:
        try:
            await self._call("views.open", self._api().views_open(trigger_id=trigger_id, view=view))
        except ChatDeliveryError as exc:
            _LOGGER.warning("opening a modal failed: %s", exc)

    async def upload_reply(
        self, channel: str, thread: str | None, text: str, images: Sequence[ResultImage]
    ) -> list[str]:
        """Upload images with `text` as their message."""
        return await self._upload(channel, thread, escape(text), images, "")

    async def _upload(
        self,
        channel: str,
        thread: str | None,
        comment: str,
        images: Sequence[ResultImage],
        alt: str,
    ) -> list[str]:
        """Slack's upload flow (https://docs.slack.dev/messaging/working-with-files#upload):
        `files.getUploadURLExternal` and a POST of the bytes per file (both safe to repeat),
        then one `files.completeUploadExternal` sharing them all in the thread. That last
        call may have worked when Slack answers 5xx: `files.info` on the uploaded ids tells,
        before it is sent again."""
        file_ids = [await self._put_file(image, alt) for image in images]
        files = [
            {"id": file_id, "title": image.name}
            for file_id, image in zip(file_ids, images, strict=True)
        ]
        tried = False

        async def complete() -> Mapping[str, Any]:
            nonlocal tried
            if tried and await self._completed(file_ids):
                return {}
            tried = True
            try:
                return await self._call(
                    "files.completeUploadExternal",
                    self._api().files_completeUploadExternal(
                        files=files,  # type: ignore[arg-type]
                        channel_id=channel,
                        thread_ts=thread,
                        initial_comment=comment,
                    ),
                )
            except SlackCallError as exc:
                if exc.code in CLOSED_CODES:
                    raise self._closed_error(exc.code) from None
                raise

        answer = await self._retry.run(
            complete,
            # Slack may have completed it anyway: the next attempt asks before doing it again.
            retry_if=lambda exc: isinstance(exc, SlackCallError) and exc.unsure,
            what="Slack files.completeUploadExternal",
        )
        ids = [file_message_id(channel, file_id) for file_id in file_ids]
        share = _share_ts(answer.get("files") or [], channel)
        if share:
            ids.insert(0, message_id(channel, share))
        return ids

    async def _put_file(self, image: ResultImage, alt: str) -> str:
        """The first two steps of an upload: an upload URL and the bytes; the file's id."""
        extra = {"alt_txt": truncate(alt, 1000)} if alt else {}
        target = await self._call(
            "files.getUploadURLExternal",
            self._api().files_getUploadURLExternal(
                filename=image.name, length=len(image.data), **extra
            ),
        )
        await self._send_bytes(str(target["upload_url"]), image.data)
        return str(target["file_id"])

    async def _completed(self, file_ids: Sequence[str]) -> bool:
        """Whether an upload was completed after all: `files.info` knows a file only once
        `files.completeUploadExternal` has run for it."""
        for file_id in file_ids:
            try:
                await self._call("files.info", self._api().files_info(file=file_id))
            except SlackCallError as exc:
                if exc.code in ("file_not_found", "file_deleted"):
                    return False
                raise
        return True

    async def _send_bytes(self, url: str, data: bytes) -> None:
        """POST a file's bytes to its upload URL (the URL is the credential: no token, and
        never logged), retrying 429 / 5xx / broken connections."""
        session = self._session
        if session is None or self._closed:
            raise ChatDeliveryError("the Slack adapter is not running")

        async def once() -> None:
            try:
                async with session.post(url, data=data) as response:
                    await response.read()
                    if response.status == 200:
                        return
                    if response.status != 429 and response.status not in SERVER_ERRORS:
                        raise SlackCallError("file upload", f"http_{response.status}")
                    raise TransientError(
                        f"http_{response.status}",
                        parse_retry_after(response.headers.get("Retry-After")),
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransientError(type(exc).__name__) from None

        try:
            await self._retry.run(once, what="Slack file upload")
        except TransientError as exc:
            raise SlackCallError("file upload", exc.what) from None

    async def resolve_files(self, refs: Sequence[AttachmentRef]) -> tuple[AttachmentRef, ...]:
        """References with Slack Connect stubs replaced by what `files.info` says (those it
        cannot resolve are left out)."""
        resolved: list[AttachmentRef] = []
        for ref in refs:
            if not ref.url.startswith(CHECK_FILE_INFO):
                resolved.append(ref)
                continue
            found = await self._file_info(ref)
            if found is not None:
                resolved.append(found)
        return tuple(resolved)

    async def _file_info(self, ref: AttachmentRef) -> AttachmentRef | None:
        file_id = ref.url.removeprefix(CHECK_FILE_INFO)
        try:
            data = await self._call("files.info", self._api().files_info(file=file_id))
        except ChatDeliveryError as exc:
            _LOGGER.warning("files.info for a shared file failed: %s", exc)
            return None
        refs = attachment_refs([cast("FilePayload", data.get("file") or {})])
        return replace(refs[0], slot=ref.slot) if refs else None

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
        job = await self._core.jobs.latest_in_thread(
            caller.platform, caller.server, caller.conversation
        )
        return job is not None

    # -- ChatAdapter -----------------------------------------------------------------------

    async def download(self, ref: AttachmentRef, max_bytes: int) -> bytes:
        await self._ready.wait()
        if self._files is None or self._closed:
            raise ChatDeliveryError("the Slack adapter is not running")
        if ref.url.startswith(CHECK_FILE_INFO):
            found = await self._file_info(ref)
            if found is None:
                raise ImageInputError(
                    f"{ref.name} was shared from another organisation and Slack does not "
                    "let the bot read it; download it and attach it again"
                )
            ref = found
        return await self._files.fetch(ref, max_bytes)

    async def open_job_thread(
        self, where: Conversation, status: StatusView, *, again: bool = False
    ) -> PostedStatus:
        await self._ready.wait()
        text, blocks = status_message(status)
        try:
            ts = await self.post_message(
                where.channel,
                where.thread,
                text,
                blocks,
                key=status_key(status.job_id),
                look_first=again,
            )
        except ConversationClosedError as exc:
            await self._tell_requester(status.job_id, str(exc))
            raise
        thread = where if where.thread else Conversation(where.channel, ts)
        return PostedStatus(thread, message_id(where.channel, ts))

    async def edit_status(self, thread: Conversation, message: str, status: StatusView) -> None:
        """Edit the status message. A backend's live preview goes in as an image block showing
        a private file the bot uploaded (shared nowhere, so it is not posted in the channel);
        a changed preview is a new file and the one it replaces is deleted once the message
        no longer shows it, so the edits keep the core's cadence and no file piles up."""
        await self._ready.wait()
        ref = parse_message_id(message)
        if ref is None or ref.ts is None:
            raise ChatDeliveryError(f"not a Slack message id: {message}")
        shown = await self._preview_file(status)
        try:
            await self._update_status(ref.channel, ref.ts, status, shown)
        except SlackCallError as exc:
            if shown is None or exc.code != "invalid_blocks":
                raise
            # Slack processes uploads asynchronously (files.getUploadURLExternal, usage notes):
            # a file it cannot show yet fails the image block. The text goes out without it.
            _LOGGER.info("job %s: the preview could not be shown (%s)", status.job_id, exc.code)
            shown = None
            await self._update_status(ref.channel, ref.ts, status, None)
        await self._drop_previews(status.job_id, keep=shown)

    async def _update_status(
        self, channel: str, ts: str, status: StatusView, preview_file: str | None
    ) -> None:
        text, blocks = status_message(status, preview_file)
        await self._call(
            "chat.update",
            self._api().chat_update(channel=channel, ts=ts, text=text, blocks=blocks),
        )

    async def _preview_file(self, status: StatusView) -> str | None:
        """The id of the private file holding the status's preview, uploaded when the preview
        changed; None without a preview. A failed upload shows the last preview, if any."""
        if status.preview is None:
            return None
        digest = hashlib.blake2b(status.preview, digest_size=16).digest()
        files = self._previews.get(status.job_id)
        if files is None:
            files = self._previews[status.job_id] = []
        if files and files[-1][1] == digest:
            return files[-1][0]
        try:
            file_id = await self._put_file(
                ResultImage(f"preview-{status.job_id}.png", status.preview),
                f"live preview of job {status.job_id}",
            )
            # Without `channel_id` the file is completed but shared nowhere: private to the
            # bot (https://docs.slack.dev/reference/methods/files.completeUploadExternal).
            await self._call(
                "files.completeUploadExternal",
                self._api().files_completeUploadExternal(
                    files=[{"id": file_id, "title": "preview"}]
                ),
            )
        except ChatDeliveryError as exc:
            _LOGGER.info("job %s: the preview was not uploaded: %s", status.job_id, exc)
            return files[-1][0] if files else None
        files.append((file_id, digest))
        return file_id

    async def _drop_previews(self, job_id: str, *, keep: str | None) -> None:
        """Delete the job's preview files the status message no longer shows."""
        files = self._previews.pop(job_id, [])
        kept = [entry for entry in files if entry[0] == keep]
        if kept:
            self._previews[job_id] = kept
        for file_id, _ in files:
            if file_id == keep:
                continue
            try:
                await self._call("files.delete", self._api().files_delete(file=file_id))
            except SlackCallError as exc:
                if exc.code not in _GONE:
                    _LOGGER.info("job %s: an old preview was not deleted: %s", job_id, exc)

    async def post_result(self, thread: Conversation, result: ResultView) -> Sequence[str]:
        await self._ready.wait()
        try:
            return await self._post_result(thread, result)
        except ConversationClosedError as exc:
            await self._tell_requester(result.job_id, str(exc))
            raise

    async def _post_result(self, thread: Conversation, result: ResultView) -> Sequence[str]:
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
        ts = await self.post_message(
            thread.channel, thread.thread, text, blocks, key=result_key(result.job_id)
        )
        self._uploaded.pop(result.job_id, None)
        return [message_id(thread.channel, ts), *posted]

    async def post_text(self, thread: Conversation, text: str) -> str:
        await self._ready.wait()
        ts = await self.post_message(thread.channel, thread.thread, text)
        return message_id(thread.channel, ts)

    async def find_marker(self, thread: Conversation, marker: str) -> Sequence[str]:
        """The job's result message (found by the metadata key every post carries, as after a
        5xx) and its uploaded files in `thread`, if the result message is there. Files found
        without their result message are kept for the next `post_result` of the job, which
        then posts only the result message (a driver stopped between the two left them)."""
        await self._ready.wait()
        if thread.thread is None:
            return []
        key = result_key(marker)
        results: list[str] = []
        files: list[str] = []
        cursor: str | None = None
        for _ in range(_REPLIES_PAGES):
            try:
                data = await self._call(
                    "conversations.replies",
                    self._api().conversations_replies(
                        channel=thread.channel,
                        ts=thread.thread,
                        limit=200,
                        cursor=cursor,
                        include_all_metadata=True,
                    ),
                )
            except ChatDeliveryError as exc:
                # Retries are behind us (429 / 5xx / connection): this will not heal by itself.
                # Posting again risks a duplicate; not posting would lose the result.
                _LOGGER.warning("cannot read thread %s to check for a result: %s", thread, exc)
                return []
            for message in data.get("messages") or []:
                if not self._mine(message):
                    continue
                if _post_key(message) == key:
                    results.append(message_id(thread.channel, str(message["ts"])))
                elif message.get("files") and f"`{marker}`" in str(message.get("text") or ""):
                    files.extend(
                        file_message_id(thread.channel, str(f["id"]))
                        for f in message["files"]
                        if f.get("id")
                    )
            cursor = (data.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                break
        if not results and files:
            self._uploaded[marker] = files
        return [*results, *files] if results else []

    async def delete_messages(self, thread: Conversation, messages: Sequence[str]) -> None:
        await self._ready.wait()
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


def status_key(job_id: str) -> str:
    """The metadata key of a job's status message."""
    return f"status:{job_id}"


def result_key(job_id: str) -> str:
    """The metadata key of a job's result message (the one with the buttons)."""
    return f"result:{job_id}"


def _post_key(message: Mapping[str, Any]) -> object:
    """The key a message read back with `include_all_metadata` carries, if it is one of ours
    (https://docs.slack.dev/messaging/message-metadata)."""
    metadata = message.get("metadata") or {}
    if metadata.get("event_type") != POST_EVENT:
        return None
    return (metadata.get("event_payload") or {}).get("key")


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
