"""The rest of the WebUI's img2img panel in the grammar: declarations, checks, help, Discord."""

from __future__ import annotations

import pytest

from adapters.discord.commands import MAX_OPTIONS, slash_options
from commands import COMMANDS, OPTIONS, Family, GrammarError, build, help_text, parse, parse_reply
from commands.spec import ADVANCED, MAX_IMAGES, SCHEDULERS, join_sampler, split_sampler

GENERATE = [c.name for c in COMMANDS.values() if c.family is Family.GENERATE]

# name → (min, max, default) as the WebUI's sliders and settings have them.
RANGES: dict[str, tuple[float, float, object]] = {
    "batch_count": (1, 100, 1),  # Batch count slider
    "scale": (0.05, 4.0, None),  # Resize by → Scale
    "subseed": (-1, 2**32 - 1, -1),
    "subseed_strength": (0.0, 1.0, 0.0),  # Variation strength
    "clip_skip": (1, 12, 1),  # CLIP_stop_at_last_layers
    "image_cfg": (0.0, 3.0, 1.5),  # Image CFG Scale slider
    "noise_multiplier": (0.0, 1.5, 1.0),  # initial_noise_multiplier setting
    "mask_alpha": (0, 100, 0),  # Mask transparency
}


@pytest.mark.parametrize("name", sorted(RANGES))
def test_ranges_are_the_webuis(name: str) -> None:
    option = OPTIONS[name]
    assert (option.min, option.max, option.default) == RANGES[name]
    assert option.min is not None and option.max is not None
    step = 1 if isinstance(option.default, int) or name == "batch_count" else 0.05
    command = "inpaint-sketch"
    top = MAX_IMAGES if name == "batch_count" else option.max  # see the image cap below
    assert parse(f"{command} x {name}={top!r}").options[name] == top
    for outside in (option.max + step, option.min - step):
        written = int(outside) if step == 1 else round(outside, 2)
        with pytest.raises(GrammarError, match=f"`{name}` must be .*between"):
            parse(f"{command} x {name}={written}")


def test_booleans_and_the_scheduler() -> None:
    options = parse("img2img x restore-faces=yes tiling=on scheduler=sgm_uniform").options
    assert (options["restore_faces"], options["tiling"]) == (True, True)
    assert options["scheduler"] == "SGM Uniform"
    with pytest.raises(GrammarError, match="did you mean `Karras`"):
        parse("img2img x scheduler=karas")


def test_every_generate_command_takes_the_panel_and_only_inpaint_sketch_mask_alpha() -> None:
    for name in GENERATE:
        declared = COMMANDS[name].options
        for option in RANGES.keys() - {"mask_alpha"}:
            assert option in declared, (name, option)
        assert ("mask_alpha" in declared) is (name == "inpaint-sketch")
    with pytest.raises(GrammarError, match="only `inpaint-sketch` takes it"):
        parse("inpaint x mask_alpha=10")


def test_count_times_batch_count_is_capped() -> None:
    assert parse("img2img x count=4 batch_count=2").options["batch_count"] == 2
    with pytest.raises(GrammarError, match=f"= 9 images; one job makes at most {MAX_IMAGES}"):
        parse("img2img x batch_count=9")
    with pytest.raises(GrammarError, match="4 × 3 = 12 images"):
        parse("img2img x count=4 batch_count=3")
    # Every image of the largest job can be picked as the next input.
    assert parse_reply(f"input=result:{MAX_IMAGES}", "img2img").options["input"] == MAX_IMAGES


@pytest.mark.parametrize("size", ["size=512x512", "width=512", "height=512"])
def test_scale_is_not_given_with_a_size(size: str) -> None:
    with pytest.raises(GrammarError, match="either `scale=`"):
        parse(f"img2img x scale=2 {size}")


def test_split_sampler_follows_a1111() -> None:
    assert split_sampler("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert split_sampler("DPM++ 2M SDE Heun Exponential") == ("DPM++ 2M SDE Heun", "Exponential")
    assert split_sampler("Euler a") == ("Euler a", None)
    assert split_sampler("DDIM") == ("DDIM", None)  # a sampler, even though a schedule too
    assert split_sampler("Euler a SGMUniform") == ("Euler a", "SGM Uniform")  # A1111's alias
    assert SCHEDULERS[0] == "Automatic"


@pytest.mark.parametrize("scheduler", SCHEDULERS[1:])
def test_a_chosen_schedule_is_named_in_the_sampler_and_read_back(scheduler: str) -> None:
    for sampler in ("Euler a", "DPM++ 2M Karras", "DPM++ 2M SDE Heun Exponential", "DDIM"):
        joined = join_sampler(sampler, scheduler)
        assert split_sampler(joined) == (split_sampler(sampler)[0], scheduler)
    assert join_sampler("DPM++ 2M Karras", "Automatic") == "DPM++ 2M Karras"
    # On A1111 1.8 (ESD's), the legacy names of that form are real samplers.
    assert join_sampler("DPM++ 2M SDE Karras", "Exponential") == "DPM++ 2M SDE Exponential"


def test_advanced_is_read_by_the_same_grammar() -> None:
    parsed = build(
        "inpaint-sketch",
        {"steps": 10, ADVANCED: "clip_skip=2 mask-alpha=40 scheduler='align your steps'"},
    )
    assert dict(parsed.options) == {
        "steps": 10,
        "clip_skip": 2,
        "mask_alpha": 40,
        "scheduler": "Align Your Steps",
    }
    with pytest.raises(GrammarError, match="`steps` is given twice"):
        build("img2img", {"steps": 10, ADVANCED: "steps=20"})
    with pytest.raises(GrammarError, match="takes only `key=value` options"):
        build("img2img", {ADVANCED: "tiling on"})
    with pytest.raises(GrammarError, match="`clip_skip` must be between 1 and 12"):
        build("img2img", {ADVANCED: "clip_skip=13"})


@pytest.mark.parametrize("name", GENERATE)
def test_discord_groups_the_rare_options_within_25(name: str) -> None:
    options = slash_options(COMMANDS[name])
    names = [o.name for o in options]
    assert len(options) <= MAX_OPTIONS
    assert "batch_count" in names and "scale" in names and ADVANCED in names
    for option in ("clip_skip", "tiling", "subseed", "scheduler", "mask_alpha"):
        assert option not in names


def test_help_shows_every_panel_option() -> None:
    text = help_text("inpaint-sketch")
    head, more = text.split("*More options*")
    assert "`batch_count`" in head and "`scale`" in head
    for name in ("subseed", "subseed_strength", "restore_faces", "tiling", "clip_skip"):
        assert f"`{name}`" in more
    for name in ("image_cfg", "noise_multiplier", "scheduler", "mask_alpha"):
        assert f"`{name}`" in more
    assert f"`{ADVANCED}: clip_skip=2 tiling=on`" in more
    assert "`mask_alpha`" not in help_text("inpaint")
