"""The Bolt `AsyncApp` listeners: every way a Slack user reaches sdbot (SPEC §2.3, §3, §3.2).

- `/sd <command> …` — parsed at once, so a grammar error is the (ephemeral) ack itself; the
  rest of the work runs in a tracked task while the listener waits a short budget for the
  core's answer to put into the ack, and acks empty when the budget runs out (always inside
  Slack's 3 seconds). The core's answers are gathered into one message; later ones go
  through the command's `response_url`, which Slack accepts 5 times in 30 minutes
  (`ResponseUrl` counts); an answer too long for one message goes to the user's direct
  messages, with a note where it went.
- Mentions with image files — from `message` events (which carry `files`) and `app_mention`
  (which may not); both arrive for one message, so each message is claimed once by
  (team, channel, ts), which also drops Slack's retries (`X-Slack-Retry-Num`) on the replica
  that took it. An `app_mention` without files waits briefly for its `message` twin before it
  acts alone. Slack hears back (HTTP 200, or the Socket Mode ack) only once the message's job
  row is committed, or it was answered: an event acknowledged is never lost with a replica
  stopped right after. When the ack budget runs out first, Slack is answered 503 and retries.
  A retry is never dropped for the store's claim alone (the replica that took the message may
  have stopped before its job was written): the job's row carries the message's claim instead,
  so it is made once whichever replica gets there.
- Thread replies (`thread_ts` ≠ `ts`) are re-generation requests (SPEC §3.2); the core
  decides whose replies count. Direct messages need no mention.
- Message shortcuts "Interrogate image" and "img2img from this image" (a modal).
- Buttons `sdbot:<kind>:<job>[:n]` and the Edit / img2img modals.

Bolt runs with `process_before_response=True`: each listener only reads the payload, acks and
hands the work to a task the adapter tracks, so the ack leaves at once and nothing Bolt
starts on its own outlives `aclose()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.response import BoltResponse

from adapters.slack.blocks import (
    EDIT_CALLBACK,
    IMG2IMG_CALLBACK,
    ModalContext,
    edit_modal,
    img2img_modal,
    submitted_values,
)
from adapters.slack.convert import (
    SLACK,
    SlackMessage,
    SlackTarget,
    attachment_refs,
    escape,
    mentions,
    message_from_event,
    normalize_text,
    starts_with_command,
    target_from_interaction,
    team_of,
)
from bot.errors import ChatDeliveryError, UserInputError
from bot.model import AttachmentRef, Caller, Conversation
from bot.recent import Recent
from bot.views import EDIT_FIELDS, Action, ActionKind
from commands import GrammarError, build, parse, tokenize

if TYPE_CHECKING:
    from collections.abc import Coroutine, Mapping, Sequence

    from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
    from slack_bolt.request.async_request import AsyncBoltRequest

    from adapters.slack.adapter import SlackAdapter
    from adapters.slack.convert import FilePayload, MessagePayload
    from bot.dispatcher import Dispatcher
    from bot.ports import ClaimStore
    from bot.views import ResultImage

_LOGGER = logging.getLogger(__name__)

SLASH_COMMAND = "/sd"
INTERROGATE_SHORTCUT = "sdbot_interrogate"
IMG2IMG_SHORTCUT = "sdbot_img2img"
ACTION_PATTERN = re.compile(r"^sdbot:")
_IMAGE_TYPES = ("image/",)
ONE_ANSWER = 12_000  # characters of one gathered answer; longer goes to a direct message


class RecentKeys:
    """Keys seen in the last `ttl` seconds (at most `size` of them, a `Recent` map): Slack
    retries an event for up to a few minutes, and one message arrives as `message` and
    `app_mention`."""

    def __init__(self, ttl: float = 900.0, size: int = 20_000) -> None:
        self._ttl = ttl
        self._seen: Recent[str, float] = Recent(size)  # key → when it was first seen

    def claim(self, key: str) -> bool:
        """True the first time `key` is seen (within the window), False afterwards."""
        now = time.monotonic()
        # Oldest first: drop the front while it is past the window.
        while self._seen and next(iter(self._seen.values())) < now - self._ttl:
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True

    def __contains__(self, key: str) -> bool:
        seen = self._seen.get(key)
        return seen is not None and seen >= time.monotonic() - self._ttl


class ResponseUrl:
    """A request's `response_url` and its budget: Slack accepts at most 5 uses within 30
    minutes (https://docs.slack.dev/interactivity/handling-user-interaction#message_responses);
    past that the answer is lost, so `send` says False and the caller goes another way."""

    USES = 5
    LIFETIME = 30 * 60.0

    def __init__(self, respond: AsyncRespond) -> None:
        self._respond = respond
        self._born = time.monotonic()
        self.used = 0

    @property
    def left(self) -> int:
        if time.monotonic() - self._born >= self.LIFETIME:
            return 0
        return self.USES - self.used

    async def send(self, text: str, kind: str) -> bool:
        """Post `text` (mrkdwn, escaped) to the URL; False when the budget is gone or Slack
        did not take it."""
        if self.left <= 0:
            return False
        self.used += 1
        try:
            answer = await self._respond(text=text, response_type=kind, replace_original=False)
        except Exception as exc:  # slack_sdk's webhook client raises several unrelated types
            _LOGGER.warning("answer through response_url failed: %s", type(exc).__name__)
            return False
        if answer.status_code != 200:
            _LOGGER.warning("response_url refused an answer: %s", answer.status_code)
            return False
        return True


class SlackResponder:
    """`bot.ports.Responder` for one Slack request.

    With `ack` (slash commands) answers are gathered until the work ends (`flush`) and sent
    as one: in the ack when it is still open, else through `respond` (the command's
    `response_url`, which works where the bot is not a member, 5 times at most). Otherwise
    public answers are bot messages in `thread` and private ones `chat.postEphemeral`,
    falling back to `respond` when the bot may not post there (a shortcut in a channel the
    bot has not joined). Whatever does not fit — an answer over `ONE_ANSWER` characters, a
    spent `response_url` — goes to the user's direct messages.
    """

    def __init__(
        self,
        adapter: SlackAdapter,
        *,
        channel: str,
        user: str,
        thread: str | None,
        ack: AsyncAck | None = None,
        respond: AsyncRespond | None = None,
        committed: asyncio.Event | None = None,
    ) -> None:
        """`committed` is set once a job's row is (`accepted`)."""
        self._adapter = adapter
        self._committed = committed
        self._channel = channel
        self._user = user
        self._thread = thread
        self._ack = ack
        self._url = ResponseUrl(respond) if respond is not None else None
        self._acked = ack is None
        self._answered = asyncio.Event()
        self._gathered: list[tuple[str, str]] = []  # (text, response type) until `flush`

    async def ack_within(self, work: asyncio.Task[Any], budget: float) -> None:
        """Wait up to `budget` seconds for the first answer (or the end of `work`), then ack."""
        work.add_done_callback(lambda _task: self._answered.set())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), budget)
        await self._ack_once()

    async def _ack_once(self, **payload: Any) -> bool:
        if self._acked or self._ack is None:
            return False
        self._acked = True
        await self._ack(**payload)
        self._answered.set()
        return True

    async def accepted(self, job_id: str) -> None:
        # The job's status message in the channel is the visible acknowledgement.
        self._adapter.remember_requester(job_id, self.notify)
        if self._committed is not None:
            self._committed.set()
        await self._ack_once()

    async def notify(self, text: str) -> None:
        """Tell the requester privately (`text` is mrkdwn): `response_url` while it lasts,
        else a direct message."""
        if self._url is not None and await self._url.send(text, "ephemeral"):
            return
        await self._adapter.post_direct(self._user, text)

    async def reply(
        self, text: str, *, private: bool = False, images: Sequence[ResultImage] = ()
    ) -> None:
        kind = "ephemeral" if private else "in_channel"
        if images:
            await self._ack_once()
            try:
                await self._adapter.upload_reply(self._channel, self._thread, text, images)
                return
            except ChatDeliveryError as exc:
                _LOGGER.warning("posting images in %s failed: %s", self._channel, exc)
                text += "\n(the images could not be posted here; invite the bot to this channel)"
        if self._ack is not None:
            self._gathered.append((text, kind))
        elif private:
            await self._ephemeral(text)
        else:
            await self._public(text)

    async def refuse(self, message: str) -> None:
        if self._ack is not None:
            self._gathered.append((message, "ephemeral"))
        else:
            await self._ephemeral(message)

    async def flush(self) -> None:
        """Send the gathered answers: one message per run of the same visibility."""
        runs: list[tuple[str, str]] = []
        for text, kind in self._gathered:
            if runs and runs[-1][1] == kind:
                runs[-1] = (runs[-1][0] + "\n" + text, kind)
            else:
                runs.append((text, kind))
        self._gathered.clear()
        for text, kind in runs:
            await self._answer(text, kind)
        self._answered.set()

    async def _answer(self, text: str, kind: str) -> None:
        if len(text) > ONE_ANSWER:
            lines = text.count("\n") + 1
            await self._adapter.post_direct(self._user, text)
            text = (
                f"The answer is long ({lines} lines), so it went to your direct messages "
                "with the bot."
            )
            kind = "ephemeral"
        if await self._ack_once(text=escape(text), response_type=kind):
            return
        if self._url is not None and await self._url.send(escape(text), kind):
            return
        await self._adapter.post_direct(self._user, text)

    async def _ephemeral(self, text: str) -> None:
        try:
            await self._adapter.post_ephemeral(self._channel, self._user, self._thread, text)
        except ChatDeliveryError as exc:
            if self._url is None:
                _LOGGER.warning("ephemeral answer in %s failed: %s", self._channel, exc)
                return
            if not await self._url.send(escape(text), "ephemeral"):
                await self._adapter.post_direct(self._user, text)

    async def _public(self, text: str) -> None:
        try:
            await self._adapter.post_message(self._channel, self._thread, text)
        except ChatDeliveryError as exc:
            _LOGGER.warning("answer in %s failed: %s", self._channel, exc)


