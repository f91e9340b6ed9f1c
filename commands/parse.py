"""The text grammar of sdbot commands and the reading of option values (SPEC §2.3, §3.2).

This module owns turning a chat message (Slack, the console, a reply in a job's thread) or
Discord's already-split option values into a `ParsedCommand` / `ParsedReply` checked against the
declarations in `commands.spec`, or a `GrammarError` whose message says what to fix. It is pure:
no I/O, and no clock except the default of the `now` arguments.

Words are split like POSIX shell words (whitespace separates, "double" and 'single' quotes
group, a backslash makes the next character literal), with deliberate differences for chat:

- Typographic quotes count as plain ones: “ and ” as ", ‘ and ’ as '.
- A single quote (' ‘ ’) directly after a letter or digit is an apostrophe, not a quote:
  `don't`, `dogs'`, `James’`. A quoted section therefore starts at the beginning of a word or
  after a symbol such as `=` (`prompt='a cat'`). Inside single quotes, a quote between two
  letters or digits is also an apostrophe (`'don't stop'`); any other one closes the quote.
- Inside double quotes a backslash escapes only a double quote or a backslash and is kept
  otherwise, so `"C:\\images\\cat.png"` keeps its backslashes.
- A `name=value` word is an option only when the name and the `=` are written bare: a quoted or
  escaped `=` is text, so `img2img "E=mc2"` has the prompt `E=mc2`.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING

from commands.errors import GrammarError
from commands.prompt import clean, networks
from commands.spec import (
    ADVANCED,
    COMMANDS,
    MAX_IMAGES,
    OPTIONS,
    CommandSpec,
    Family,
    Kind,
    OptionSpec,
    OptionValue,
    Size,
    image_count_error,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = (
    "LONG_TEXT_OPTIONS",
    "NAME_CAP",
    "PROMPT_CAP",
    "SIDE_MAX",
    "SIDE_MIN",
    "SIDE_MULTIPLE",
    "ParsedCommand",
    "ParsedReply",
    "build",
    "closest",
    "convert_option",
    "find_command",
    "parse",
    "parse_reply",
    "tokenize",
)

# Prompts are long by nature; every other text option is a name (model, user, command …).
LONG_TEXT_OPTIONS = frozenset({"prompt", "negative"})
PROMPT_CAP = 2000
NAME_CAP = 200
# Output sides; the same bounds as the `width` / `height` declarations (a test keeps them equal).
SIDE_MIN = 64
SIDE_MAX = 2048
SIDE_MULTIPLE = 8

_DOUBLE_QUOTES = frozenset('"“”')
_SINGLE_QUOTES = frozenset("'‘’")
_OPTION_WORD = re.compile(r"([A-Za-z][A-Za-z0-9_-]*)=(.*)", re.DOTALL)
# `--steps`, `--steps=30`: command-line habits (and Midjourney's `--ar 16:9`).
_DASHED = re.compile(r"--([A-Za-z][A-Za-z0-9_-]*)(?:=(.*))?", re.DOTALL)
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SIZE = re.compile(r"([0-9]{1,6}) *[xX×] *([0-9]{1,6})")
_ISO_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[Tt ].*)?", re.DOTALL)
_RELATIVE = re.compile(r"([0-9]{1,9}) *([mhdw])", re.IGNORECASE)
_RELATIVE_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# A backend's own job id, as `jobs source=cloud` lists it: ESD's are UUIDs.
BACKEND_JOB_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}")
# The store's ids are lowercase base32, but the spec's own examples (`job k3x9`) use digits
# outside that alphabet; any lowercase letter or digit is accepted and the store decides.
_JOB_ID = re.compile(r"[a-z0-9]{4,10}|" + BACKEND_JOB_ID.pattern)
# `result`, `result:N`, and a bare `N` as shorthand (also how stored options write it back).
_RESULT = re.compile(r"(?:result(?: *: *([0-9]{1,9}))?|([0-9]{1,9}))", re.IGNORECASE)
_BOOLS = {
    "true": True, "yes": True, "on": True, "1": True,
    "false": False, "no": False, "off": False, "0": False,
}  # fmt: skip
# Choice sets at most this long are listed in full in error messages.
_LISTED_CHOICES = 8


@dataclass(frozen=True)
class ParsedCommand:
    """A command that parsed: its declaration and the options the user gave.

    `options` holds only what was given, under canonical names (`mask_blur`), as typed values;
    defaults are applied later, by whoever knows the channel and server settings.
    """

    spec: CommandSpec
    # Not hashed (a mapping is not hashable); equal commands still have equal specs.
    options: Mapping[str, OptionValue] = field(hash=False)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class ParsedReply:
    """A reply in a job's thread that asks for a new job from that job (SPEC §3.2)."""

    options: Mapping[str, OptionValue] = field(hash=False)
    # Free text: replaces the base job's prompt. None when the reply has no free text.
    prompt: str | None
    # Text after a leading `+`: appended to the base job's prompt.
    append: str | None
    # The bare word `again`: pick a new random seed.
    again: bool


