"""Slash commands and message context menus, generated from the command declarations.

Every slash command, its options, their types, ranges, choices and descriptions come from
`commands.COMMANDS` / `commands.OPTIONS`; this module holds no option list of its own. The
rules of the translation:

- an option's `Kind` picks the Discord type (INT / FLOAT with min and max, BOOL, strings with
  the grammar's length caps); Kind.CHOICE becomes Discord choices when there are at most 25,
  autocomplete otherwise; options declared `autocomplete` (model, sampler, endpoint) are
  autocompleted;
- the console-only path options (`image=PATH` …) become `discord.Attachment` options named by
  the command's attachment slots, required as the slot is; `reply_only` options are left out;
- a command's free-text option of Kind.JOB_ID (`/job id`, `/cancel id`) is required;
- options declared `advanced` (the rarely used rest of A1111's img2img panel) share one string
  option, `advanced`, written as `key=value` words (`clip_skip=2 tiling=on`): Discord allows 25
  options per command, and the grammar reads those words as it reads a message.

Values arrive as Python objects and go through `commands.build`, the same validation as text.
`CommandSync` pushes the commands to Discord only when their payload changed since the last
push (Discord allows 200 command creates per day per guild).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import discord
from discord import app_commands

from adapters.discord.convert import clip
from commands import COMMANDS, OPTIONS, CommandSpec, Kind, OptionSpec
from commands.parse import LONG_TEXT_OPTIONS, NAME_CAP, PROMPT_CAP
from commands.spec import ADVANCED

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

_LOGGER = logging.getLogger(__name__)

MAX_CHOICES = 25  # per option (Discord)
MAX_OPTIONS = 25  # per command (Discord)
DESCRIPTION_CHARS = 100
INTERROGATE_MENU = "Interrogate image"
IMG2IMG_MENU = "img2img from this image"
# Hidden from members without Manage Server in Discord's UI; the core refuses them anyway.
_ADMIN_ONLY = frozenset({"settings"})
_SHORT_TEXT_CAP = 64  # sizes, times, job ids: the grammar reports what is wrong with them


class SlashHandler(Protocol):
    """What the generated commands call; the adapter's interaction router implements it."""

    async def run_command(
        self,
        interaction: discord.Interaction[Any],
        command: str,
        values: Mapping[str, object],
        attachments: Mapping[str, discord.Attachment],
    ) -> None: ...

    async def suggest(
        self, interaction: discord.Interaction[Any], option: str, current: str
    ) -> list[app_commands.Choice[str]]: ...

    async def interrogate_message(
        self, interaction: discord.Interaction[Any], message: discord.Message
    ) -> None: ...

    async def img2img_from_message(
        self, interaction: discord.Interaction[Any], message: discord.Message
    ) -> None: ...


@dataclass(frozen=True)
class SlashOption:
    """One Discord option of a generated command."""

    name: str
    annotation: Any  # what discord.py reads the option type from
    description: str
    required: bool
    attachment: bool = False
    choices: tuple[str, ...] = ()
    autocomplete: bool = False


def _ranged(kind: type, low: float | None, high: float | None) -> Any:
    if low is None or high is None:
        return kind
    if kind is int:
        return cast("Any", app_commands.Range)[int, int(low), int(high)]
    return cast("Any", app_commands.Range)[kind, low, high]


def _default_text(option: OptionSpec) -> str:
    default = option.default
    if default is None:
        return ""
    if isinstance(default, bool):
        return f" (default {'true' if default else 'false'})"
    if isinstance(default, float) and default.is_integer():
        return f" (default {int(default)})"
    return f" (default {default})"


def _slash_option(spec: CommandSpec, option: OptionSpec) -> SlashOption:
    description = clip(option.help + _default_text(option), DESCRIPTION_CHARS)
    required = option.kind is Kind.JOB_ID and spec.free_text == option.name
    kind = option.kind
    if kind is Kind.INT:
        annotation = _ranged(int, option.min, option.max)
    elif kind is Kind.FLOAT:
        annotation = _ranged(float, option.min, option.max)
    elif kind is Kind.BOOL:
        annotation = bool
    elif kind is Kind.TEXT:
        cap = PROMPT_CAP if option.name in LONG_TEXT_OPTIONS else NAME_CAP
        annotation = _ranged(str, 1, cap)
    else:  # CHOICE, SIZE, TIME, JOB_ID: strings the grammar reads
        annotation = _ranged(str, 1, _SHORT_TEXT_CAP)
    choices: tuple[str, ...] = ()
    autocomplete = option.autocomplete
    if kind is Kind.CHOICE:
        annotation = str
        if len(option.choices) > MAX_CHOICES:
            autocomplete = True
        elif not autocomplete:
            choices = option.choices
    return SlashOption(option.name, annotation, description, required, False, choices, autocomplete)