class SlackListeners:
    """Registers sdbot's listeners on a Bolt `AsyncApp` and turns payloads into core calls."""

    def __init__(
        self,
        adapter: SlackAdapter,
        dispatcher: Dispatcher,
        store: ClaimStore,
        *,
        admins: frozenset[str],
        ack_budget: float = 2.0,
        mention_grace: float = 2.0,
    ) -> None:
        self._adapter = adapter
        self._dispatcher = dispatcher
        self._store = store
        self._admins = admins  # Slack user ids with admin rights (the `admins` setting)
        self._ack_budget = ack_budget
        self._mention_grace = mention_grace
        self._claimed = RecentKeys()
        # `app_mention`s waiting for their `message` twin, by message key (each removed when
        # its short wait ends).
        self._twins: dict[str, asyncio.Event] = {}
        # Messages being routed before their ack, by message key (each removed when its work
        # ends): the job's row committed, and the work. Another delivery of one (a retry, a
        # twin) is answered as the first is, not at once.
        self._routing: dict[str, tuple[asyncio.Event, asyncio.Task[object]]] = {}

    def register(self, bolt: AsyncApp) -> None:
        bolt.command(SLASH_COMMAND)(self.on_command)
        bolt.event("message")(self.on_message)
        bolt.event("app_mention")(self.on_app_mention)
        bolt.event("file_shared")(self.on_file_shared)
        bolt.shortcut(INTERROGATE_SHORTCUT)(self.on_interrogate_shortcut)
        bolt.shortcut(IMG2IMG_SHORTCUT)(self.on_img2img_shortcut)
        bolt.view(IMG2IMG_CALLBACK)(self.on_img2img_submit)
        bolt.view(EDIT_CALLBACK)(self.on_edit_submit)
        bolt.action(ACTION_PATTERN)(self.on_action)

    # -- helpers ---------------------------------------------------------------------------

    @property
    def _bot(self) -> str:
        return self._adapter.bot_user_id

    def _caller(
        self, team: str, user: str, channel: str, thread: str | None, name: str = ""
    ) -> Caller:
        return Caller(
            SLACK,
            server=team,
            user=user,
            conversation=Conversation(channel, thread),
            is_admin=user in self._admins,
            user_name=name or user,
        )

    def _spawn(self, work: Coroutine[Any, Any, object], name: str) -> asyncio.Task[object]:
        return self._adapter.spawn(work, name)

    # -- slash command ---------------------------------------------------------------------

    async def on_command(
        self,
        ack: AsyncAck,
        body: dict[str, Any],
        respond: AsyncRespond,
        context: AsyncBoltContext,
    ) -> None:
        team = team_of(body, context.team_id)
        channel, user = str(body.get("channel_id", "")), str(body.get("user_id", ""))
        text = normalize_text(str(body.get("text") or ""), self._bot) or "help"
        try:
            parse(text)  # pure: a grammar error is answered in the ack itself
        except GrammarError as exc:
            await ack(text=escape(str(exc)), response_type="ephemeral")
            return
        caller = self._caller(team, user, channel, None, str(body.get("user_name") or ""))
        responder = SlackResponder(
            self._adapter, channel=channel, user=user, thread=None, ack=ack, respond=respond
        )
        work = self._spawn(self._command(caller, text, responder), f"sdbot-slack-command-{channel}")
        await responder.ack_within(work, self._ack_budget)

    async def _command(self, caller: Caller, text: str, responder: SlackResponder) -> None:
        try:
            await self._dispatcher.handle_text(caller, text, [], responder)
        finally:
            await responder.flush()

    # -- messages --------------------------------------------------------------------------

    async def on_file_shared(self) -> None:
        """Every upload also fires `file_shared`; answering it keeps Slack from retrying."""

    async def on_message(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        context: AsyncBoltContext,
        request: AsyncBoltRequest,
    ) -> BoltResponse | None:
        message = message_from_event(cast("MessagePayload", event), team_of(body, context.team_id))
        if message is None:
            return None
        mentioned = mentions(message.text, self._bot)
        if not (mentioned or message.is_direct or message.is_thread_reply):
            return None  # channel chatter
        if self._claim(message):
            return await self._route_before_ack(message, _is_retry(request), "message")
        return await self._answer_as_first(message)

    async def on_app_mention(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        context: AsyncBoltContext,
        request: AsyncBoltRequest,
    ) -> BoltResponse | None:
        message = message_from_event(cast("MessagePayload", event), team_of(body, context.team_id))
        if message is None:
            return None
        if message.has_files:
            if self._claim(message):
                return await self._route_before_ack(message, _is_retry(request), "mention")
            return await self._answer_as_first(message)
        # `app_mention` may lack the message's files; its `message` twin has them. Give the
        # twin a moment to claim the message, and act alone only when it does not come.
        self._spawn(self._mention_fallback(message), f"sdbot-slack-mention-{message.ts}")
        return None

    @staticmethod
    def _key(message: SlackMessage) -> str:
        return f"{message.team}:{message.channel}:{message.ts}"

    def _claim(self, message: SlackMessage) -> bool:
        key = self._key(message)
        waiting = self._twins.get(key)
        if waiting is not None:
            waiting.set()
        return self._claimed.claim(key)

    async def _mention_fallback(self, message: SlackMessage) -> None:
        key = self._key(message)
        if key in self._claimed or key in self._twins:
            return  # the twin was first, or this is a retry of a waiting mention
        twin = self._twins[key] = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(twin.wait(), self._mention_grace)
        finally:
            del self._twins[key]
        if twin.is_set() or not self._claimed.claim(key):
            return
        files = await self._adapter.fetch_message_files(
            message.channel, message.ts, message.thread_ts
        )
        if files:
            message = replace(message, files=files, has_files=True)
        await self._route(message)

    async def _route_before_ack(
        self, message: SlackMessage, retry: bool, kind: str
    ) -> BoltResponse | None:
        """Route the message in a tracked task, and return (Bolt then answers Slack) once its
        job's row is committed or the work ended (answered, refused, not a job). When the ack
        budget is spent first, Slack is answered 503, so that it sends the event again: the
        work goes on here, and the job's claim makes one job of the two, whichever replica the
        retry reaches; an event answered 200 and then lost with this replica is not retried
        (https://docs.slack.dev/apis/events-api/#retries)."""
        committed = asyncio.Event()
        work = self._spawn(
            self._route(message, retry=retry, committed=committed),
            f"sdbot-slack-{kind}-{message.ts}",
        )
        key = self._key(message)
        self._routing[key] = (committed, work)
        work.add_done_callback(lambda _task: self._routing.pop(key, None))
        return await self._ack_when_written(message, committed, work)

    async def _answer_as_first(self, message: SlackMessage) -> BoltResponse | None:
        """Another delivery of a message this replica took: while the first is still being
        routed, wait for its outcome, so a retry is not answered 200 before the job is written
        (a replica stopped meanwhile would lose it, and Slack would not ask again)."""
        routing = self._routing.get(self._key(message))
        if routing is None:
            return None
        return await self._ack_when_written(message, *routing)

    async def _ack_when_written(
        self, message: SlackMessage, committed: asyncio.Event, work: asyncio.Task[object]
    ) -> BoltResponse | None:
        waiting = asyncio.ensure_future(committed.wait())
        try:
            await asyncio.wait(
                [work, waiting], timeout=self._ack_budget, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiting.cancel()
        if committed.is_set() or work.done():
            return None
        _LOGGER.warning(
            "Slack message %s not written within %.3g s: answered 503 for a retry",
            message.ts,
            self._ack_budget,
        )
        return BoltResponse(status=503, body="")

    async def _route(
        self,
        message: SlackMessage,
        *,
        retry: bool = False,
        committed: asyncio.Event | None = None,
    ) -> None:
        """A claimed message: a command, or a reply in a job's thread."""
        key = f"slack:{self._key(message)}"
        # The in-memory claim catches twins and quick retries; the store's catches twins that
        # reached two replicas, and answers made before a restart. A retry skips it: Slack
        # retries only what was not acknowledged in time, and the replica that claimed the
        # message may have stopped before writing its job. The job's row carries its own claim
        # (`event_key`), so whichever replica writes it first makes the one job.
        if not retry and not await self._store.claim(key):
            return
        if message.files:
            message = replace(message, files=await self._adapter.resolve_files(message.files))
        text = normalize_text(message.text, self._bot)
        mentioned = mentions(message.text, self._bot)
        caller = replace(
            self._caller(message.team, message.user, message.channel, message.thread_ts),
            event_key=f"{key}:job",
        )
        # A reply in a thread re-generates; a mention there that is not a command counts as a
        # reply only in a job's thread, and elsewhere is a (bad) command that gets help.
        reply = message.is_thread_reply and not (mentioned and starts_with_command(text))
        if reply and (not mentioned or await self._adapter.thread_has_job(caller)):
            responder = SlackResponder(
                self._adapter,
                channel=message.channel,
                user=message.user,
                thread=message.thread_ts,
                committed=committed,
            )
            await self._dispatcher.handle_reply(caller, text, message.files, responder)
            return
        responder = SlackResponder(
            self._adapter,
            channel=message.channel,
            user=message.user,
            thread=message.thread_root,
            committed=committed,
        )
        await self._dispatcher.handle_text(caller, text, message.files, responder)

    # -- shortcuts -------------------------------------------------------------------------

    def _shortcut_target(
        self, body: Mapping[str, Any], context: AsyncBoltContext
    ) -> tuple[SlackTarget, Mapping[str, Any]] | None:
        target = target_from_interaction(body, team_of(body, context.team_id))
        message = body.get("message")
        if not isinstance(message, dict):
            return None
        return target, message

    async def _shortcut_image(
        self, target: SlackTarget, message: Mapping[str, Any]
    ) -> AttachmentRef | None:
        """The first image of a shortcut's message (fetched again when the payload lacks
        its files)."""
        files = message.get("files")
        if isinstance(files, list):
            refs: Sequence[AttachmentRef] = attachment_refs(cast("list[FilePayload]", files))
        else:
            refs = await self._adapter.fetch_message_files(
                target.channel, str(message.get("ts", "")), message.get("thread_ts")
            )
        refs = await self._adapter.resolve_files(refs)
        images = [r for r in refs if (r.content_type or "").startswith(_IMAGE_TYPES)]
        candidates = images or list(refs)
        return candidates[0] if candidates else None

    async def on_interrogate_shortcut(
        self,
        ack: AsyncAck,
        body: dict[str, Any],
        respond: AsyncRespond,
        context: AsyncBoltContext,
    ) -> None:
        await ack()
        found = self._shortcut_target(body, context)
        if found is not None:
            self._spawn(self._interrogate(*found, respond), "sdbot-slack-interrogate")

    async def _interrogate(
        self, target: SlackTarget, message: Mapping[str, Any], respond: AsyncRespond
    ) -> None:
        responder = SlackResponder(
            self._adapter,
            channel=target.channel,
            user=target.user,
            thread=target.thread,
            respond=respond,
        )
        image = await self._shortcut_image(target, message)
        if image is None:
            await responder.refuse("that message has no image file to interrogate")
            return
        caller = self._caller(
            target.team, target.user, target.channel, target.thread, target.user_name
        )
        await self._dispatcher.handle_text(caller, "interrogate", [image], responder)

    async def on_img2img_shortcut(
        self,
        ack: AsyncAck,
        body: dict[str, Any],
        respond: AsyncRespond,
        context: AsyncBoltContext,
    ) -> None:
        await ack()
        found = self._shortcut_target(body, context)
        if found is not None:
            trigger = str(body.get("trigger_id", ""))
            self._spawn(self._open_img2img(*found, trigger, respond), "sdbot-slack-img2img-modal")

    async def _open_img2img(
        self,
        target: SlackTarget,
        message: Mapping[str, Any],
        trigger: str,
        respond: AsyncRespond,
    ) -> None:
        image = await self._shortcut_image(target, message)
        if image is None:
            responder = SlackResponder(
                self._adapter,
                channel=target.channel,
                user=target.user,
                thread=target.thread,
                respond=respond,
            )
            await responder.refuse("that message has no image file to start from")
            return
        meta = ModalContext(
            target.channel,
            target.thread,
            files=((image.name, image.url, image.size, image.content_type),),
            message=str(message.get("ts", "")),
            respond=respond.response_url or "",
        )
        try:
            view = img2img_modal(meta)
        except ValueError:  # the file reference did not fit; fetch it again on submission
            view = img2img_modal(replace(meta, files=()))
        await self._adapter.open_modal(trigger, view)

    async def on_img2img_submit(
        self,
        ack: AsyncAck,
        body: dict[str, Any],
        view: dict[str, Any],
        context: AsyncBoltContext,
    ) -> None:
        meta = ModalContext.load(str(view.get("private_metadata", "")))
        values = submitted_values(view)
        errors, parsed_values = _check_img2img(values)
        if errors:
            await ack(response_action="errors", errors=errors)
            return
        await ack()
        if meta is None:
            return
        user = body.get("user") or {}
        caller = self._caller(
            team_of(body, context.team_id),
            str(user.get("id", "")),
            meta.channel,
            meta.thread,
            str(user.get("username") or user.get("name") or ""),
        )
        self._spawn(self._img2img(caller, meta, parsed_values), "sdbot-slack-img2img")

    async def _img2img(self, caller: Caller, meta: ModalContext, values: dict[str, str]) -> None:
        responder = SlackResponder(
            self._adapter,
            channel=meta.channel,
            user=caller.user,
            thread=meta.thread,
            respond=AsyncRespond(response_url=meta.respond) if meta.respond else None,
        )
        refs: Sequence[AttachmentRef] = [
            AttachmentRef(name, url, size, mimetype) for name, url, size, mimetype in meta.files
        ]
        if not refs and meta.message:
            refs = (
                await self._adapter.fetch_message_files(meta.channel, meta.message, meta.thread)
            )[:1]
        if not refs:
            await responder.refuse("the image of that message could not be found any more")
            return
        await self._dispatcher.handle_command(caller, build("img2img", values), refs, responder)

    # -- buttons and the Edit modal --------------------------------------------------------

    async def on_action(
        self,
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        context: AsyncBoltContext,
    ) -> None:
        await ack()
        target = target_from_interaction(body, team_of(body, context.team_id))
        action_id = str(action.get("action_id", ""))
        caller = self._caller(
            target.team, target.user, target.channel, target.thread, target.user_name
        )
        responder = SlackResponder(
            self._adapter,
            channel=target.channel,
            user=target.user,
            thread=target.thread,
            respond=respond,
        )
        parsed = Action.parse(action_id)
        if parsed is not None and parsed.kind is ActionKind.EDIT:
            trigger = str(body.get("trigger_id", ""))
            self._spawn(
                self._open_edit(caller, parsed, trigger, responder),
                f"sdbot-slack-edit-{parsed.job_id}",
            )
            return
        self._spawn(
            self._dispatcher.handle_action(caller, action_id, responder),
            f"sdbot-slack-action-{action_id}",
        )

    async def _open_edit(
        self, caller: Caller, action: Action, trigger: str, responder: SlackResponder
    ) -> None:
        try:
            defaults = await self._dispatcher.edit_defaults(caller, action.job_id)
        except UserInputError as exc:
            await responder.refuse(str(exc))
            return
        meta = ModalContext(
            caller.conversation.channel, caller.conversation.thread, action=action.id
        )
        await self._adapter.open_modal(trigger, edit_modal(defaults, meta))

    async def on_edit_submit(
        self,
        ack: AsyncAck,
        body: dict[str, Any],
        view: dict[str, Any],
        context: AsyncBoltContext,
    ) -> None:
        meta = ModalContext.load(str(view.get("private_metadata", "")))
        values = {k: v for k, v in submitted_values(view).items() if k in EDIT_FIELDS}
        errors = _field_errors({k: v for k, v in values.items() if v.strip()})
        if errors:
            await ack(response_action="errors", errors=errors)
            return
        await ack()
        if meta is None or not meta.action:
            return
        user = body.get("user") or {}
        caller = self._caller(
            team_of(body, context.team_id),
            str(user.get("id", "")),
            meta.channel,
            meta.thread,
            str(user.get("username") or user.get("name") or ""),
        )
        responder = SlackResponder(
            self._adapter, channel=meta.channel, user=caller.user, thread=meta.thread
        )
        self._spawn(
            self._dispatcher.handle_action(caller, meta.action, responder, fields=values),
            "sdbot-slack-edit-submit",
        )


def _is_retry(request: AsyncBoltRequest) -> bool:
    """Whether Slack sends the event again (`X-Slack-Retry-Num`; Bolt's Socket Mode adapter
    copies the envelope's `retry_attempt` there too)."""
    return bool(request.headers.get("x-slack-retry-num"))


# -- modal validation (pure) ------------------------------------------------------------------


def _field_errors(fields: Mapping[str, str]) -> dict[str, str]:
    """Per-field grammar errors, keyed by the modal's block ids (generation options are the
    same for every img2img-family command, so `img2img` checks them all)."""
    errors: dict[str, str] = {}
    for name, value in fields.items():
        try:
            build("img2img", {name: value.strip()})
        except GrammarError as exc:
            errors[name] = str(exc)[:2000]
    return errors


def _check_img2img(values: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The img2img modal's fields as option values, or errors by block id."""
    fields = {
        k: values[k].strip()
        for k in ("prompt", "negative", "strength")
        if values.get(k, "").strip()
    }
    errors = _field_errors(fields)
    extra: dict[str, str] = {}
    try:
        for word in tokenize(values.get("options", "")):
            name, sep, value = word.partition("=")
            if not sep or not name:
                raise GrammarError(f"options are `key=value` words; `{word}` is not one")
            key = name.strip().lower().replace("-", "_")
            if key in fields or key in extra:
                raise GrammarError(f"`{key}` is given twice — keep one")
            extra[key] = value
        build("img2img", extra)
    except GrammarError as exc:
        errors["options"] = str(exc)[:2000]
    if errors:
        return errors, {}
    combined = {**extra, **fields}
    try:
        build("img2img", combined)
    except GrammarError as exc:
        return {"options": str(exc)[:2000]}, {}
    return {}, combined
