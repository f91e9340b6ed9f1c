"""Two gateway sessions on one shard (replicas, or a deploy's old and new process) both receive
every event of that shard (dapi: developers/events/gateway.mdx "Sharding"); the store's claims
on interaction and message ids let exactly one of them act."""

from __future__ import annotations

from typing import Any

from scenario_kit import png

from bot.model import JobState


def _delivered_twice(bot: Any, kind: str) -> None:
    """Make the gateway hand every `kind` event over twice, as a second session would."""
    state = bot.client._connection
    parse = getattr(state, f"parse_{kind}")

    def twice(payload: dict[str, Any]) -> None:
        parse(payload)
        parse(dict(payload))

    setattr(state, f"parse_{kind}", twice)


async def test_an_interaction_both_sessions_receive_makes_one_job(bot: Any) -> None:
    _delivered_twice(bot, "interaction_create")
    token = bot.slash("img2img", {"prompt": "twice"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.state is JobState.SUCCEED
    assert len(bot.fake.callbacks(token)) == 1  # one answer (a second would get 40060)
    assert len(bot.results(job.thread.thread)) == 1


async def test_a_thread_reply_both_sessions_receive_makes_one_job(bot: Any) -> None:
    token = bot.slash("img2img", {"prompt": "base"}, {"image": png()})
    await bot.answered(token)
    [base] = await bot.jobs()
    _delivered_twice(bot, "message_create")
    bot.say("steps=3", channel=base.thread.thread)
    await bot.settle()
    [_, made] = await bot.jobs()
    assert made.parent_id == base.id and made.state is JobState.SUCCEED
    assert len(bot.results(base.thread.thread)) == 2


async def test_a_shard_set_identifies_each_of_its_shards(harness: Any) -> None:
    harness.gateway = True
    harness.message_content = False
    bot = await harness.start(discord_shard_count=4, discord_shard_ids=(1, 3))
    await bot.fake.wait_for(lambda: len([f for f in bot.fake.gateway_frames if f["op"] == 2]) == 2)
    shards = sorted(f["d"]["shard"] for f in bot.fake.gateway_frames if f["op"] == 2)
    assert shards == [[1, 4], [3, 4]]
