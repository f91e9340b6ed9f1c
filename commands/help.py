"""The `help` text, generated from the command and option declarations (SPEC §2.1, §2.3).

This module owns what users read about commands: the overview (every command, how the text
grammar works, what is out of scope) and one command's usage, images, options and examples.
Nothing here lists a command or option by hand; it all comes from `commands.spec`, so a new
declaration shows up in `help` without touching this file.
"""

from __future__ import annotations

from commands.parse import (
    LONG_TEXT_OPTIONS,
    NAME_CAP,
    PROMPT_CAP,
    SIDE_MAX,
    SIDE_MIN,
    SIDE_MULTIPLE,
    find_command,
)
from commands.spec import (
    ADVANCED,
    COMMANDS,
    OPTIONS,
    OUT_OF_SCOPE,
    CommandSpec,
    Family,
    Kind,
    OptionSpec,
    OptionValue,
    Slot,
)

__all__ = ("describe_value", "help_text")

# Choice lists longer than this go on their own line, so the option's line stays readable.
_INLINE_CHOICES = 8


def help_text(command: str | None = None) -> str:
    """The overview, or the help of one command (as users spell it; unknown → `GrammarError`)."""
    if command is None or not command.strip():
        return _overview()
    return _command_help(find_command(command))


def describe_value(option: OptionSpec) -> str:
    """What a value of `option` looks like, with its range or choices and its default."""
    kind = option.kind
    if kind is Kind.TEXT:
        cap = PROMPT_CAP if option.name in LONG_TEXT_OPTIONS else NAME_CAP
        text = f"text, up to {cap} characters"
    elif kind is Kind.INT:
        text = f"whole number{_bounds(option)}"
    elif kind is Kind.FLOAT:
        text = f"number{_bounds(option)}"
    elif kind is Kind.BOOL:
        text = "true/false (yes/no, on/off, 1/0)"
    elif kind is Kind.CHOICE:
        text = f"one of {', '.join(f'`{choice}`' for choice in option.choices)}"
    elif kind is Kind.SIZE:
        text = f"WxH, each side {SIDE_MIN}–{SIDE_MAX} and a multiple of {SIDE_MULTIPLE}"
    elif kind is Kind.TIME:
        text = "date (2026-11-01), UTC date-time (2026-11-01T14:30) or time ago (30m, 2h, 3d, 1w)"
    elif kind is Kind.PATH:
        text = "file path"
    elif kind is Kind.JOB_ID:
        text = "job id"
    else:
        text = "`result` or `result:N` (N counts from 1)"
    if option.default is not None:
        text += f"; default {_shown_default(option.default)}"
    if option.console_only:
        text += "; console only"
    if option.reply_only:
        text += "; in a reply only"
    return text


def _bounds(option: OptionSpec) -> str:
    if option.min is None or option.max is None:
        return ""
    return f" {_number(option.min)}–{_number(option.max)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _shown_default(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    return f"`{value}`"


def _usage(spec: CommandSpec) -> str:
    usage = spec.name
    if spec.free_text is not None:
        usage += f" [{spec.free_text}]"
    if any(name != spec.free_text for name in spec.options):
        usage += " [key=value …]"
    return f"`{usage}`"


