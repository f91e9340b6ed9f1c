"""Tests for the help text: complete, and generated from the declarations alone."""

from __future__ import annotations

from dataclasses import replace

import pytest

from commands import (
    COMMANDS,
    OPTIONS,
    OUT_OF_SCOPE,
    SAMPLERS,
    CommandSpec,
    Family,
    GrammarError,
    Kind,
    OptionSpec,
    describe_value,
    help_text,
    parse,
)


def test_the_overview_lists_every_command_with_its_summary() -> None:
    overview = help_text()
    for spec in COMMANDS.values():
        assert f"`{spec.name}" in overview
        assert spec.summary in overview


def test_the_overview_explains_the_grammar_and_the_scope() -> None:
    overview = help_text()
    assert "key=value" in overview
    assert "quote" in overview.lower()
    assert '`prompt="a=b"`' in overview
    assert "“ ” ‘ ’" in overview
    assert "`image=PATH`" in overview
    assert "again" in overview
    assert f"Out of scope for now: {OUT_OF_SCOPE}" in overview


def test_the_overview_says_what_free_text_fills() -> None:
    overview = help_text()
    assert "the id for `job` and `cancel`" in overview
    assert "the command for `help`" in overview


@pytest.mark.parametrize("blank", [None, "", "  "])
def test_no_command_gives_the_overview(blank: str | None) -> None:
    assert help_text(blank) == help_text()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_help_shows_usage_options_and_examples(name: str) -> None:
    spec = COMMANDS[name]
    text = help_text(name)
    assert text.startswith(f"`{name}` — {spec.summary}")
    assert f"Usage: `{name}" in text
    for option_name in spec.options:
        option = OPTIONS[option_name]
        assert f"`{option_name}`" in text
        assert option.help in text
    for example in spec.examples:
        assert f"`{example}`" in text


@pytest.mark.parametrize("name", [n for n, s in COMMANDS.items() if s.attachments])
def test_a_command_help_shows_its_images_and_console_paths(name: str) -> None:
    text = help_text(name)
    for attachment in COMMANDS[name].attachments:
        assert attachment.help in text
        assert f"`{attachment.slot.value}=PATH`" in text
        assert ("required" if attachment.required else "optional") in text


def test_ranges_defaults_and_choices_are_shown() -> None:
    text = help_text("inpaint")
    assert "`steps` — sampling steps — whole number 1–150; default 20" in text
    assert "number 0–1; default 0.75" in text
    assert "default `DPM++ 2M Karras`" in text
    for sampler in SAMPLERS:
        assert sampler in text
    assert "`latent-noise`" in text
    assert "true/false" in text
    assert "console only" in text
    assert "in a reply only" in text


def test_usage_marks_free_text_and_options() -> None:
    assert "Usage: `img2img [prompt] [key=value …]`" in help_text("img2img")
    assert "Usage: `job [id]`" in help_text("job")
    assert "Usage: `jobs [key=value …]`" in help_text("jobs")
    assert "Usage: `endpoints`" in help_text("endpoints")
    assert "*Options*" not in help_text("endpoints")


def test_command_names_in_help_are_spelled_as_in_commands() -> None:
    assert help_text("INPAINT_SKETCH") == help_text("inpaint-sketch")


def test_an_unknown_command_suggests_the_closest() -> None:
    with pytest.raises(GrammarError, match="did you mean `inpaint`"):
        help_text("inpiant")


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("prompt", "text, up to 2000 characters"),
        ("seed", "whole number -1–4294967295; default -1"),
        ("size", "WxH, each side 64–2048 and a multiple of 8"),
        ("since", "30m, 2h, 3d, 1w"),
        ("id", "job id"),
        ("invert", "default false"),
        ("all", "default false"),
        ("image", "file path; console only"),
        ("input", "`result:N`"),
        ("status", "one of `created`, `inprogress`"),
    ],
)
def test_describe_value(option: str, expected: str) -> None:
    assert expected in describe_value(OPTIONS[option])


def test_a_new_declaration_shows_in_help_and_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    flip = OptionSpec("flip", Kind.BOOL, "mirror the picture first", False)
    monkeypatch.setitem(OPTIONS, "flip", flip)
    img2img = COMMANDS["img2img"]
    monkeypatch.setitem(COMMANDS, "img2img", replace(img2img, options=(*img2img.options, "flip")))
    text = help_text("img2img")
    assert "`flip` — mirror the picture first — true/false" in text
    assert "`flip`" not in help_text("sketch")
    assert parse("img2img a cat flip=on").options["flip"] is True


def test_a_new_command_shows_in_the_overview(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CommandSpec("queue", Family.QUERY, "what is waiting to run", ("endpoint",))
    monkeypatch.setitem(COMMANDS, "queue", spec)
    assert "• `queue [key=value …]` — what is waiting to run" in help_text()
    assert "Usage: `queue [key=value …]`" in help_text("queue")
