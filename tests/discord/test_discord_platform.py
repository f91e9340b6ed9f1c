"""Discord as it really behaves (issue 12): embed limits, the server's upload limit for bot
posts, slow answers with files, defer visibility, expired attachment links — against a fake
that refuses what Discord refuses (413, 400 "Invalid Form Body", 404 on expired links)."""

from __future__ import annotations

import asyncio
import io
import random
from typing import Any

from PIL import Image
from scenario_kit import png

from adapters.discord.convert import EMBED_TOTAL_CHARS, result_embed
from bot.model import JobState
from bot.retry import RetryPolicy
from bot.views import ResultView
from commands.parse import PROMPT_CAP


def _noise_png(side: int = 1900, seed: int = 3) -> bytes:
    """A PNG over 10 MiB (noise does not compress): more than a server without boosts takes."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _img2img_with(attachment: dict[str, Any]) -> dict[str, Any]:
    """An `/img2img` command payload carrying `attachment` as its image."""
    return {
        "id": "123",
        "name": "img2img",
        "type": 1,
        "options": [{"name": "image", "type": 11, "value": attachment["id"]}],
        "resolved": {"attachments": {attachment["id"]: attachment}},
    }


def _files(message: dict[str, Any]) -> list[str]:
    return [a["filename"] for a in message["attachments"]]


# -- embeds -----------------------------------------------------------------------------------


def test_a_result_embed_keeps_within_every_embed_limit() -> None:
    view = ResultView(
        "abcdefghij",
        "img2img",
        JobState.FAILED,
        "text",
        error="e" * 5000,
        prompt="p" * 4000,
        negative="n" * 2000,
        infotext="Steps: 20, " + "x" * 2000,
        endpoint="ep" * 600,
        duration=12.0,
    )
    embed = result_embed(view)
    assert len(embed) <= EMBED_TOTAL_CHARS
    assert len(embed.description or "") <= 4096 and len(embed.fields) <= 25
    assert all(len(f.value or "") <= 1024 and len(f.name or "") <= 256 for f in embed.fields)
    assert embed.description and embed.description.startswith("failed: eee")


async def test_a_prompt_grown_by_plus_replies_is_capped(bot: Any) -> None:
    token = bot.slash("img2img", {"prompt": "p" * (PROMPT_CAP - 10)}, {"image": png()})
    await bot.answered(token)
    [base] = await bot.jobs()
    said = bot.say("+ " + "q" * 200, channel=base.thread.thread)
    await bot.settle()
    assert [j.id for j in await bot.jobs()] == [base.id]
    [refusal] = [
        m for m in bot.fake.in_channel(base.thread.thread) if "the limit is" in m["content"]
    ]
    assert f"the limit is {PROMPT_CAP}" in refusal["content"]
    assert said["id"]


# -- upload limits ----------------------------------------------------------------------------


async def test_bot_posts_use_the_servers_limit_not_the_users_and_re_encode(bot: Any) -> None:
    big = _noise_png()
    assert len(big) > 10 * 1024 * 1024
    bot.backend.big_results = (big,)
    # A Nitro user's interaction allows 500 MiB; the server (no boosts) takes 10 MiB.
    token = bot.slash("img2img", {"prompt": "big"}, {"image": png()}, size_limit=500 * 1024**2)
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.state is JobState.SUCCEED
    [result] = bot.results(job.thread.thread)
    assert _files(result) == [f"{job.id}-1.webp"]
    assert "re-encoded as WebP (quality 95)" in result["content"]
    assert "10 MiB" in result["content"]
    assert not [r for r in bot.fake.requests if r.status == 413]


async def test_a_413_never_loses_the_result(bot: Any) -> None:
    # The server lost its boosts since the bot last looked: its limit is lower than known.
    bot.fake.guild_upload_limit = 3 * 1024 * 1024
    bot.backend.big_results = (_noise_png(1400),)
    token = bot.slash("img2img", {"prompt": "big"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    [result] = bot.results(job.thread.thread)
    assert result["attachments"] and result["attachments"][0]["size"] <= 3 * 1024 * 1024
    assert [r.status for r in bot.fake.requests if r.status == 413]


# -- slow answers with files, defer visibility ------------------------------------------------


async def test_an_answer_with_files_defers_before_preparing_them(bot: Any) -> None:
    token = bot.slash("img2img", {"prompt": "a cat"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    seen: list[bool] = []
    prepare = bot.adapter.file_batches

    async def slow_files(images: Any, per_file: int) -> Any:
        # By the time files are prepared, Discord must already have its answer (a defer).
        seen.append(bool(bot.fake.callbacks(asked)))
        return await prepare(images, per_file)

    bot.adapter.file_batches = slow_files
    asked = bot.slash("job", {"id": job.id})
    first = await bot.answered(asked)
    assert seen == [True]
    assert first.json["type"] == 5
    assert not (first.json.get("data") or {}).get("flags")  # public, as /job's answer is
    [answer] = bot.fake.answers_to(asked)
    assert answer["attachments"] and job.id in answer["content"]
    assert not answer["flags"] & bot.ephemeral


async def test_a_slow_public_answer_is_deferred_publicly(harness: Any) -> None:
    harness.adapter_options = {"defer_after": 0.01}
    bot = await harness.start()
    gate = asyncio.Event()
    endpoints = bot.backend.endpoints

    async def slow_endpoints() -> Any:
        await gate.wait()
        return await endpoints()

    bot.backend.endpoints = slow_endpoints
    token = bot.slash("endpoints", {})
    await bot.fake.wait_for(lambda: bool(bot.fake.callbacks(token)))
    deferred = bot.fake.callbacks(token)[0]
    gate.set()
    await bot.settle()
    assert deferred.json["type"] == 5
    assert not (deferred.json.get("data") or {}).get("flags")  # the answer is public
    [answer] = bot.fake.answers_to(token)
    assert not answer["flags"] & bot.ephemeral and answer["content"]


async def test_a_private_refusal_after_a_public_defer_stays_private(harness: Any) -> None:
    harness.adapter_options = {"defer_after": 0.01}
    bot = await harness.start()
    gate = asyncio.Event()
    find = bot.app.store.find

    async def slow_find(*args: Any) -> Any:
        await gate.wait()
        return await find(*args)

    bot.app.store.find = slow_find
    token = bot.slash("job", {"id": "zzzz"})
    await bot.fake.wait_for(lambda: bool(bot.fake.callbacks(token)))
    gate.set()
    await bot.settle()
    [answer] = bot.fake.answers_to(token)
    assert answer["flags"] & bot.ephemeral and "zzzz" in answer["content"]


# -- expired attachment links -----------------------------------------------------------------


async def test_an_expired_attachment_link_is_renewed_before_asking_the_user(bot: Any) -> None:
    # The link in the payload expired before the job read it (a job resumed later).
    attachment = bot.fake.upload("image.png", png())
    bot.fake.expire(attachment["url"])
    token = bot.interaction(2, _img2img_with(attachment))
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.state is JobState.SUCCEED, job.error
    assert bot.fake.calls("POST", r"/attachments/refresh-urls")


async def test_an_attachment_that_cannot_be_renewed_asks_for_it_again(bot: Any) -> None:
    bot.fake.refreshable = False
    attachment = bot.fake.upload("image.png", png())
    bot.fake.expire(attachment["url"])
    token = bot.interaction(2, _img2img_with(attachment))
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.state is JobState.FAILED and "attach it again" in (job.error or "")


# -- the fault run ----------------------------------------------------------------------------


async def test_fault_run_every_job_is_delivered_exactly_once(
    harness: Any, fast_discord_retries: None, caplog: Any
) -> None:
    harness.adapter_options = {"retry": RetryPolicy(attempts=12, scale=0.001)}
    harness.overrides["user_concurrency"] = 50
    bot = await harness.start()
    chaos = bot.fake.start_chaos(seed=12, rate=0.35)
    tokens = [
        bot.slash("img2img", {"prompt": f"job {n}", "seed": n}, {"image": png()}) for n in range(30)
    ]
    for token in tokens:
        await bot.fake.wait_for(lambda t=token: bool(bot.fake.callbacks(t)), 30)
    await bot.settle()
    bot.fake.chaos = None
    jobs = await bot.jobs()
    assert len(jobs) == 30
    for job in jobs:
        assert job.state is JobState.SUCCEED, job.error
        assert job.thread is not None and job.thread.thread == job.status_message
        assert len(bot.results(job.thread.thread)) == 1, job.id
        statuses = [m for m in bot.fake.in_channel(bot.channel) if f"`{job.id}`" in m["content"]]
        assert len(statuses) == 1, job.id
    assert set(chaos.injected) == {"429", "500-before", "500-after"}
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]