def _code_list(names: list[str]) -> str:
    quoted = [f"`{name}`" for name in names]
    if len(quoted) <= 1:
        return "".join(quoted)
    return f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def _overview() -> str:
    lines = ["*Commands*"]
    lines += [f"• {_usage(spec)} — {spec.summary}" for spec in COMMANDS.values()]
    lines += ["", "*Writing a command*: `command [text] [key=value …]`"]
    lines.append(f"• {_free_text_sentence()}")
    lines += [
        "• Options are `key=value`. Names ignore case, and `-` and `_` are the same "
        "(`mask-blur=8` is `mask_blur=8`).",
        '• Quote a value with spaces or `=` in it: `negative="blurry, low quality"`, '
        '`prompt="a=b"`. Double, single and typographic quotes (“ ” ‘ ’) all work, and `\\` '
        "makes the next character literal. A quote right after a letter is an apostrophe "
        "(don't, dogs'), so it needs no escaping.",
        "• Yes/no options take true/false, yes/no, on/off or 1/0. Times take a date "
        "(2026-11-01), a UTC date-time (2026-11-01T14:30) or a time ago (30m, 2h, 3d, 1w).",
        "• Images are attachments. The console takes file paths instead: "
        f"{', '.join(f'`{slot.value}=PATH`' for slot in _slots_in_use())}.",
    ]
    lines.append(f"• {_reply_sentence()}")
    lines += [
        "",
        "`help <command>` shows a command's images, options and examples.",
        f"Out of scope for now: {OUT_OF_SCOPE}.",
    ]
    return "\n".join(lines)


def _free_text_sentence() -> str:
    filled: dict[str, list[str]] = {}
    for spec in COMMANDS.values():
        if spec.free_text is not None:
            filled.setdefault(spec.free_text, []).append(spec.name)
    parts = [f"the {option} for {_code_list(names)}" for option, names in filled.items()]
    return f"Text after the command (words that are not `key=value`) is {'; '.join(parts)}."


def _slots_in_use() -> list[Slot]:
    used = {attachment.slot for spec in COMMANDS.values() for attachment in spec.attachments}
    return [slot for slot in Slot if slot in used]


def _reply_sentence() -> str:
    sentence = (
        "To re-generate, reply in the job's thread with options (`steps=30`), new text for a "
        "new prompt, `+ more text` to add to the prompt, or `again` for a new seed"
    )
    reply_only = [option for option in OPTIONS.values() if option.reply_only]
    for option in reply_only:
        sentence += f"; `{option.name}=`: {option.help}"
    return sentence + ". A reply starting with `//` is just a comment."


def _command_help(spec: CommandSpec) -> str:
    lines = [f"`{spec.name}` — {spec.summary}", f"Usage: {_usage(spec)}"]
    if spec.free_text is not None:
        lines.append(f"Text after `{spec.name}` is the {spec.free_text}.")
    if spec.attachments:
        paths = ", ".join(f"`{a.slot.value}=PATH`" for a in spec.attachments)
        lines += ["", f"*Images* (attach them; the console takes {paths} instead)"]
        for attachment in spec.attachments:
            needed = "required" if attachment.required else "optional"
            lines.append(f"• {attachment.slot.value} ({needed}) — {attachment.help}")
    common = [OPTIONS[name] for name in spec.options if not OPTIONS[name].advanced]
    advanced = [OPTIONS[name] for name in spec.options if OPTIONS[name].advanced]
    if common:
        lines += ["", "*Options*"]
        for option in common:
            lines += _option_lines(option)
    if advanced:
        lines += [
            "",
            f"*More options* (the rest of the WebUI's panel; on Discord write them in "
            f"`{ADVANCED}`, e.g. `{ADVANCED}: clip_skip=2 tiling=on`)",
        ]
        for option in advanced:
            lines += _option_lines(option)
    if spec.family in (Family.GENERATE, Family.INTERROGATE):
        lines += ["", _reply_sentence()]
    if spec.examples:
        lines += ["", "*Examples*"]
        lines += [f"• `{example}`" for example in spec.examples]
    return "\n".join(lines)


def _option_lines(option: OptionSpec) -> list[str]:
    if option.kind is Kind.CHOICE and len(option.choices) > _INLINE_CHOICES:
        default = f"; default {_shown_default(option.default)}" if option.default else ""
        return [
            f"• `{option.name}` — {option.help}; one of {len(option.choices)}{default}:",
            f"   {', '.join(option.choices)}",
        ]
    return [f"• `{option.name}` — {option.help} — {describe_value(option)}"]