# ---------------------------------------------------------------------------------------------
# Words


@dataclass(frozen=True)
class _Word:
    text: str
    # Whether any part of the word was quoted or escaped.
    quoted: bool
    # How many leading characters of `text` were written bare; an `=` only makes an option there.
    bare_length: int


class _Lexer:
    """Splits text into shell-like words (see the module docstring for the chat differences)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._words: list[_Word] = []
        self._chars: list[str] = []
        self._in_word = False
        self._bare_length: int | None = None

    def words(self) -> list[_Word]:
        text = self._text
        while self._pos < len(text):
            char = text[self._pos]
            if char.isspace():
                self._end_word()
                self._pos += 1
            elif char == "\\":
                self._escape()
            elif char in _DOUBLE_QUOTES:
                self._double_quoted()
            elif char in _SINGLE_QUOTES and not self._after_alnum(self._pos):
                self._single_quoted()
            else:
                self._take(char)
                self._pos += 1
        self._end_word()
        return self._words

    def _after_alnum(self, pos: int) -> bool:
        return pos > 0 and self._text[pos - 1].isalnum()

    def _before_alnum(self, pos: int) -> bool:
        return pos + 1 < len(self._text) and self._text[pos + 1].isalnum()

    def _take(self, char: str) -> None:
        self._in_word = True
        self._chars.append(char)

    def _start_quoting(self) -> None:
        self._in_word = True
        if self._bare_length is None:
            self._bare_length = len(self._chars)

    def _end_word(self) -> None:
        if not self._in_word:
            return
        text = "".join(self._chars)
        bare_length = len(text) if self._bare_length is None else self._bare_length
        self._words.append(_Word(text, self._bare_length is not None, bare_length))
        self._chars = []
        self._in_word = False
        self._bare_length = None

    def _escape(self) -> None:
        if self._pos + 1 >= len(self._text):
            raise GrammarError(
                "the text ends with a backslash `\\` — remove it, or write `\\\\` for a backslash"
            )
        self._start_quoting()
        self._take(self._text[self._pos + 1])
        self._pos += 2

    def _double_quoted(self) -> None:
        start = self._pos
        self._start_quoting()
        self._pos += 1
        text = self._text
        while True:
            if self._pos >= len(text):
                raise _unclosed_quote(text, start)
            char = text[self._pos]
            if char in _DOUBLE_QUOTES:
                self._pos += 1
                return
            if char == "\\" and self._pos + 1 < len(text):
                following = text[self._pos + 1]
                if following in _DOUBLE_QUOTES or following == "\\":
                    self._take(following)
                    self._pos += 2
                    continue
            self._take(char)
            self._pos += 1

    def _single_quoted(self) -> None:
        start = self._pos
        self._start_quoting()
        self._pos += 1
        text = self._text
        while True:
            if self._pos >= len(text):
                raise _unclosed_quote(text, start)
            char = text[self._pos]
            is_apostrophe = self._after_alnum(self._pos) and self._before_alnum(self._pos)
            if char in _SINGLE_QUOTES and not is_apostrophe:
                self._pos += 1
                return
            self._take(char)
            self._pos += 1


def _unclosed_quote(text: str, start: int) -> GrammarError:
    quote = text[start]
    return GrammarError(
        f"unclosed quote: the {quote} before `{_shown(text[start + 1 :], 30)}` has no closing "
        f"quote — add one, or write \\{quote} for a literal quote character"
    )


def tokenize(text: str) -> list[str]:
    """The words of `text`, with quotes and escapes removed (see the module docstring)."""
    return [word.text for word in _Lexer(text).words()]


# ---------------------------------------------------------------------------------------------
# Names


def _loose(name: str) -> str:
    """A spelling-insensitive key: lower case, `-` / `_` / runs of spaces all one space."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def closest(name: str, candidates: Iterable[str], *, limit: int = 3) -> list[str]:
    """The candidates `name` most likely meant, best first, for a "did you mean" line."""
    by_key: dict[str, str] = {}
    for candidate in candidates:
        by_key.setdefault(_loose(candidate), candidate)
    # Long junk cannot be a typo of a short name, and difflib is quadratic.
    key = _loose(name)[:64]
    if key in by_key:
        return [by_key[key]]
    keys = difflib.get_close_matches(key, list(by_key), n=limit, cutoff=0.6)
    if len(key) >= 3:
        keys += [k for k in by_key if k.startswith(key) and k not in keys]
    return [by_key[k] for k in keys[:limit]]


