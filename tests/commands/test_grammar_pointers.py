"""Issue 10: the grammar points A1111 habits to sdbot's names, never folds `--options` into the
prompt, drops hidden control characters, and refuses LoRA weights that are not numbers."""

from __future__ import annotations

import pytest

from commands import GrammarError, parse, parse_reply


@pytest.mark.parametrize(
    ("given", "pointer"),
    [
        ("denoise=0.3", "sdbot calls it `strength`: write `strength=0.3`"),
        ("denoising_strength=0.3", "sdbot calls it `strength`: write `strength=0.3`"),
        ("cfg_scale=9", "sdbot calls it `cfg`: write `cfg=9`"),
        ("batch_size=2", "sdbot calls it `count`: write `count=2`"),
        ("masked_content=fill", "sdbot calls it `fill`: write `fill=`"),
        ("inpaint_full_res=true", "sdbot calls it `area`: write `area=`"),
    ],
)
def test_a1111_names_point_to_sdbot_names(given: str, pointer: str) -> None:
    with pytest.raises(GrammarError) as caught:
        parse(f"inpaint a hat {given}")
    assert "A1111's name" in str(caught.value) and pointer in str(caught.value)
    with pytest.raises(GrammarError, match="A1111's name"):
        parse_reply(given, "inpaint")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "img2img a cat --steps 30",
            "options are written `key=value`: `steps=30`, not `--steps 30`",
        ),
        ("img2img a cat --steps=30", "`steps=30`, not `--steps=30`"),
        ("img2img a cat --cfg_scale 9", "`cfg=9`, not `--cfg_scale 9`"),
        ("img2img a cat --steps", "`steps=…`, not `--steps`"),
        ("img2img a cat --ar 16:9", "`--ar` is not an option of img2img"),
    ],
)
def test_dashed_options_are_pointed_to_key_value_never_put_in_the_prompt(
    text: str, message: str
) -> None:
    with pytest.raises(GrammarError) as caught:
        parse(text)
    assert message in str(caught.value)


def test_a_quoted_dashed_word_is_prompt_text() -> None:
    assert parse('img2img a cat "--steps" 30').options["prompt"] == "a cat --steps 30"
    assert parse("img2img a cat -- and a dog").options["prompt"] == "a cat -- and a dog"


def test_prompts_lose_nul_and_bidirectional_overrides() -> None:
    parsed = parse('img2img "a\x00 cat\u202e tac\u2066 x\u2069" negative="blur\x07\u202d"')
    assert parsed.options["prompt"] == "a cat tac x"
    assert parsed.options["negative"] == "blur"
    # Ordinary text outside ASCII, tabs and newlines stay.
    assert parse('img2img "größe\tnaïve\nשלום"').options["prompt"] == "größe\tnaïve\nשלום"
    assert parse_reply("a\x00b", "img2img").prompt == "ab"


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf", "1e999", "strong", ""])
def test_lora_weights_must_be_finite_numbers(weight: str) -> None:
    with pytest.raises(GrammarError, match=r"must be a number such as 0\.8"):
        parse(f"img2img a cat <lora:style:{weight}>")
    with pytest.raises(GrammarError, match="must be a number"):
        parse(f"img2img a cat <lora:style:0.5:unet={weight}>")


@pytest.mark.parametrize(
    "tag", ["<lora:style>", "<lora:style:0.8>", "<lora:style:-1>", "<lora:style:1:0.5>",
            "<lora:style:te=0.8:unet=1>", "<hypernet:ink:0.3>", "<lora:style:0.8:lbw=OUTD>"]
)  # fmt: skip
def test_well_formed_network_tags_pass(tag: str) -> None:
    assert parse(f"img2img a cat {tag}").options["prompt"] == f"a cat {tag}"
