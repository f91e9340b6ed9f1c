"""Unit tests for the command grammar (SPEC §2.3) and the reply grammar (SPEC §3.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from bot.errors import ParseError
from commands import (
    COMMANDS,
    OPTIONS,
    SAMPLERS,
    GrammarError,
    Kind,
    Size,
    build,
    closest,
    convert_option,
    parse,
    parse_reply,
    tokenize,
)
from commands.parse import NAME_CAP, PROMPT_CAP, SIDE_MAX, SIDE_MIN, SIDE_MULTIPLE

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def error_of(text: str, **kwargs: bool) -> str:
    with pytest.raises(GrammarError) as caught:
        parse(text, now=NOW, **kwargs)
    return str(caught.value)


def value(name: str, raw: str) -> object:
    return convert_option(OPTIONS[name], raw, now=NOW)


def value_error(name: str, raw: str) -> str:
    with pytest.raises(GrammarError) as caught:
        convert_option(OPTIONS[name], raw, now=NOW)
    return str(caught.value)


# --- declarations the parser relies on -----------------------------------------------------


def test_grammar_errors_count_as_the_cores_parse_refusals() -> None:
    # Operators' refusal metrics label both the same, whichever layer refused.
    assert GrammarError.reason == ParseError.reason == "parse"


def test_every_option_a_command_names_is_declared() -> None:
    for spec in COMMANDS.values():
        assert set(spec.options) <= set(OPTIONS), spec.name
        if spec.free_text is not None:
            assert spec.free_text in spec.options


def test_side_bounds_match_the_width_and_height_declarations() -> None:
    for name in ("width", "height"):
        assert (OPTIONS[name].min, OPTIONS[name].max) == (SIDE_MIN, SIDE_MAX)
    assert SIDE_MULTIPLE == 8


@pytest.mark.parametrize("name", [n for n, o in OPTIONS.items() if o.kind is Kind.CHOICE])
def test_every_choice_is_read_back_as_itself(name: str) -> None:
    # Loose matching (case, `_`/`-`, spaces) must never make two choices collide.
    for choice in OPTIONS[name].choices:
        assert value(name, choice) == choice


@pytest.mark.parametrize(
    ("command", "example"),
    [(name, example) for name, spec in COMMANDS.items() for example in spec.examples],
)
def test_every_command_example_parses(command: str, example: str) -> None:
    assert parse(example, now=NOW).name == command


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_parses_bare(command: str) -> None:
    parsed = parse(command)
    assert parsed.name == command
    assert dict(parsed.options) == {}


# --- words ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", []),
        ("   \t\n ", []),
        ("img2img  a\tcat\n", ["img2img", "a", "cat"]),
        ('a "b  c" d', ["a", "b  c", "d"]),
        ("a 'b  c' d", ["a", "b  c", "d"]),
        ('pre"fix"post', ["prefixpost"]),
        ('""', [""]),
        ("''", [""]),
        (r"a\ b", ["a b"]),
        (r"\"quoted\"", ['"quoted"']),
        (r'"say \"hi\""', ['say "hi"']),
        (r'"back\\slash"', ["back\\slash"]),
        (r'"C:\images\cat.png"', [r"C:\images\cat.png"]),
        ("'no \\ escapes'", ["no \\ escapes"]),
        ("'has \"double\" inside'", ['has "double" inside']),
        ("\"has 'single' inside\"", ["has 'single' inside"]),
        ('prompt="a=b"', ["prompt=a=b"]),
        ("“a cat” ‘a dog’", ["a cat", "a dog"]),
        ("“mixed\" 'pair’", ["mixed", "pair"]),
        ("prompt=“a cat”", ["prompt=a cat"]),
        ("prompt=’a cat’", ["prompt=a cat"]),
    ],
)
def test_words_split_like_shell_words(text: str, words: list[str]) -> None:
    assert tokenize(text) == words


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("don't stop", ["don't", "stop"]),
        ("the dogs' toys", ["the", "dogs'", "toys"]),
        ("James’ hat", ["James’", "hat"]),
        ("rock'n'roll 80's", ["rock'n'roll", "80's"]),
        ("'don't stop' now", ["don't stop", "now"]),
        ("it's 'quoted text'", ["it's", "quoted text"]),
        ("‘it’s fine’", ["it’s fine"]),
    ],
)
def test_an_apostrophe_after_a_letter_is_not_a_quote(text: str, words: list[str]) -> None:
    assert tokenize(text) == words


@pytest.mark.parametrize("text", ['img2img "a cat', "img2img 'a cat", "img2img “a cat", "a ‘b"])
def test_an_unclosed_quote_is_refused(text: str) -> None:
    with pytest.raises(GrammarError, match="unclosed quote"):
        tokenize(text)
    with pytest.raises(GrammarError, match="unclosed quote"):
        parse(text)


def test_a_trailing_backslash_is_refused() -> None:
    with pytest.raises(GrammarError, match="backslash"):
        tokenize("img2img a cat\\")


# --- commands ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["IMG2IMG a cat", "Img2Img a cat", "  img2img a cat  "])
def test_the_command_name_ignores_case(text: str) -> None:
    parsed = parse(text)
    assert parsed.name == "img2img"
    assert parsed.spec is COMMANDS["img2img"]
    assert parsed.options["prompt"] == "a cat"


def test_underscore_may_stand_for_the_dash_in_a_command_name() -> None:
    assert parse("Inpaint_Sketch a scarf").name == "inpaint-sketch"


def test_an_unknown_command_suggests_the_closest() -> None:
    message = error_of("imgtoimg a cat")
    assert "unknown command `imgtoimg`" in message
    assert "did you mean `img2img`" in message
    assert "`help`" in message


def test_an_unknown_command_without_a_close_one_points_to_help() -> None:
    message = error_of("zzzzqqq")
    assert "did you mean" not in message
    assert "`help`" in message


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_an_empty_message_is_refused(text: str) -> None:
    assert "command" in error_of(text)


def test_parsed_options_cannot_be_changed() -> None:
    parsed = parse("img2img a cat steps=30")
    with pytest.raises(TypeError):
        parsed.options["steps"] = 5  # type: ignore[index]  # the write mypy refuses, tried


def test_parsed_commands_compare_and_hash_by_value() -> None:
    first, second = parse("img2img a cat steps=30"), parse("IMG2IMG a cat Steps=30")
    assert first == second
    assert len({first, second}) == 1
    assert first != parse("img2img a cat steps=31")


# --- options -------------------------------------------------------------------------------


def test_options_are_typed_and_under_canonical_names() -> None:
    parsed = parse(
        "inpaint a crown Steps=30 MASK-BLUR=8 cfg=7.5 invert=yes size=512x768 fill=LATENT_NOISE"
    )
    assert dict(parsed.options) == {
        "prompt": "a crown",
        "steps": 30,
        "mask_blur": 8,
        "cfg": 7.5,
        "invert": True,
        "size": Size(512, 768),
        "fill": "latent-noise",
    }


def test_free_text_is_every_other_word_joined_by_single_spaces() -> None:
    parsed = parse("img2img  a   red strength=0.5  castle\n at   dusk")
    assert parsed.options["prompt"] == "a red castle at dusk"
    assert parsed.options["strength"] == 0.5


def test_a_quoted_prompt_keeps_its_spacing() -> None:
    assert parse('img2img "a  cat"').options["prompt"] == "a  cat"


def test_an_option_value_is_split_at_the_first_equals_sign() -> None:
    parsed = parse('img2img prompt="a=b" negative=x=y')
    assert parsed.options["prompt"] == "a=b"
    assert parsed.options["negative"] == "x=y"


def test_a_quoted_or_escaped_equals_sign_is_text() -> None:
    assert parse('img2img "E=mc2" poster').options["prompt"] == "E=mc2 poster"
    assert parse(r"img2img E\=mc2").options["prompt"] == "E=mc2"


@pytest.mark.parametrize("word", ["1girl=2", "=5", "-x=1", "_a=1", "+b=2", "é=1"])
def test_a_word_whose_name_does_not_start_with_a_letter_is_text(word: str) -> None:
    assert parse(f"img2img {word}").options["prompt"] == word


def test_an_empty_value_is_an_empty_text_option() -> None:
    assert parse('img2img negative=""').options["negative"] == ""
    assert parse("img2img negative=").options["negative"] == ""


def test_an_unknown_option_suggests_the_closest_of_that_command() -> None:
    message = error_of("img2img a cat strenght=0.6")
    assert message.startswith("unknown option `strenght` for img2img")
    assert "did you mean `strength`" in message


def test_an_unknown_option_without_a_close_one_says_how_to_quote_an_equals_sign() -> None:
    message = error_of("img2img e=mc2")
    assert "unknown option `e`" in message
    assert "help img2img" in message
    assert '"e=mc2"' in message


def test_suggestions_leave_out_options_the_caller_cannot_use() -> None:
    # `input` is reply-only, so it is no suggestion outside a reply.
    assert "`input`" not in error_of("img2img inptu=result")


def test_an_option_of_other_commands_names_them() -> None:
    message = error_of("img2img a cat mask_blur=8")
    assert "`mask_blur` is not an option of `img2img`" in message
    assert "`inpaint`, `inpaint-sketch` and `inpaint-upload`" in message


def test_an_option_of_one_other_command_names_it() -> None:
    message = error_of("img2img method=clip")
    assert "only `interrogate` takes it" in message


@pytest.mark.parametrize(
    "text",
    ["img2img steps=20 steps=30", "inpaint mask_blur=2 Mask-Blur=3", "jobs all=yes ALL=no"],
)
def test_a_repeated_option_is_refused(text: str) -> None:
    assert "given twice" in error_of(text)


def test_free_text_fills_the_job_id() -> None:
    assert parse("job K3X9").options == {"id": "k3x9"}
    assert parse("cancel k3x9q2m7ab").options == {"id": "k3x9q2m7ab"}
    assert parse("job id=k3x9").options == {"id": "k3x9"}


def test_free_text_fills_the_help_command() -> None:
    assert parse("help inpaint").options == {"command": "inpaint"}


def test_a_command_without_free_text_refuses_text() -> None:
    message = error_of("endpoints please")
    assert message.startswith("`endpoints` takes no text")
    assert "please" in message
    message = error_of("jobs failed ones")
    assert message.startswith("`jobs` takes no text")
    assert "`status`" in message


def test_text_and_the_option_it_fills_are_not_both_allowed() -> None:
    assert "not both" in error_of("img2img a cat prompt=dog")
    assert "not both" in error_of("job k3x9 id=abcd")


def test_local_paths_only_work_in_the_console() -> None:
    message = error_of("img2img a cat image=cat.png")
    assert "`image=` paths only work in the console; attach the image instead" in message
    assert "`mask=`" in error_of("inpaint-upload a wall mask=m.png")
    parsed = parse("inpaint-sketch a scarf image=a.png sketch=b.png", console=True)
    assert parsed.options["image"] == "a.png"
    assert parsed.options["sketch"] == "b.png"


def test_reply_only_options_are_refused_in_a_command() -> None:
    assert "reply" in error_of("img2img a cat input=result")


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("steps", "1", 1),
        ("steps", "150", 150),
        ("steps", "+20", 20),
        ("steps", "020", 20),
        ("seed", "-1", -1),
        ("seed", "4294967295", 2**32 - 1),
        ("mask_blur", "0", 0),
        ("width", "2048", 2048),
    ],
)
def test_int_values(name: str, raw: str, expected: int) -> None:
    result = value(name, raw)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("steps", "500", "`steps` must be between 1 and 150 (default 20), got 500"),
        ("steps", "0", "`steps` must be between 1 and 150 (default 20), got 0"),
        ("seed", "-2", "between -1 and 4294967295 (default -1), got -2"),
        ("seed", "4294967296", "got 4294967296"),
        ("width", "4096", "`width` must be between 64 and 2048, got 4096"),
        ("steps", "9" * 5000, "must be between 1 and 150"),
    ],
)
def test_int_values_out_of_range(name: str, raw: str, message: str) -> None:
    assert message in value_error(name, raw)


@pytest.mark.parametrize("raw", ["1.5", "abc", "", " ", "1e3", "٣", "1_000", "0x10", "--1"])
def test_int_values_that_are_not_whole_numbers(raw: str) -> None:
    assert "`steps" in value_error("steps", raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0", 0.0), ("1", 1.0), (".5", 0.5), ("0.", 0.0), ("5e-1", 0.5), ("+0.25", 0.25)],
)
def test_float_values(raw: str, expected: float) -> None:
    result = value("strength", raw)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "0x1", "1_0", "½", ""])
def test_float_values_must_be_finite_numbers(raw: str) -> None:
    assert "`strength" in value_error("strength", raw)


@pytest.mark.parametrize("raw", ["1.5", "-0.1", "1e999"])
def test_float_values_out_of_range(raw: str) -> None:
    assert "`strength` must be between 0 and 1 (default 0.75), got" in value_error("strength", raw)


def test_cfg_out_of_range_names_its_default() -> None:
    assert "between 1 and 30 (default 7), got 31" in value_error("cfg", "31")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True), ("YES", True), ("On", True), ("1", True),
        ("false", False), ("No", False), ("OFF", False), ("0", False),
    ],
)  # fmt: skip
def test_bool_values(raw: str, expected: bool) -> None:
    assert value("invert", raw) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "t", ""])
def test_bool_values_refused(raw: str) -> None:
    assert "true or false" in value_error("invert", raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M Karras"),
        ("dpm++_2m_karras", "DPM++ 2M Karras"),
        ("DPM++-2M-KARRAS", "DPM++ 2M Karras"),
        ("dpm++   2m\tkarras", "DPM++ 2M Karras"),
        ("euler_a", "Euler a"),
        ("EULER", "Euler"),
        ("dpm++_2s_a_karras", "DPM++ 2S a Karras"),
    ],
)
def test_sampler_spellings(raw: str, expected: str) -> None:
    assert value("sampler", raw) == expected


def test_sampler_in_a_command() -> None:
    assert parse("img2img sampler=dpm++_2m_karras").options["sampler"] == "DPM++ 2M Karras"
    quoted = parse('img2img sampler="euler a"')
    assert quoted.options["sampler"] == "Euler a"


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("resize", "JUST_RESIZE", "just-resize"),
        ("resize", "just resize", "just-resize"),
        ("fill", "Latent-Nothing", "latent-nothing"),
        ("area", "MASKED", "masked"),
        ("method", "DeepBooru", "deepbooru"),
        ("status", "InProgress", "inprogress"),
    ],
)
def test_choice_values_ignore_case(name: str, raw: str, expected: str) -> None:
    assert value(name, raw) == expected


def test_an_unknown_choice_suggests_the_closest() -> None:
    message = value_error("sampler", "eulr a")
    assert "unknown sampler `eulr a`" in message
    assert "`Euler a`" in message
    assert "lists all 31" in message


def test_an_unknown_choice_of_a_short_list_lists_them_all() -> None:
    message = value_error("fill", "blur")
    assert "`fill`, `original`, `latent-noise` or `latent-nothing`" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("512x768", Size(512, 768)),
        ("512×768", Size(512, 768)),
        ("512X768", Size(512, 768)),
        ("64x2048", Size(64, 2048)),
        ("2048x64", Size(2048, 64)),
    ],
)
def test_size_values(raw: str, expected: Size) -> None:
    assert value("size", raw) == expected


@pytest.mark.parametrize(
    "raw", ["56x512", "512x2056", "100x100", "512", "512x", "x512", "axb", "512x512x512", "-64x64"]
)
def test_size_values_refused(raw: str) -> None:
    message = value_error("size", raw)
    assert "WxH" in message
    assert "multiple of 8" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T14:30", datetime(2026, 11, 1, 14, 30, tzinfo=UTC)),
        ("2026-11-01 14:30:15", datetime(2026, 11, 1, 14, 30, 15, tzinfo=UTC)),
        ("2026-11-01T14:30Z", datetime(2026, 11, 1, 14, 30, tzinfo=UTC)),
        ("2026-11-01T14:30+02:00", datetime(2026, 11, 1, 12, 30, tzinfo=UTC)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("2H", NOW - timedelta(hours=2)),
        ("3d", NOW - timedelta(days=3)),
        ("1w", NOW - timedelta(weeks=1)),
        ("0m", NOW),
    ],
)
def test_time_values(raw: str, expected: datetime) -> None:
    result = value("since", raw)
    assert result == expected
    assert isinstance(result, datetime)
    assert result.tzinfo == UTC


def test_relative_times_default_to_the_current_time() -> None:
    before = datetime.now(UTC)
    result = convert_option(OPTIONS["since"], "1h")
    after = datetime.now(UTC)
    assert isinstance(result, datetime)
    assert before - timedelta(hours=1) <= result <= after - timedelta(hours=1)


def test_a_naive_now_is_taken_as_utc() -> None:
    naive = datetime(2026, 11, 25, 12, 0)
    result = convert_option(OPTIONS["until"], "1d", now=naive)
    assert result == datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_an_aware_now_in_another_zone_gives_utc() -> None:
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))
    result = convert_option(OPTIONS["since"], "1h", now=tokyo)
    assert result == NOW - timedelta(hours=1)
    assert isinstance(result, datetime)
    assert result.tzinfo == UTC


@pytest.mark.parametrize(
    "raw", ["yesterday", "2026-13-01", "2026-11-31", "5y", "h", "2026/11/01", "999999999w", ""]
)
def test_time_values_refused(raw: str) -> None:
    assert "`since" in value_error("since", raw)


def test_times_in_a_command() -> None:
    parsed = parse("jobs status=failed since=3d until=1h", now=NOW)
    assert parsed.options["since"] == NOW - timedelta(days=3)
    assert parsed.options["until"] == NOW - timedelta(hours=1)


def test_path_values() -> None:
    assert value("image", "~/pics/cat one.png") == "~/pics/cat one.png"
    assert "needs a path" in value_error("image", "")


@pytest.mark.parametrize(
    ("raw", "expected"), [("k3x9", "k3x9"), ("K3X9Q2M7AB", "k3x9q2m7ab"), ("abcd", "abcd")]
)
def test_job_id_values(raw: str, expected: str) -> None:
    assert value("id", raw) == expected


@pytest.mark.parametrize("raw", ["abc", "k3x9q2m7abc", "k3-x9", "k3x9!", "ééééé", ""])
def test_job_id_values_refused(raw: str) -> None:
    assert "`id" in value_error("id", raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("result", 1), ("result:1", 1), ("Result:2", 2), ("RESULT:8", 8), ("3", 3)],
)
def test_result_values(raw: str, expected: int) -> None:
    assert value("input", raw) == expected


@pytest.mark.parametrize("raw", ["result:0", "result:9", "res", "result:", "result:x", "0", "9"])
def test_result_values_refused(raw: str) -> None:
    assert "`result` or `result:N`" in value_error("input", raw)


@pytest.mark.parametrize("name", ["prompt", "negative"])
def test_prompts_are_capped(name: str) -> None:
    assert value(name, "a" * PROMPT_CAP) == "a" * PROMPT_CAP
    message = value_error(name, "a" * (PROMPT_CAP + 1))
    assert f"the limit is {PROMPT_CAP}" in message


def test_a_prompt_from_free_text_is_capped_too() -> None:
    assert "limit is 2000" in error_of("img2img " + "word " * 500)


def test_other_text_values_are_names() -> None:
    assert value("model", "sd_xl_base_1.0.safetensors") == "sd_xl_base_1.0.safetensors"
    assert "needs a value" in value_error("model", "")
    assert f"the limit is {NAME_CAP}" in value_error("model", "m" * (NAME_CAP + 1))


def test_text_values_are_kept_as_written() -> None:
    assert value("negative", "  Blurry, LOW quality ") == "  Blurry, LOW quality "


# --- checks across options -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["img2img size=512x512 width=512", "img2img height=512 size=512x512"]
)
def test_size_and_width_or_height_are_not_both_allowed(text: str) -> None:
    assert "not both" in error_of(text)


def test_width_and_height_must_be_multiples_of_8() -> None:
    assert "`width` must be a multiple of 8, got 1001 (try 1000 or 1008)" in error_of(
        "img2img width=1001"
    )
    assert "`height` must be a multiple of 8" in error_of("img2img height=65")
    assert parse("img2img width=1024 height=64").options == {"width": 1024, "height": 64}


def test_since_must_be_before_until() -> None:
    assert "before `until`" in error_of("jobs since=1h until=2h")


# --- build (Discord) -----------------------------------------------------------------------


def test_build_reads_discord_values() -> None:
    parsed = build(
        "inpaint",
        {
            "prompt": "a crown",
            "strength": 0.6,
            "steps": 30,
            "cfg": 7,
            "sampler": "euler_a",
            "size": "512x768",
            "invert": True,
            "mask_blur": None,
            "seed": None,
        },
    )
    assert parsed.name == "inpaint"
    assert dict(parsed.options) == {
        "prompt": "a crown",
        "strength": 0.6,
        "steps": 30,
        "cfg": 7.0,
        "sampler": "Euler a",
        "size": Size(512, 768),
        "invert": True,
    }
    assert type(parsed.options["cfg"]) is float


def test_build_agrees_with_parse() -> None:
    text = parse("img2img a cat steps=30 strength=0.5 sampler=euler seed=42", now=NOW)
    discord = build(
        "img2img",
        {"prompt": "a cat", "steps": 30, "strength": 0.5, "sampler": "Euler", "seed": 42},
        now=NOW,
    )
    assert text == discord


def test_build_reads_strings_as_text_does() -> None:
    parsed = build("jobs", {"since": "2h", "all": "yes", "status": "FAILED"}, now=NOW)
    assert dict(parsed.options) == {
        "since": NOW - timedelta(hours=2),
        "all": True,
        "status": "failed",
    }


def test_build_checks_ranges_with_the_same_message() -> None:
    with pytest.raises(GrammarError, match=r"between 1 and 150 \(default 20\), got 500"):
        build("img2img", {"steps": 500})
    with pytest.raises(GrammarError, match=r"between 0 and 1 \(default 0.75\), got 2"):
        build("img2img", {"strength": 2})
    with pytest.raises(GrammarError, match="`strength`"):
        build("img2img", {"strength": float("nan")})


@pytest.mark.parametrize(
    ("name", "given"), [("steps", True), ("steps", 2.5), ("invert", 1), ("strength", [0.5])]
)
def test_build_refuses_values_of_the_wrong_type(name: str, given: object) -> None:
    with pytest.raises(GrammarError, match=f"`{name}`"):
        build("inpaint", {name: given})


def test_build_refuses_what_parse_refuses() -> None:
    with pytest.raises(GrammarError, match="did you mean `img2img`"):
        build("imgtoimg", {})
    with pytest.raises(GrammarError, match="did you mean `strength`"):
        build("img2img", {"strenght": 0.5})
    with pytest.raises(GrammarError, match="only work in the console"):
        build("img2img", {"image": "a.png"})
    with pytest.raises(GrammarError, match="reply"):
        build("img2img", {"input": "result"})
    with pytest.raises(GrammarError, match="not both"):
        build("img2img", {"size": "512x512", "width": 512})
    with pytest.raises(GrammarError, match="multiple of 8"):
        build("img2img", {"width": 100})
    with pytest.raises(GrammarError, match="given twice"):
        build("inpaint", {"mask_blur": 2, "mask-blur": 3})


def test_build_allows_paths_in_the_console() -> None:
    assert build("img2img", {"image": "a.png"}, console=True).options == {"image": "a.png"}


# --- replies (SPEC §3.2) -------------------------------------------------------------------


def test_a_reply_of_only_options_overrides_them() -> None:
    reply = parse_reply("steps=30 CFG=5", "img2img")
    assert dict(reply.options) == {"steps": 30, "cfg": 5.0}
    assert (reply.prompt, reply.append, reply.again) == (None, None, False)


def test_a_reply_of_free_text_replaces_the_prompt() -> None:
    reply = parse_reply("a  dog in  the rain strength=0.4", "inpaint")
    assert reply.prompt == "a dog in the rain"
    assert reply.append is None
    assert dict(reply.options) == {"strength": 0.4}


@pytest.mark.parametrize(
    ("text", "appended"),
    [("+ golden hour", "golden hour"), ("+golden hour", "golden hour"), ('"+ x, y"', "x, y")],
)
def test_a_reply_starting_with_plus_appends_to_the_prompt(text: str, appended: str) -> None:
    reply = parse_reply(text, "img2img")
    assert reply.append == appended
    assert reply.prompt is None


def test_a_lone_plus_is_refused() -> None:
    with pytest.raises(GrammarError, match=r"after `\+`"):
        parse_reply("+ steps=30", "img2img")


@pytest.mark.parametrize(
    ("text", "prompt", "append", "options"),
    [
        ("again", None, None, {}),
        ("AGAIN", None, None, {}),
        ("again steps=40", None, None, {"steps": 40}),
        ("a dog again", "a dog", None, {}),
        ("again + at night", None, "at night", {}),
        ("+ at night again", None, "at night", {}),
    ],
)
def test_again_asks_for_a_new_seed(
    text: str, prompt: str | None, append: str | None, options: dict[str, object]
) -> None:
    reply = parse_reply(text, "img2img")
    assert reply.again is True
    assert (reply.prompt, reply.append, dict(reply.options)) == (prompt, append, options)


def test_quoted_again_is_text() -> None:
    reply = parse_reply('"again"', "img2img")
    assert reply.again is False
    assert reply.prompt == "again"


def test_again_inside_a_word_is_text() -> None:
    reply = parse_reply("against the wind", "img2img")
    assert reply.again is False
    assert reply.prompt == "against the wind"


def test_again_and_seed_contradict() -> None:
    with pytest.raises(GrammarError, match="again"):
        parse_reply("again seed=5", "img2img")


@pytest.mark.parametrize(("text", "index"), [("input=result", 1), ("input=result:2", 2)])
def test_a_reply_may_use_a_result_as_the_input(text: str, index: int) -> None:
    assert parse_reply(text, "inpaint").options == {"input": index}


def test_a_reply_that_does_not_parse_is_a_parse_error() -> None:
    with pytest.raises(GrammarError, match="did you mean `strength`"):
        parse_reply("strenght=0.4", "img2img")
    with pytest.raises(GrammarError, match="between 1 and 150"):
        parse_reply("steps=0", "img2img")
    with pytest.raises(GrammarError, match="unclosed quote"):
        parse_reply('"a dog', "img2img")


def test_a_reply_may_not_give_the_prompt_twice() -> None:
    with pytest.raises(GrammarError, match="not both"):
        parse_reply("a dog prompt=cat", "img2img")
    assert parse_reply("prompt='a cat'", "img2img").options == {"prompt": "a cat"}


def test_an_empty_reply_changes_nothing() -> None:
    reply = parse_reply("   ", "img2img")
    assert reply.options == {}
    assert (reply.prompt, reply.append, reply.again) == (None, None, False)


def test_a_reply_checks_paths_and_combinations_like_a_command() -> None:
    with pytest.raises(GrammarError, match="only work in the console"):
        parse_reply("image=a.png", "img2img")
    assert parse_reply("image=a.png", "img2img", console=True).options == {"image": "a.png"}
    with pytest.raises(GrammarError, match="not both"):
        parse_reply("size=512x512 width=512", "img2img")


def test_a_reply_to_interrogate_takes_options_only() -> None:
    assert parse_reply("method=deepbooru", "interrogate").options == {"method": "deepbooru"}
    with pytest.raises(GrammarError, match="`interrogate` takes no text"):
        parse_reply("a caption please", "interrogate")


def test_a_reply_to_a_command_that_makes_no_job_is_refused() -> None:
    with pytest.raises(GrammarError, match="`jobs`"):
        parse_reply("steps=3", "jobs")
    with pytest.raises(GrammarError, match="unknown command"):
        parse_reply("steps=3", "nosuchcommand")


def test_reply_options_are_immutable() -> None:
    reply = parse_reply("steps=30", "img2img")
    with pytest.raises(TypeError):
        reply.options["steps"] = 5  # type: ignore[index]  # the write mypy refuses, tried


# --- did you mean --------------------------------------------------------------------------


def test_closest_finds_typos_and_prefixes() -> None:
    assert closest("imgtoimg", COMMANDS)[0] == "img2img"
    assert closest("strenght", OPTIONS)[0] == "strength"
    assert "strength" in closest("str", ["prompt", "strength", "steps"])
    assert closest("mask-blur", ["mask_blur", "padding"]) == ["mask_blur"]
    assert closest("dpm 2m", SAMPLERS)[0] == "DPM++ 2M"


def test_closest_finds_nothing_for_junk() -> None:
    assert closest("qqqqzzzz", COMMANDS) == []
    assert closest("x" * 10_000, COMMANDS) == []
    assert closest("anything", []) == []


def test_closest_returns_at_most_the_limit() -> None:
    assert len(closest("DPM", SAMPLERS)) <= 3
    assert len(closest("DPM", SAMPLERS, limit=5)) <= 5