def _shown(value: str, width: int = 40) -> str:
    """`value` fit to quote in a message: one line, no backticks, at most `width` characters."""
    flat = " ".join(value.replace("`", "'").split()) if value.strip() else value
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _code_list(names: Iterable[str], conjunction: str = "or") -> str:
    quoted = [f"`{name}`" for name in names]
    if len(quoted) <= 1:
        return "".join(quoted)
    return f"{', '.join(quoted[:-1])} {conjunction} {quoted[-1]}"


def _number(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def find_command(name: str) -> CommandSpec:
    """The command users call `name` (any case, `_` for `-`), or a `GrammarError` with a guess."""
    spec = COMMANDS.get(name.strip().lower().replace("_", "-"))
    if spec is not None:
        return spec
    if not name.strip():
        raise GrammarError("start with a command name, such as `img2img`; `help` lists them all")
    guesses = closest(name, COMMANDS)
    hint = f" — did you mean {_code_list(guesses)}?" if guesses else ";"
    raise GrammarError(f"unknown command `{_shown(name)}`{hint} `help` lists every command")


# Names users bring from the A1111 WebUI / API, and what sdbot calls the same thing.
A1111_NAMES: dict[str, str] = {
    "denoise": "strength",
    "denoising": "strength",
    "denoising_strength": "strength",
    "cfg_scale": "cfg",
    "sampler_name": "sampler",
    "sampler_index": "sampler",
    "negative_prompt": "negative",
    "batch_size": "count",
    "n_iter": "batch_count",
    "image_cfg_scale": "image_cfg",
    "initial_noise_multiplier": "noise_multiplier",
    "clip_stop_at_last_layers": "clip_skip",
    "resize_mode": "resize",
    "masked_content": "fill",
    "inpainting_fill": "fill",
    "inpaint_full_res": "area",
    "inpaint_area": "area",
    "inpaint_full_res_padding": "padding",
    "only_masked_padding": "padding",
    "inpainting_mask_invert": "invert",
    "mask_mode": "invert",
    "sd_model_checkpoint": "model",
    "checkpoint": "model",
    "sd_vae": "vae",
}


def _sdbot_name(spec: CommandSpec, given: str, value: str | None) -> str | None:
    """A pointer from an A1111 option name to sdbot's, when `spec` takes that option."""
    name = A1111_NAMES.get(given.lower().replace("-", "_"))
    if name is None or name not in spec.options:
        return None
    option = OPTIONS[name]
    if value is not None and option.kind in (Kind.INT, Kind.FLOAT):
        example = f"`{name}={value}`"
    else:
        example = f"`{name}=` ({_expected(option)})"
    return f"`{_shown(given)}` is A1111's name; sdbot calls it `{name}`: write {example}"


def _option_for(
    spec: CommandSpec,
    given: str,
    *,
    console: bool,
    reply: bool,
    word: str | None = None,
    value: str | None = None,
) -> OptionSpec:
    """The declaration of option `given` (as the user spelled it) for the command `spec`.

    `word` is the whole `name=value` word when the option came from text, `value` its value.
    """
    name = given.lower().replace("-", "_")
    option = OPTIONS.get(name)
    if option is None and (pointer := _sdbot_name(spec, given, value)) is not None:
        raise GrammarError(pointer)
    if option is None or name not in spec.options:
        takers = [c.name for c in COMMANDS.values() if name in c.options]
        if option is not None and takers:
            raise GrammarError(
                f"`{name}` is not an option of `{spec.name}` — only "
                f"{_code_list(takers, 'and')} take{'s' if len(takers) == 1 else ''} it"
            )
        raise _unknown_option(spec, given, console=console, reply=reply, word=word)
    if option.console_only and not console:
        raise GrammarError(f"`{name}=` paths only work in the console; attach the {name} instead")
    if option.reply_only and not reply:
        raise GrammarError(f"`{name}=` only works in a reply in a job's thread")
    return option


def _unknown_option(
    spec: CommandSpec, given: str, *, console: bool, reply: bool, word: str | None
) -> GrammarError:
    usable = [
        name
        for name in spec.options
        if (option := OPTIONS.get(name)) is not None
        and (console or not option.console_only)
        and (reply or not option.reply_only)
    ]
    guesses = closest(given, usable)
    message = f"unknown option `{_shown(given)}` for {spec.name}"
    if guesses:
        return GrammarError(f"{message} — did you mean {_code_list(guesses)}?")
    if usable:
        message += f" — `help {spec.name}` lists its options"
    else:
        message += f" — `{spec.name}` takes no options"
    if spec.free_text is not None and word is not None:
        # Most often an `=` that belongs in the prompt (`E=mc2`), not a mistyped option.
        message += f'; to put `=` in the {spec.free_text}, quote it: "{_shown(word)}"'
    return GrammarError(message)


# ---------------------------------------------------------------------------------------------
# Values


def convert_option(spec: OptionSpec, raw: str, *, now: datetime | None = None) -> OptionValue:
    """Read one option value written as text; `now` anchors relative times (default: now, UTC)."""
    kind = spec.kind
    if kind is Kind.TEXT:
        return _read_text(spec, raw)
    if kind is Kind.PATH:
        if not raw.strip():
            raise GrammarError(f"`{spec.name}=` needs a path")
        return raw
    value = raw.strip()
    if not value:
        raise GrammarError(f"`{spec.name}=` needs a value: {_expected(spec)}")
    if kind is Kind.INT:
        return _read_int(spec, value)
    if kind is Kind.FLOAT:
        return _read_float(spec, value)
    if kind is Kind.BOOL:
        return _read_bool(spec, value)
    if kind is Kind.CHOICE:
        return _read_choice(spec, value)
    if kind is Kind.SIZE:
        return _read_size(spec, value)
    if kind is Kind.TIME:
        return _read_time(spec, value, now)
    if kind is Kind.JOB_ID:
        return _read_job_id(spec, value)
    return _read_result(spec, value)


def _expected(spec: OptionSpec) -> str:
    """What a value of `spec` looks like, for error messages."""
    kind = spec.kind
    if kind is Kind.INT:
        return f"a whole number{_range(spec)}"
    if kind is Kind.FLOAT:
        return f"a number{_range(spec)}"
    if kind is Kind.BOOL:
        return "true or false (also yes/no, on/off, 1/0)"
    if kind is Kind.CHOICE:
        return f"one of {_code_list(spec.choices)}"
    if kind is Kind.SIZE:
        return (
            f"WxH such as 768x512, each side from {SIDE_MIN} to {SIDE_MAX} and a multiple of "
            f"{SIDE_MULTIPLE}"
        )
    if kind is Kind.TIME:
        return (
            "a date (2026-11-01), a UTC date-time (2026-11-01T14:30) "
            "or a time ago (30m, 2h, 3d, 1w)"
        )
    if kind is Kind.JOB_ID:
        return (
            "a job id such as k3x9q2m7ab, or its first 4 or more characters, "
            "or the backend's id of a job (`jobs source=cloud` lists them)"
        )
    if kind is Kind.RESULT:
        return f"`result` or `result:N` with N from 1 to {_max_results()}"
    if kind is Kind.PATH:
        return "a file path"
    return "text"


def _range(spec: OptionSpec) -> str:
    if spec.min is None or spec.max is None:
        return ""
    default = f" (default {_number(spec.default)})" if isinstance(spec.default, int | float) else ""
    return f" between {_number(spec.min)} and {_number(spec.max)}{default}"


def _out_of_range(spec: OptionSpec, got: str) -> GrammarError:
    return GrammarError(f"`{spec.name}` must be{_range(spec)}, got {_shown(got)}")


def _read_text(spec: OptionSpec, raw: str) -> str:
    raw = clean(raw)
    if spec.name in LONG_TEXT_OPTIONS:
        cap = PROMPT_CAP
        try:
            networks(raw)  # LoRA weights must be finite numbers
        except ValueError as exc:
            raise GrammarError(str(exc)) from None
    else:
        cap = NAME_CAP
        if not raw.strip():
            raise GrammarError(f"`{spec.name}=` needs a value")
    if len(raw) > cap:
        raise GrammarError(
            f"`{spec.name}` is {len(raw)} characters long; the limit is {cap} — shorten it"
        )
    return raw


def _read_int(spec: OptionSpec, value: str) -> int:
    if not _INT.fullmatch(value):
        raise GrammarError(f"`{spec.name}` must be {_expected(spec)}, got `{_shown(value)}`")
    if len(value) > 30:  # far out of any range, and `int()` refuses very long digit strings
        raise _out_of_range(spec, value)
    return _check_int(spec, int(value))


def _check_int(spec: OptionSpec, number: int) -> int:
    if (spec.min is not None and number < spec.min) or (spec.max is not None and number > spec.max):
        raise _out_of_range(spec, str(number))
    return number


def _read_float(spec: OptionSpec, value: str) -> float:
    if not _FLOAT.fullmatch(value):
        raise GrammarError(f"`{spec.name}` must be {_expected(spec)}, got `{_shown(value)}`")
    return _check_float(spec, float(value), value)


def _check_float(spec: OptionSpec, number: float, written: str) -> float:
    too_low = spec.min is not None and number < spec.min
    too_high = spec.max is not None and number > spec.max
    if not math.isfinite(number) or too_low or too_high:
        raise _out_of_range(spec, written)
    return number


def _read_bool(spec: OptionSpec, value: str) -> bool:
    flag = _BOOLS.get(value.lower())
    if flag is None:
        raise GrammarError(f"`{spec.name}` must be {_expected(spec)}, got `{_shown(value)}`")
    return flag


def _read_choice(spec: OptionSpec, value: str) -> str:
    key = _loose(value)
    for choice in spec.choices:
        if _loose(choice) == key:
            return choice
    guesses = closest(value, spec.choices)
    message = f"unknown {spec.name} `{_shown(value)}`"
    message += f" — did you mean {_code_list(guesses)}?" if guesses else "."
    if len(spec.choices) <= _LISTED_CHOICES:
        message += f" Choose {_expected(spec)}."
    else:
        takers = [c.name for c in COMMANDS.values() if spec.name in c.options]
        where = f"`help {takers[0]}`" if takers else "`help`"
        message += f" {where} lists all {len(spec.choices)}."
    raise GrammarError(message)


def _read_size(spec: OptionSpec, value: str) -> Size:
    match = _SIZE.fullmatch(value)
    if match is not None:
        width, height = int(match[1]), int(match[2])
        if all(_valid_side(side) for side in (width, height)):
            return Size(width, height)
    raise GrammarError(f"`{spec.name}` must be {_expected(spec)}, got `{_shown(value)}`")


def _valid_side(side: int) -> bool:
    return SIDE_MIN <= side <= SIDE_MAX and side % SIDE_MULTIPLE == 0


def _read_time(spec: OptionSpec, value: str, now: datetime | None) -> datetime:
    relative = _RELATIVE.fullmatch(value)
    if relative is not None:
        anchor = now if now is not None else datetime.now(UTC)
        if anchor.tzinfo is None:
            anchor = anchor.replace(tzinfo=UTC)
        unit = _RELATIVE_UNITS[relative[2].lower()]
        try:
            return (anchor - timedelta(**{unit: int(relative[1])})).astimezone(UTC)
        except OverflowError:
            raise GrammarError(
                f"`{spec.name}={_shown(value)}` is too far back; use a date such as 2026-11-01"
            ) from None
    if value.isascii() and _ISO_START.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            # Naive times are UTC (SPEC §2.3); others are converted to UTC.
            if moment.tzinfo is None:
                return moment.replace(tzinfo=UTC)
            try:
                return moment.astimezone(UTC)
            except OverflowError:
                pass
    raise GrammarError(f"`{spec.name}` must be {_expected(spec)}, got `{_shown(value)}`")


def _read_job_id(spec: OptionSpec, value: str) -> str:
    job_id = value.lower()
    if not _JOB_ID.fullmatch(job_id):
        raise GrammarError(f"`{spec.name}` must be {_expected(spec)}, got `{_shown(value)}`")
    return job_id


def _max_results() -> int:
    return MAX_IMAGES


def _read_result(spec: OptionSpec, value: str) -> int:
    match = _RESULT.fullmatch(value)
    if match is not None:
        written = match[1] or match[2]
        index = int(written) if written is not None else 1
        if 1 <= index <= _max_results():
            return index
    raise GrammarError(f"`{spec.name}` must be {_expected(spec)}, got `{_shown(value)}`")


def _convert_given(spec: OptionSpec, value: object, now: datetime | None) -> OptionValue:
    """Read a value that a platform already typed (Discord): text as in a message, numbers as is."""
    if isinstance(value, str):
        return convert_option(spec, value, now=now)
    # bool is an int subclass: only BOOL options take it.
    if isinstance(value, bool):
        if spec.kind is Kind.BOOL:
            return value
    elif spec.kind is Kind.INT and isinstance(value, int):
        return _check_int(spec, value)
    elif spec.kind is Kind.FLOAT and isinstance(value, int | float):
        return _check_float(spec, float(value), _number(value))
    raise GrammarError(f"`{spec.name}` must be {_expected(spec)}, got `{_shown(repr(value))}`")


def _check_together(options: Mapping[str, OptionValue]) -> None:
    """Checks that involve more than one option."""
    if "size" in options and ("width" in options or "height" in options):
        raise GrammarError("give either `size=WxH` or `width=` / `height=`, not both")
    if "scale" in options and any(name in options for name in ("size", "width", "height")):
        raise GrammarError(
            "give either `scale=` (resize by) or a size (`size=`, `width=`, `height=`)"
        )
    count, batch_count = options.get("count", 1), options.get("batch_count", 1)
    if isinstance(count, int) and isinstance(batch_count, int):
        too_many = image_count_error(count, batch_count)
        if too_many is not None:
            raise GrammarError(too_many)
    for name in ("width", "height"):
        side = options.get(name)
        if isinstance(side, int) and side % SIDE_MULTIPLE:
            lower = side - side % SIDE_MULTIPLE
            raise GrammarError(
                f"`{name}` must be a multiple of {SIDE_MULTIPLE}, got {side} "
                f"(try {max(lower, SIDE_MIN)} or {min(lower + SIDE_MULTIPLE, SIDE_MAX)})"
            )
    since, until = options.get("since"), options.get("until")
    if isinstance(since, datetime) and isinstance(until, datetime) and since >= until:
        raise GrammarError("`since` must be before `until`, or no job can match")


# ---------------------------------------------------------------------------------------------
# Commands and replies


@dataclass
class _Reading:
    options: dict[str, OptionValue]
    free_words: list[str]
    again: bool


def _read_words(
    spec: CommandSpec, words: list[_Word], *, console: bool, reply: bool, now: datetime | None
) -> _Reading:
    reading = _Reading({}, [], again=False)
    for number, word in enumerate(words):
        dashed = _DASHED.fullmatch(word.text)
        if dashed is not None and not word.quoted:
            following = words[number + 1].text if number + 1 < len(words) else None
            raise _dashed_option(spec, dashed[1], dashed[2] or following, word.text)
        match = _OPTION_WORD.fullmatch(word.text)
        if match is not None and match.end(1) < word.bare_length:
            option = _option_for(
                spec, match[1], console=console, reply=reply, word=word.text, value=match[2]
            )
            if option.name in reading.options:
                raise GrammarError(f"`{option.name}` is given twice — keep one")
            reading.options[option.name] = convert_option(option, match[2], now=now)
        elif reply and not word.quoted and word.text.lower() == "again":
            reading.again = True
        elif word.text:
            reading.free_words.append(word.text)
    return reading


def _dashed_option(spec: CommandSpec, name: str, value: str | None, word: str) -> GrammarError:
    """`--steps 30`: command-line style options are pointed to `key=value`, never taken as
    prompt text (quote the word to put it in the prompt)."""
    canonical = name.lower().replace("-", "_")
    canonical = A1111_NAMES.get(canonical, canonical)
    if value is not None and value.startswith("--"):
        value = None  # the next word is another option, not this one's value
    if canonical in spec.options:
        given = word if "=" in word or value is None else f"{word} {value}"
        return GrammarError(
            f"options are written `key=value`: `{canonical}={_shown(value or '…')}`, "
            f"not `{_shown(given)}`"
        )
    return GrammarError(
        f"`{_shown(word)}` is not an option of {spec.name}: options are written `key=value` "
        f"(`help {spec.name}` lists them); to put `{_shown(word)}` in the text, quote it"
    )


def _free_text_option(
    spec: CommandSpec, options: Mapping[str, OptionValue], free_text: str
) -> OptionSpec:
    """The option free text fills, after checking the command takes free text at all."""
    if spec.free_text is None:
        usable = [name for name in spec.options if not OPTIONS[name].reply_only]
        if not usable:
            raise GrammarError(
                f"`{spec.name}` takes no text and no options; send just `{spec.name}` "
                f"(remove `{_shown(free_text)}`)"
            )
        raise GrammarError(
            f"`{spec.name}` takes no text, only `key=value` options "
            f"({_code_list(usable, 'and')}); remove `{_shown(free_text)}`"
        )
    if spec.free_text in options:
        raise GrammarError(
            f"give the {spec.free_text} either as text after `{spec.name}` or as "
            f"`{spec.free_text}=`, not both"
        )
    return OPTIONS[spec.free_text]


def parse(text: str, *, console: bool = False, now: datetime | None = None) -> ParsedCommand:
    """Parse a command message: `<command> [free text] [key=value …]`.

    `console` allows the local path options (`image=PATH`); `now` anchors relative times.
    """
    words = _Lexer(text).words()
    if not words:
        raise GrammarError("the message is empty — start with a command, e.g. `help`")
    spec = find_command(words[0].text)
    reading = _read_words(spec, words[1:], console=console, reply=False, now=now)
    options = reading.options
    if reading.free_words:
        free_text = " ".join(reading.free_words)
        option = _free_text_option(spec, options, free_text)
        options[option.name] = convert_option(option, free_text, now=now)
    _check_together(options)
    return ParsedCommand(spec, MappingProxyType(options))


def parse_reply(
    text: str, command: str, *, console: bool = False, now: datetime | None = None
) -> ParsedReply:
    """Parse a reply that re-generates a job whose command is `command` (SPEC §3.2).

    The caller has already dropped `//` comments and checked who wrote the reply.
    """
    spec = find_command(command)
    if spec.family not in (Family.GENERATE, Family.INTERROGATE):
        raise GrammarError(f"`{spec.name}` answers cannot be re-generated by a reply")
    reading = _read_words(spec, _Lexer(text).words(), console=console, reply=True, now=now)
    options = reading.options
    prompt: str | None = None
    append: str | None = None
    if reading.free_words:
        free_text = " ".join(reading.free_words)
        option = _free_text_option(spec, options, free_text)
        if free_text.startswith("+"):
            append = _read_text(option, free_text[1:].strip())
            if not append:
                raise GrammarError(
                    "write the text to add after `+`, for example `+ golden hour lighting`"
                )
        else:
            prompt = _read_text(option, free_text)
    if reading.again and "seed" in options:
        raise GrammarError("`again` picks a new random seed — leave it out or leave out `seed=`")
    _check_together(options)
    return ParsedReply(MappingProxyType(options), prompt, append, reading.again)


def _read_advanced(
    spec: CommandSpec, text: str, options: dict[str, OptionValue], now: datetime | None
) -> None:
    """Discord's `advanced` option: `key=value` words read as in a message, into `options`."""
    reading = _read_words(spec, _Lexer(text).words(), console=False, reply=False, now=now)
    if reading.free_words:
        raise GrammarError(
            f"`{ADVANCED}` takes only `key=value` options, such as `clip_skip=2 tiling=on`; "
            f"remove `{_shown(' '.join(reading.free_words))}`"
        )
    for name, value in reading.options.items():
        if name in options:
            raise GrammarError(f"`{name}` is given twice — keep one")
        options[name] = value


def build(
    command: str,
    values: Mapping[str, object],
    *,
    console: bool = False,
    now: datetime | None = None,
) -> ParsedCommand:
    """Check options a platform already split (Discord slash commands) as `parse` checks text.

    `values` maps option names to str, int, float or bool; None means "not given". Strings are
    read exactly as in text, numbers are range-checked, and the errors are those of `parse`.
    """
    spec = find_command(command)
    options: dict[str, OptionValue] = {}
    for given, value in values.items():
        if value is None:
            continue
        if given == ADVANCED and isinstance(value, str):
            _read_advanced(spec, value, options, now)
            continue
        option = _option_for(spec, given, console=console, reply=False)
        if option.name in options:
            raise GrammarError(f"`{option.name}` is given twice — keep one")
        options[option.name] = _convert_given(option, value, now)
    _check_together(options)
    return ParsedCommand(spec, MappingProxyType(options))
