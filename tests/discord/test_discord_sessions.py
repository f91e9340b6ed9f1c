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


async def test_a_stopping_replica_leaves_an_interaction_another_one_took(bot: Any) -> None:
    # A deploy: this replica stops while another one on the same shard runs. Both receive the
    # command; the running one claims it first and serves it, so the stopping one must not
    # answer "restarting" too (the user would be told to retry a job that runs, and one of
    # the two answers would fail with 40060).
    await bot.adapter.stop()
    data = bot.fake.slash_data("img2img", {"prompt": "x"}, {"image": png()})
    payload = bot.fake.interaction_payload(2, data)
    assert await bot.app.store.claim(f"discord:interaction:{payload['id']}")  # the other one
    bot.client._connection.parse_interaction_create(payload)
    await bot.settle()
    assert bot.fake.callbacks(payload["token"]) == []


async def test_a_stopping_replica_alone_says_it_is_restarting_and_claims_the_interaction(
    bot: Any,
) -> None:
    await bot.adapter.stop()
    answer = await bot.answered(bot.slash("img2img", {"prompt": "x"}, {"image": png()}))
    assert "restarting" in answer.json["data"]["content"]
    [interaction] = [r for r in bot.fake.requests if r.path.endswith("/callback")]
    interaction_id = interaction.path.split("/")[-3]
    # A replica that starts meanwhile and receives it late does not act on it as well.
    assert not await bot.app.store.claim(f"discord:interaction:{interaction_id}")


async def test_a_stopping_replica_whose_store_is_closed_still_says_it_is_restarting(
    bot: Any,
) -> None:
    # `sdbot run` closes the core before the adapter: commands can still arrive in between.
    await bot.adapter.stop()
    await bot.app.store.aclose()
    answer = await bot.answered(bot.slash("img2img", {"prompt": "x"}, {"image": png()}))
    assert "restarting" in answer.json["data"]["content"]