def slash_options(spec: CommandSpec) -> list[SlashOption]:
    """The Discord options of one command, attachments first, in declaration order."""
    result = [
        SlashOption(
            attachment.slot.value,
            discord.Attachment,
            clip(attachment.help, DESCRIPTION_CHARS),
            attachment.required,
            attachment=True,
        )
        for attachment in spec.attachments
    ]
    advanced: list[str] = []
    for name in spec.options:
        option = OPTIONS[name]
        if option.console_only or option.reply_only or option.kind is Kind.PATH:
            continue
        if option.advanced:
            advanced.append(name)
            continue
        result.append(_slash_option(spec, option))
    if advanced:
        description = (
            f"more options as key=value words, e.g. clip_skip=2 tiling=on; "
            f"/help {spec.name} lists them"
        )
        result.append(
            SlashOption(
                ADVANCED,
                _ranged(str, 1, NAME_CAP),
                clip(description, DESCRIPTION_CHARS),
                required=False,
            )
        )
    if len(result) > MAX_OPTIONS:
        raise ValueError(f"/{spec.name} would have {len(result)} options; Discord allows 25")
    return result


def slash_command(spec: CommandSpec, handler: SlashHandler) -> app_commands.Command[Any, ..., None]:
    """The app command of one declared command; its callback hands values to `handler`."""
    options = slash_options(spec)
    slots = frozenset(o.name for o in options if o.attachment)

    async def callback(interaction: discord.Interaction[Any], **values: Any) -> None:
        attachments = {
            name: value
            for name, value in values.items()
            if name in slots and isinstance(value, discord.Attachment)
        }
        given = {
            name: value for name, value in values.items() if name not in slots and value is not None
        }
        await handler.run_command(interaction, spec.name, given, attachments)

    parameters = [
        inspect.Parameter(
            "interaction", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction
        )
    ]
    parameters += [
        inspect.Parameter(
            o.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if o.required else None,
            annotation=o.annotation,
        )
        for o in options
    ]
    # discord.py reads option names and types from the callback's signature.
    setattr(callback, "__signature__", inspect.Signature(parameters))  # noqa: B010
    described: Any = app_commands.describe(**{o.name: o.description for o in options})(callback)
    choices = {
        o.name: [app_commands.Choice(name=c, value=c) for c in o.choices]
        for o in options
        if o.choices
    }
    if choices:
        described = app_commands.choices(**choices)(described)
    completers = {o.name: _completer(handler, o.name) for o in options if o.autocomplete}
    if completers:
        described = app_commands.autocomplete(**completers)(described)
    command: app_commands.Command[Any, ..., None] = app_commands.Command(
        name=spec.name, description=clip(spec.summary, DESCRIPTION_CHARS), callback=described
    )
    if spec.name in _ADMIN_ONLY:
        command.default_permissions = discord.Permissions(manage_guild=True)
    return command


def _completer(handler: SlashHandler, option: str) -> Any:
    async def complete(
        interaction: discord.Interaction[Any], current: str
    ) -> list[app_commands.Choice[str]]:
        return await handler.suggest(interaction, option, current)

    return complete


def context_menus(handler: SlashHandler) -> list[app_commands.ContextMenu]:
    """The message context menus; they see the target message without the content intent."""

    async def interrogate(interaction: discord.Interaction[Any], message: discord.Message) -> None:
        await handler.interrogate_message(interaction, message)

    async def img2img(interaction: discord.Interaction[Any], message: discord.Message) -> None:
        await handler.img2img_from_message(interaction, message)

    return [
        app_commands.ContextMenu(name=INTERROGATE_MENU, callback=interrogate),
        app_commands.ContextMenu(name=IMG2IMG_MENU, callback=img2img),
    ]


def install(
    tree: app_commands.CommandTree[Any], handler: SlashHandler, guilds: Sequence[int]
) -> None:
    """Add every command and context menu to `tree`: to the test guilds when there are any,
    globally otherwise."""
    targets = [discord.Object(g) for g in guilds] or None
    for spec in COMMANDS.values():
        if targets:
            tree.add_command(slash_command(spec, handler), guilds=targets)
        else:
            tree.add_command(slash_command(spec, handler))
    for menu in context_menus(handler):
        if targets:
            tree.add_command(menu, guilds=targets)
        else:
            tree.add_command(menu)


class CommandSync:
    """Pushes the tree's commands to Discord when, and only when, they changed.

    The SHA-256 of each scope's command payload is kept in a small JSON file (under the data
    directory) keyed by application and scope, so restarts do not spend command creates.
    """

    def __init__(
        self, tree: app_commands.CommandTree[Any], state_file: Path, guilds: Sequence[int]
    ) -> None:
        self._tree = tree
        self._state_file = state_file
        self._guilds = tuple(guilds)

    def digest(self, guild: discord.Object | None) -> str:
        payload = sorted(
            (command.to_dict(self._tree) for command in self._tree.get_commands(guild=guild)),
            key=lambda c: (c.get("type", 1), c["name"]),
        )
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    async def sync(self, application_id: int, *, force: bool = False) -> list[str]:
        """Sync each scope whose payload changed (or all with `force`); the scopes synced."""
        state = await asyncio.to_thread(self._load)
        scopes: list[discord.Object | None] = [discord.Object(g) for g in self._guilds] or [None]
        synced: list[str] = []
        for guild in scopes:
            scope = "global" if guild is None else f"guild {guild.id}"
            key = f"{application_id}:{scope}"
            digest = self.digest(guild)
            if not force and state.get(key) == digest:
                _LOGGER.debug("Discord commands (%s) unchanged; not syncing", scope)
                continue
            await self._tree.sync(guild=guild)
            _LOGGER.info("synced Discord commands (%s)", scope)
            state[key] = digest
            await asyncio.to_thread(self._save, state)
            synced.append(scope)
        return synced

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _save(self, state: dict[str, str]) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        temporary.replace(self._state_file)
