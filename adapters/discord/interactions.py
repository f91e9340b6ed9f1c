"""Everything users do on Discord, routed into the core's dispatcher.

This module owns the per-event answer channels (`InteractionResponder` for slash commands,
buttons, modals and context menus; `MessageResponder` for replies in job threads), the
restart-safe buttons (one `DynamicItem` class whose `custom_id` is the core's `Action.id`),
the modals (Edit, routed by `custom_id` in `on_interaction` so a submit after a restart still
works; the "img2img from this image" form) and `InteractionRouter`, which turns each event
into a `Caller` plus a dispatcher call.

Order within an interaction follows SPEC §3 step 1: validate first (a bad option is answered
at once, ephemerally), and only when the core has committed the job's row does
`Responder.accepted` defer. A watchdog defers any interaction the core has not answered
within two seconds, so slow queries never miss Discord's three-second window.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands

from adapters.discord.convert import (
    MODAL_LABEL_CHARS,
    MODAL_TITLE_CHARS,
    attachment_ref,
    chunk_text,
    clip,
    grammar_quote,
    interaction_caller,
    is_dm,
    is_image_attachment,
    mention_to_id,
    message_caller,
    modal_values,
    strip_bot_mention,
)
from bot.errors import UserInputError
from bot.views import ACTION_PREFIX, EDIT_FIELDS, Action, ActionKind
from commands import OPTIONS, GrammarError, Kind, build, parse
from commands.parse import LONG_TEXT_OPTIONS, PROMPT_CAP

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence

    from adapters.discord.adapter import DiscordAdapter
    from bot.dispatcher import Dispatcher
    from bot.model import AttachmentRef
    from bot.ports import ClaimStore, Clock
    from bot.views import ResultImage

_LOGGER = logging.getLogger(__name__)

AUTO_DEFER_AFTER = 2.0  # seconds; Discord invalidates an interaction not answered within 3
# Commands the core answers in public (`Dispatcher`: `reply` without `private=True`); the
# rest, refusals and job pointers are private. A defer fixes the answer's visibility (only the
# EPHEMERAL flag may be set, at the defer: dapi developers/interactions/
# receiving-and-responding.mdx), so the watchdog defers these publicly.
PUBLIC_ANSWERS = frozenset({"job", "endpoints", "models", "cancel"})
FORM_PREFIX = "sdbotform:img2img:"
FORM_TTL = 15 * 60.0  # a context-menu form is answered within an interaction's lifetime
MAX_SUGGESTIONS = 25
NO_MENTIONS = discord.AllowedMentions.none()

ACTION_TEMPLATE = re.compile(
    rf"{ACTION_PREFIX}:(?:{'|'.join(k.value for k in ActionKind)}):[a-z0-9]+(?::[0-9]+)?"
)
_BUTTON_STYLES: dict[ActionKind, discord.ButtonStyle] = {
    ActionKind.CANCEL: discord.ButtonStyle.danger,
    ActionKind.REROLL: discord.ButtonStyle.primary,
    ActionKind.EDIT: discord.ButtonStyle.secondary,
    ActionKind.USE_AS_INPUT: discord.ButtonStyle.secondary,
    ActionKind.DELETE: discord.ButtonStyle.danger,
    ActionKind.USE_AS_PROMPT: discord.ButtonStyle.primary,
}
_BUTTON_EMOJI: dict[ActionKind, str] = {
    ActionKind.CANCEL: "✖️",
    ActionKind.REROLL: "🎲",
    ActionKind.EDIT: "✏️",
    ActionKind.USE_AS_INPUT: "📥",
    ActionKind.DELETE: "🗑️",
    ActionKind.USE_AS_PROMPT: "📝",
}
# Modal fields of the img2img form: the Edit fields plus free `key=value` options (≤ 5 inputs).
_FORM_OPTIONS_FIELD = "options"

Button = discord.ui.Button[discord.ui.View]
ActionItem = discord.ui.DynamicItem[Button]


# -- Responders --------------------------------------------------------------------------------


class InteractionResponder:
    """`bot.ports.Responder` for one interaction, while its token lives (15 minutes).

    Job results never come through here: they are posted with the bot token by the adapter.
    """

    def __init__(
        self,
        adapter: DiscordAdapter,
        interaction: discord.Interaction[Any],
        *,
        public: bool = False,
    ) -> None:
        self._adapter = adapter
        self._interaction = interaction
        self._public = public  # the visibility the answer is expected to have
        # Held only around Discord calls that must not interleave (never while files are
        # prepared), so the watchdog's defer always gets through in time.
        self._lock = asyncio.Lock()
        self._deferred = False
        self._deferred_private = True
        self._original_used = False
        self._watchdog: asyncio.Task[None] | None = None

    def start_watchdog(self) -> None:
        self._watchdog = self._adapter.spawn(
            self._auto_defer(), f"sdbot-discord-defer-{self._interaction.id}"
        )

    def finish(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    @property
    def answered(self) -> bool:
        return self._interaction.response.is_done()

    async def _auto_defer(self) -> None:
        await asyncio.sleep(self._adapter.defer_after)
        async with self._lock:
            if not self._interaction.response.is_done():
                await self._defer(private=not self._public)

    async def _defer(self, *, private: bool) -> None:
        try:
            await self._interaction.response.defer(ephemeral=private, thinking=True)
            self._deferred = True
            self._deferred_private = private
        except discord.HTTPException as exc:
            _LOGGER.warning("could not acknowledge interaction %s: %s", self._interaction.id, exc)

    async def accepted(self, job_id: str) -> None:
        # The pointer to the job's thread replaces the "thinking…" line once the thread exists.
        self._adapter.remember_interaction(job_id, self._interaction)
        async with self._lock:
            if not self._interaction.response.is_done():
                await self._defer(private=True)

    async def reply(
        self, text: str, *, private: bool = False, images: Sequence[ResultImage] = ()
    ) -> None:
        await self._answer(text, private, images)

    async def refuse(self, message: str) -> None:
        await self._answer(message, True, ())

    async def _answer(self, text: str, private: bool, images: Sequence[ResultImage]) -> None:
        batches: list[list[discord.File]] = []
        if images:
            # Files take a while (re-encoding, a big upload): defer first, with this answer's
            # visibility, and prepare them without holding the lock; they follow the defer.
            async with self._lock:
                if not self._interaction.response.is_done():
                    await self._defer(private=private)
            batches = await self._adapter.file_batches(images, self._interaction.filesize_limit)
        async with self._lock:
            if self._interaction.is_expired():
                _LOGGER.info("interaction %s expired before its answer", self._interaction.id)
                return
            chunks = chunk_text(text) if text else []
            count = max(len(chunks), len(batches), 1)
            try:
                for n in range(count):
                    content = chunks[n] if n < len(chunks) else ""
                    files = batches[n] if n < len(batches) else []
                    if content or files:
                        await self._send(content, files, private)
            except discord.HTTPException as exc:
                _LOGGER.warning("answering interaction %s failed: %s", self._interaction.id, exc)

    async def _send(self, content: str, files: list[discord.File], private: bool) -> None:
        response = self._interaction.response
        if not response.is_done():
            await response.send_message(
                content, ephemeral=private, files=files, allowed_mentions=NO_MENTIONS
            )
        elif self._deferred and not self._original_used:
            self._original_used = True
            if private == self._deferred_private:
                # The first answer after a defer replaces the "thinking…" message.
                await self._interaction.edit_original_response(
                    content=content, attachments=files, allowed_mentions=NO_MENTIONS
                )
                return
            # The "thinking…" message has the other visibility, which cannot change: take it
            # away and answer in a followup of the right one.
            await self._interaction.delete_original_response()
            await self._interaction.followup.send(
                content, ephemeral=private, files=files, allowed_mentions=NO_MENTIONS
            )
        else:
            await self._interaction.followup.send(
                content, ephemeral=private, files=files, allowed_mentions=NO_MENTIONS
            )


class MessageResponder:
    """`bot.ports.Responder` for a message in a job's thread.

    Discord has no private answer to a message, so refusals are a reply in the thread (without
    pinging anyone); the new job's status message in the thread is its acknowledgement.
    """

    def __init__(self, message: discord.Message) -> None:
        self._message = message

    async def accepted(self, job_id: str) -> None:
        return None

    async def reply(
        self, text: str, *, private: bool = False, images: Sequence[ResultImage] = ()
    ) -> None:
        try:
            for chunk in chunk_text(text):
                await self._message.reply(chunk, mention_author=False, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            _LOGGER.warning("replying to message %s failed: %s", self._message.id, exc)

    async def refuse(self, message: str) -> None:
        await self.reply(message)


# -- Buttons and modals ------------------------------------------------------------------------


def action_button_class(router: InteractionRouter) -> type[ActionItem]:
    """The one `DynamicItem` class for every action button, bound to `router`.

    Its `custom_id` is the core's action id (`sdbot:<action>:<job>[:<n>]`), so a fresh process
    that registered the class handles clicks on messages an earlier run posted.
    """

    class ActionButton(ActionItem, template=ACTION_TEMPLATE):
        def __init__(self, action: Action) -> None:
            super().__init__(
                discord.ui.Button(
                    label=action.label,
                    style=_BUTTON_STYLES[action.kind],
                    emoji=_BUTTON_EMOJI[action.kind],
                    custom_id=action.id,
                )
            )
            self.action = action

        @classmethod
        async def from_custom_id(
            cls,
            interaction: discord.Interaction[Any],
            item: discord.ui.Item[Any],
            match: re.Match[str],
            /,
        ) -> ActionButton:
            action = Action.parse(match.string)
            if action is None:
                raise ValueError(f"not an action id: {match.string!r}")
            return cls(action)

        async def callback(self, interaction: discord.Interaction[Any]) -> None:
            await router.press(interaction, self.action)

    return ActionButton


def action_view(actions: Sequence[Action], button: type[ActionItem]) -> discord.ui.View | None:
    """A view of action buttons (at most 25), or None when there are none."""
    if not actions:
        return None
    # No timeout and only dynamic items: nothing is kept per message (the custom_id is the state).
    view = discord.ui.View(timeout=None)
    factory = cast("Any", button)
    for action in actions[:25]:
        view.add_item(factory(action))
    return view


def _field_label(name: str) -> str:
    option = OPTIONS.get(name)
    label = {"negative": "Negative prompt"}.get(name, name.capitalize())
    if option is not None and option.kind is Kind.FLOAT and option.min is not None:
        label += f" ({option.min:g} to {option.max:g})"
    return clip(label, MODAL_LABEL_CHARS)


def _text_field(name: str, default: str | None, description: str) -> discord.ui.Label[Any]:
    long = name in LONG_TEXT_OPTIONS
    limit = PROMPT_CAP if long else 200
    field: discord.ui.TextInput[Any] = discord.ui.TextInput(
        custom_id=name,
        style=discord.TextStyle.long if long else discord.TextStyle.short,
        default=default[:limit] if default else None,
        required=False,
        max_length=limit,
    )
    return discord.ui.Label(
        text=_field_label(name), component=field, description=clip(description, 100)
    )


def edit_modal(job_id: str, defaults: Mapping[str, str]) -> discord.ui.Modal:
    """The Edit modal (prompt, negative, strength, seed), routed by its `custom_id`."""
    modal = discord.ui.Modal(
        title=clip(f"Edit job {job_id}", MODAL_TITLE_CHARS),
        custom_id=Action(ActionKind.EDIT, job_id).id,
        # Submits are routed by custom_id in `on_interaction`; the stored copy only needs to
        # outlive a user who is still typing.
        timeout=FORM_TTL,
    )
    for name in EDIT_FIELDS:
        help_text = OPTIONS[name].help if name in OPTIONS else name
        if name == "seed":
            help_text += "; empty = random"
        modal.add_item(_text_field(name, defaults.get(name), help_text))
    return modal


def img2img_form(nonce: str) -> discord.ui.Modal:
    """The "img2img from this image" form: the Edit fields plus free `key=value` options."""
    modal = discord.ui.Modal(
        title="img2img from this image", custom_id=FORM_PREFIX + nonce, timeout=FORM_TTL
    )
    for name in EDIT_FIELDS:
        modal.add_item(_text_field(name, None, OPTIONS[name].help))
    modal.add_item(
        _text_field(
            _FORM_OPTIONS_FIELD, None, "more options as key=value, e.g. steps=30 size=768x512"
        )
    )
    return modal


def form_text(values: Mapping[str, str]) -> str:
    """The img2img form as one command in the text grammar, so it is checked like any text."""
    words = ["img2img"]
    for name in EDIT_FIELDS:
        value = values.get(name, "").strip()
        if value:
            words.append(f"{name}={grammar_quote(value)}")
    more = values.get(_FORM_OPTIONS_FIELD, "").strip()
    if more:
        words.append(more)
    return " ".join(words)


class FormStore:
    """Context-menu forms waiting for their modal submit: the target image, by nonce.

    The modal submit does not carry the target message, and without the message-content
    intent the bot cannot read another user's attachments later, so the reference is kept
    here (in memory: a form outlives neither the interaction nor the process).
    """

    def __init__(self, ttl: float = FORM_TTL) -> None:
        self._ttl = ttl
        self._forms: dict[str, tuple[float, AttachmentRef]] = {}  # bounded by age: `put`

    def put(self, ref: AttachmentRef) -> str:
        now = time.monotonic()
        self._forms = {k: v for k, v in self._forms.items() if now - v[0] < self._ttl}
        nonce = secrets.token_hex(8)
        self._forms[nonce] = (now, ref)
        return nonce

    def pop(self, nonce: str) -> AttachmentRef | None:
        entry = self._forms.pop(nonce, None)
        if entry is None or time.monotonic() - entry[0] >= self._ttl:
            return None
        return entry[1]


# -- The router --------------------------------------------------------------------------------


class InteractionRouter:
    """Turns Discord events into dispatcher calls (implements `commands.SlashHandler`)."""

    def __init__(
        self,
        adapter: DiscordAdapter,
        dispatcher: Dispatcher,
        claims: ClaimStore,
        *,
        clock: Clock,
        max_bytes: int,
    ) -> None:
        """What it needs of the core: the dispatcher, the event claims (one session of a shard
        acts on an event), the clock (dates in options) and the attachment size cap;
        Discord's side is `adapter`."""
        self._adapter = adapter
        self._dispatcher = dispatcher
        self._claims = claims
        self._clock = clock
        self._max_bytes = max_bytes
        self._forms = FormStore()
        self.button = action_button_class(self)

    async def _turned_away(self, interaction: discord.Interaction[Any]) -> bool:
        """Answer a request that arrives while the bot shuts down; True when it did, or when
        another session (a replica on the same shard) took the interaction first."""
        # Every session of a shard receives its events (reference/scale-out.md §1): the
        # store's claim lets one of them act; the others answer nothing (a second answer would
        # fail with 40060 "already acknowledged"). A replica shutting down claims too before
        # it answers "restarting": when a running one took the command, that one serves it,
        # and the user is not told to retry a job that runs.
        key = f"discord:interaction:{interaction.id}"
        if self._adapter.accepting:
            return not await self._claims.claim(key)
        try:
            mine = await self._claims.claim(key)
        except Exception as exc:
            # `sdbot run` closes the core before the adapter: in between, no claim can be made
            # and the answer is given without one.
            _LOGGER.info("interaction %s while stopping, not claimed: %r", interaction.id, exc)
            mine = True
        if not mine:
            return True
        if not interaction.response.is_done():
            try:
                await interaction.response.send_message(
                    "sdbot is restarting; please try again in a minute", ephemeral=True
                )
            except discord.HTTPException as exc:
                _LOGGER.info("could not answer interaction %s: %s", interaction.id, exc)
        return True

    def _responder(
        self, interaction: discord.Interaction[Any], *, public: bool = False
    ) -> InteractionResponder:
        self._adapter.learn(interaction)
        responder = InteractionResponder(self._adapter, interaction, public=public)
        responder.start_watchdog()
        return responder

    async def _guarded(self, responder: InteractionResponder, work: Awaitable[object]) -> None:
        """Run `work`; an unexpected error is logged and answered, never left hanging."""
        try:
            await work
        except Exception:
            _LOGGER.exception("handling an interaction failed")
            if not responder.answered:
                await responder.refuse("something went wrong in the bot; please try again")
        finally:
            responder.finish()

    # -- slash commands --------------------------------------------------------------------

    async def run_command(
        self,
        interaction: discord.Interaction[Any],
        command: str,
        values: Mapping[str, object],
        attachments: Mapping[str, discord.Attachment],
    ) -> None:
        with self._adapter.activity():
            if await self._turned_away(interaction):
                return
            responder = self._responder(interaction, public=command in PUBLIC_ANSWERS)
            await self._guarded(
                responder, self._run_command(interaction, responder, command, values, attachments)
            )

    async def _run_command(
        self,
        interaction: discord.Interaction[Any],
        responder: InteractionResponder,
        command: str,
        values: Mapping[str, object],
        attachments: Mapping[str, discord.Attachment],
    ) -> None:
        user = values.get("user")
        if isinstance(user, str):
            # `jobs user=` filters by user id; on Discord people type a mention.
            values = {**values, "user": mention_to_id(user)}
        try:
            parsed = build(command, values, now=self._clock.now())
        except GrammarError as exc:
            await responder.refuse(str(exc))
            return
        refs = []
        for slot, attachment in attachments.items():
            refusal = self._too_big(attachment)
            if refusal:
                await responder.refuse(refusal)
                return
            refs.append(attachment_ref(attachment, slot))
        caller = interaction_caller(interaction)
        await self._dispatcher.handle_command(caller, parsed, refs, responder)

    def _too_big(self, attachment: discord.Attachment) -> str | None:
        limit = self._max_bytes
        if attachment.size > limit:
            return (
                f"{attachment.filename} is {attachment.size / 1e6:.1f} MB; "
                f"the limit is {limit / 1e6:.0f} MB"
            )
        return None

    async def suggest(
        self, interaction: discord.Interaction[Any], option: str, current: str
    ) -> list[app_commands.Choice[str]]:
        """Autocomplete from memory only: Discord gives three seconds and no defer."""
        declared = OPTIONS.get(option)
        pairs: list[tuple[str, str]]
        if declared is not None and declared.choices:
            pairs = [(c, c) for c in declared.choices]
        elif option == "model":
            pairs = [(m, m) for m in self._adapter.suggestions.models]
        elif option == "endpoint":
            pairs = [(f"{n} ({s}, {t})", n) for n, s, t in self._adapter.suggestions.endpoints]
        else:
            pairs = []
        needle = current.strip().casefold()
        ranked = sorted(
            (p for p in pairs if needle in p[1].casefold()),
            key=lambda p: not p[1].casefold().startswith(needle),
        )
        return [
            app_commands.Choice(name=clip(label, 100), value=value[:100])
            for label, value in ranked[:MAX_SUGGESTIONS]
        ]

    # -- context menus ---------------------------------------------------------------------

    async def interrogate_message(
        self, interaction: discord.Interaction[Any], message: discord.Message
    ) -> None:
        with self._adapter.activity():
            if await self._turned_away(interaction):
                return
            responder = self._responder(interaction)
            await self._guarded(responder, self._interrogate(interaction, responder, message))

    async def _interrogate(
        self,
        interaction: discord.Interaction[Any],
        responder: InteractionResponder,
        message: discord.Message,
    ) -> None:
        image = await self._message_image(responder, message, "to interrogate")
        if image is None:
            return
        parsed = build("interrogate", {})
        caller = interaction_caller(interaction)
        await self._dispatcher.handle_command(
            caller, parsed, [attachment_ref(image, "image")], responder
        )

    async def _message_image(
        self, responder: InteractionResponder, message: discord.Message, purpose: str
    ) -> discord.Attachment | None:
        """The message's first image, or None after telling the user why there is none."""
        image = next((a for a in message.attachments if is_image_attachment(a)), None)
        if image is None:
            await responder.refuse(f"that message has no image attachment {purpose}")
            return None
        refusal = self._too_big(image)
        if refusal:
            await responder.refuse(refusal)
            return None
        return image

    async def img2img_from_message(
        self, interaction: discord.Interaction[Any], message: discord.Message
    ) -> None:
        with self._adapter.activity():
            if await self._turned_away(interaction):
                return
            responder = self._responder(interaction)
            await self._guarded(responder, self._open_form(interaction, responder, message))

    async def _open_form(
        self,
        interaction: discord.Interaction[Any],
        responder: InteractionResponder,
        message: discord.Message,
    ) -> None:
        image = await self._message_image(responder, message, "to start from")
        if image is None:
            return
        nonce = self._forms.put(attachment_ref(image, "image"))
        # A modal must be the first response; the watchdog's defer would make it impossible.
        responder.finish()
        await interaction.response.send_modal(img2img_form(nonce))

    # -- buttons and modal submits ---------------------------------------------------------

    async def press(self, interaction: discord.Interaction[Any], action: Action) -> None:
        with self._adapter.activity():
            if await self._turned_away(interaction):
                return
            responder = self._responder(interaction)
            await self._guarded(responder, self._press(interaction, responder, action))

    async def _press(
        self, interaction: discord.Interaction[Any], responder: InteractionResponder, action: Action
    ) -> None:
        caller = interaction_caller(interaction)
        if action.kind is ActionKind.EDIT:
            try:
                defaults = await self._dispatcher.edit_defaults(caller, action.job_id)
            except UserInputError as exc:
                await responder.refuse(str(exc))
                return
            responder.finish()
            await interaction.response.send_modal(edit_modal(action.job_id, defaults))
            return
        await self._dispatcher.handle_action(caller, action.id, responder)

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """Modal submits, routed by `custom_id` (discord.py forgets modals on restart)."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data = cast("Mapping[str, Any]", interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        action = Action.parse(custom_id)
        is_edit = action is not None and action.kind is ActionKind.EDIT
        if not is_edit and not custom_id.startswith(FORM_PREFIX):
            return
        values = modal_values(data.get("components") or [])
        with self._adapter.activity():
            if await self._turned_away(interaction):
                return
            responder = self._responder(interaction)
            work: Awaitable[object]
            if is_edit:
                fields = {k: v for k, v in values.items() if k in EDIT_FIELDS}
                work = self._dispatcher.handle_action(
                    interaction_caller(interaction), custom_id, responder, fields
                )
            else:
                work = self._submit_form(interaction, responder, custom_id, values)
            await self._guarded(responder, work)

    async def _submit_form(
        self,
        interaction: discord.Interaction[Any],
        responder: InteractionResponder,
        custom_id: str,
        values: Mapping[str, str],
    ) -> None:
        ref = self._forms.pop(custom_id.removeprefix(FORM_PREFIX))
        if ref is None:
            await responder.refuse(
                "this form has expired; use “img2img from this image” on the message again"
            )
            return
        try:
            parsed = parse(form_text(values), now=self._clock.now())
        except GrammarError as exc:
            await responder.refuse(str(exc))
            return
        caller = interaction_caller(interaction)
        await self._dispatcher.handle_command(caller, parsed, [ref], responder)

    # -- messages (reply-based re-generation, SPEC §3.2) -----------------------------------

    async def on_message(self, message: discord.Message) -> None:
        with self._adapter.activity():
            try:
                await self._message(message)
            except Exception:
                _LOGGER.exception("handling message %s failed", message.id)

    async def _message(self, message: discord.Message) -> None:
        bot = self._adapter.bot_user_id
        if not self._adapter.accepting or bot is None:
            return
        if message.author.bot or message.webhook_id is not None:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        mentioned = any(user.id == bot for user in message.mentions)
        direct = is_dm(message)
        if not self._adapter.message_content and not (mentioned or direct):
            # Without the intent only mentions and DMs carry text and attachments; an empty
            # message must not be taken for "re-generate with no changes".
            return
        text = strip_bot_mention(message.content, bot)
        if not text and not message.attachments:
            return
        reference = message.reference
        reply_to = str(reference.message_id) if reference and reference.message_id else None
        conversation = await self._adapter.conversation_of_message(message)
        if conversation.thread is None and not (direct or mentioned or self._to_bot(message)):
            # In a plain channel only messages addressed to the bot are requests.
            return
        if not await self._claims.claim(f"discord:message:{message.id}"):
            return  # another session (a replica on the same shard) took it
        responder = MessageResponder(message)
        for attachment in message.attachments:
            refusal = self._too_big(attachment)
            if refusal:
                await responder.refuse(refusal)
                return
        refs = [attachment_ref(a) for a in message.attachments]
        caller = message_caller(message, conversation)
        await self._dispatcher.handle_reply(caller, text, refs, responder, reply_to=reply_to)

    def _to_bot(self, message: discord.Message) -> bool:
        """Whether the message replies to one of the bot's own messages."""
        reference = message.reference
        resolved = reference.resolved if reference is not None else None
        return (
            isinstance(resolved, discord.Message)
            and resolved.author.id == self._adapter.bot_user_id
        )
