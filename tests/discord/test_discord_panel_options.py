"""The rest of the img2img panel on Discord: direct options and the `advanced` text option."""

from __future__ import annotations

from typing import Any

from scenario_kit import png, sketch_of

from bot.model import JobState


async def test_advanced_options_reach_the_job(bot: Any) -> None:
    original = png()
    token = bot.slash(
        "inpaint-sketch",
        {
            "prompt": "a scarf",
            "batch_count": 2,
            "advanced": "clip_skip=2 mask_alpha=40 subseed=9 subseed_strength=0.5 tiling=on",
        },
        {"image": original, "sketch": sketch_of(original)},
    )
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.state is JobState.SUCCEED
    params = job.params
    assert (params.batch_count, params.clip_skip, params.mask_alpha) == (2, 2, 40)
    assert (params.subseed, params.subseed_strength, params.tiling) == (9, 0.5, True)
    assert job.result_count == 2


async def test_a_bad_advanced_option_is_answered_ephemerally(bot: Any) -> None:
    token = bot.slash("img2img", {"advanced": "clip_skp=2"}, {"image": png()})
    first = await bot.answered(token)
    assert first.json["type"] == 4 and first.json["data"]["flags"] == bot.ephemeral
    assert "did you mean `clip_skip`" in first.json["data"]["content"]
    assert await bot.jobs() == []


async def test_the_largest_job_posts_every_image_with_a_button_each(bot: Any) -> None:
    token = bot.slash("img2img", {"prompt": "x", "count": 4, "batch_count": 2}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.state is JobState.SUCCEED and job.result_count == 8
    messages = bot.results(job.thread.thread)
    files = [a["filename"] for m in messages for a in m["attachments"]]
    assert files == [f"{job.id}-{n}.png" for n in range(1, 9)]
    buttons = [
        c["custom_id"] for m in messages for row in m["components"] for c in row["components"]
    ]
    assert [f"sdbot:input:{job.id}:{n}" for n in range(1, 9)] == [
        b for b in buttons if b.startswith("sdbot:input:")
    ]
