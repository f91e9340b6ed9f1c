"""Property tests for the command grammar: arbitrary text never breaks the parser."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commands import (
    COMMANDS,
    OPTIONS,
    GrammarError,
    Kind,
    build,
    convert_option,
    parse,
    parse_reply,
    tokenize,
)
from commands.prompt import clean

if TYPE_CHECKING:
    from collections.abc import Callable

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FAST = settings(max_examples=150, deadline=None)

REPLY_COMMANDS = ["img2img", "inpaint", "interrogate", "inpaint-sketch"]

# Pieces of the grammar, so that generated text often gets past the first word.
FRAGMENTS = [
    *COMMANDS,
    *(f"{name}=" for name in OPTIONS),
    *(f"{name.upper().replace('_', '-')}=" for name in OPTIONS),
    *(choice for option in OPTIONS.values() for choice in option.choices),
    "again", "AGAIN", "+", "+ ", "=", "==", "result", "result:2", "result:0",
    "512x512", "513x512", "64×64", "2026-11-01", "2026-11-01T14:30Z", "30m", "2h", "3d", "1w",
    "0", "1", "-1", "1e999", "nan", "inf", "0.5", "yes", "off", "k3x9", "K3X9Q2M7AB",
    " ", "  ", "\t", "\n", '"', "'", "“", "”", "‘", "’", "\\", "\\\\", "don't", "dogs'",
    "a", "cat", "x", "é", "٣", "×", "\x00", "//",
]  # fmt: skip

grammarish = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=12).map(
    "".join
)
spaced = st.lists(st.sampled_from(FRAGMENTS), max_size=10).map(" ".join)
any_text = st.one_of(st.text(), grammarish, spaced)


def returns_or_refuses(call: Callable[[], object]) -> None:
    """Run `call`; a GrammarError with a message is fine, any other exception fails the test."""
    message = "returned"
    try:
        call()
    except GrammarError as error:
        message = str(error)
    assert message


@FAST
@given(any_text)
def test_tokenize_returns_or_refuses(text: str) -> None:
    returns_or_refuses(lambda: tokenize(text))


@FAST
@given(any_text, st.booleans())
def test_parse_returns_or_refuses(text: str, console: bool) -> None:
    returns_or_refuses(lambda: parse(text, console=console, now=NOW))


@FAST
@given(st.sampled_from(sorted(COMMANDS)), st.one_of(st.text(), grammarish, spaced))
def test_parse_after_a_command_returns_or_refuses(command: str, rest: str) -> None:
    returns_or_refuses(lambda: parse(f"{command} {rest}", console=True, now=NOW))


@FAST
@given(any_text, st.sampled_from(REPLY_COMMANDS), st.booleans())
def test_parse_reply_returns_or_refuses(text: str, command: str, console: bool) -> None:
    returns_or_refuses(lambda: parse_reply(text, command, console=console, now=NOW))


@FAST
@given(st.sampled_from(sorted(OPTIONS)), st.one_of(st.text(), grammarish))
def test_every_option_value_returns_or_refuses(name: str, raw: str) -> None:
    returns_or_refuses(lambda: convert_option(OPTIONS[name], raw, now=NOW))


@FAST
@given(
    st.sampled_from(sorted(COMMANDS)),
    st.dictionaries(
        st.sampled_from(sorted(OPTIONS)),
        st.one_of(st.none(), st.text(), st.integers(), st.floats(), st.booleans()),
        max_size=4,
    ),
)
def test_build_returns_or_refuses(command: str, values: dict[str, object]) -> None:
    returns_or_refuses(lambda: build(command, values, console=True, now=NOW))


def shell_quote(word: str) -> str:
    """Quote `word` so that the grammar reads it back as exactly one word."""
    return '"' + re.sub(r'(["“”\\])', r"\\\1", word) + '"'


@FAST
@given(st.lists(st.text(), max_size=6))
def test_quoted_words_read_back_unchanged(words: list[str]) -> None:
    assert tokenize(" ".join(shell_quote(word) for word in words)) == words


@FAST
@given(st.text(min_size=1, max_size=2000).filter(lambda text: clean(text).strip() != ""))
def test_a_quoted_prompt_is_kept_exactly(prompt: str) -> None:
    """Exactly, but for the hidden control characters `commands.prompt.clean` drops."""
    parsed = parse(f"img2img {shell_quote(prompt)}")
    assert parsed.options == {"prompt": clean(prompt)}


@FAST
@given(st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=1, max_size=8))
def test_plain_words_join_into_the_prompt(words: list[str]) -> None:
    words = [word for word in words if word not in ("again",)]
    if not words:
        return
    assert parse("img2img " + "  ".join(words)).options == {"prompt": " ".join(words)}
    assert parse_reply(" ".join(words), "img2img").prompt == " ".join(words)


INT_OPTIONS = sorted(
    name for name, option in OPTIONS.items() if option.kind is Kind.INT and option.min is not None
)


@FAST
@given(st.sampled_from(INT_OPTIONS), st.integers(min_value=-(10**12), max_value=10**12))
def test_whole_numbers_are_accepted_exactly_within_their_range(name: str, number: int) -> None:
    option = OPTIONS[name]
    assert option.min is not None
    assert option.max is not None
    if option.min <= number <= option.max:
        assert convert_option(option, str(number)) == number
    else:
        with pytest.raises(GrammarError, match="must be between"):
            convert_option(option, str(number))


@FAST
@given(st.data())
def test_choices_are_found_however_they_are_spelled(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from([n for n, o in OPTIONS.items() if o.kind is Kind.CHOICE]))
    choice = data.draw(st.sampled_from(OPTIONS[name].choices))
    separator = data.draw(st.sampled_from([" ", "_", "-", "  "]))
    spelled = "".join(
        char.upper() if data.draw(st.booleans()) else char.lower()
        for char in re.sub(r"[ _-]", separator, choice)
    )
    assert convert_option(OPTIONS[name], spelled) == choice


def text_form(value: object) -> str:
    """How the core stores an option value as text (bot.inputs.text_value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


VALUES = st.one_of(
    st.sampled_from(FRAGMENTS),
    st.text(max_size=30),
    st.integers(min_value=-(2**33), max_value=2**33).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(str),
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
)


@FAST
@given(st.sampled_from(sorted(OPTIONS)), VALUES)
def test_a_value_read_back_from_its_text_form_is_the_same(name: str, raw: str) -> None:
    option = OPTIONS[name]
    try:
        first = convert_option(option, raw, now=NOW)
    except GrammarError:
        return
    assert convert_option(option, text_form(first), now=NOW) == first
