"""Slash commands through discord.py's own parser against the loopback fake of Discord.

Covers every command with attachments, validation before the defer, the order defer → thread →
status edits → result files, file splitting, 429s and transient errors on upload, a job that
outlives its interaction token, queries, autocomplete, DMs, threads, download rules, and the
pending-delivery path after a restart.
"""

from __future__ import annotations

import io
import random
from dataclasses import replace
from datetime import timedelta
from typing import Any

import discord
import pytest
from PIL import Image
from scenario_kit import mask_png, png, sketch_of, transparent_png

from adapters.discord import DiscordLimits
from bot.errors import ImageInputError
from bot.model import AttachmentRef, Conversation, Delivery, JobState
from bot.retry import RetryPolicy
from bot.views import ResultImage, ResultView


def _files(message: dict[str, Any]) -> list[str]:
    return [a["filename"] for a in message["attachments"]]


def _buttons(message: dict[str, Any]) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


@pytest.mark.parametrize(
    ("command", "files", "slots"),
    [
        ("img2img", {"image": png()}, {"image"}),
        ("sketch", {"image": png()}, {"image"}),
        ("inpaint", {"image": png(), "mask": mask_png()}, {"image", "mask"}),
        ("inpaint", {"image": transparent_png()}, {"image"}),
        ("inpaint-sketch", {"image": png(), "sketch": sketch_of(png())}, {"image", "sketch"}),
        ("inpaint-upload", {"image": png(), "mask": mask_png()}, {"image", "mask"}),
        ("interrogate", {"image": png()}, {"image"}),
    ],
)
async def test_each_image_command_runs_with_its_attachments(
    bot: Any, command: str, files: dict[str, bytes], slots: set[str]
) -> None:
    options = {} if command == "interrogate" else {"prompt": "a red fox"}
    token = bot.slash(command, options, files)
    first = await bot.answered(token)
    assert first.json == {"type": 5, "data": {"flags": bot.ephemeral}}
    [job] = await bot.jobs()
    assert (job.command, job.state, job.delivery) == (command, JobState.SUCCEED, Delivery.DONE)
    inputs = {i.slot: i.data for i in await bot.app.store.images(job.id) if i.slot != "result"}
    assert set(inputs) == slots
    assert all(inputs[slot] == files[slot] for slot in slots)  # downloaded bytes kept as sent
    assert job.thread == Conversation(str(bot.channel), job.status_message)
    [result] = bot.results(job.thread.thread)
    if command == "interrogate":
        assert result["content"].startswith(f"job `{job.id}` · caption")
        assert result["embeds"][0]["description"] == job.caption
        assert _buttons(result) == [f"sdbot:prompt:{job.id}", f"sdbot:delete:{job.id}"]
    else:
        assert result["content"] == f"job `{job.id}` · result"
        assert _files(result) == [f"{job.id}-1.png"]
        assert result["embeds"][0]["description"] == "a red fox"


async def test_order_is_defer_thread_status_edits_then_result_files(bot: Any) -> None:
    token = bot.slash("img2img", {"prompt": "a cat", "negative": "blur"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    thread = job.thread.thread
    status_path = f"/channels/{bot.channel}/messages/{job.status_message}"
    steps = []
    for request in bot.fake.requests:
        if request.path.endswith(f"/{token}/callback"):
            steps.append("defer")
        elif request.method == "POST" and request.path.endswith(
            f"/channels/{bot.channel}/messages"
        ):
            steps.append("status")
        elif request.path.endswith(f"{status_path}/threads"):
            steps.append("thread")
        elif request.method == "PATCH" and request.path.endswith(status_path):
            steps.append("edit")
        elif request.method == "POST" and request.path.endswith(f"/channels/{thread}/messages"):
            steps.append("result")
    assert steps[:3] == ["defer", "status", "thread"]
    assert steps[-1] == "result" and steps.count("result") == 1
    edits = steps[3:-1]
    assert edits and set(edits) == {"edit"} and len(edits) <= 6  # state changes, not polls
    # Everything about the job went out with the bot token, never the interaction token.
    job_posts = [r for r in bot.fake.requests if "/channels/" in r.path]
    assert job_posts and all(r.bot_auth for r in job_posts)
    status = bot.fake.messages[job.status_message]
    assert f"`{job.id}`" in status["content"] and "succeed" in status["content"]
    assert status["components"] == []  # the Cancel button goes once the job is over
    [pointer] = bot.fake.answers_to(token)
    assert pointer["content"] == f"job `{job.id}` accepted — follow it in <#{thread}>"
    [result] = bot.results(thread)
    embed = result["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert embed["description"] == "a cat" and fields["Negative"] == "blur"
    assert "Steps: 20" in fields["Parameters"] and f"`{job.id}`" == fields["Job"]
    assert fields["Endpoint"] == "`local-preview`" and "Duration" in fields
    assert _buttons(result) == [
        f"sdbot:reroll:{job.id}",
        f"sdbot:edit:{job.id}",
        f"sdbot:input:{job.id}",
        f"sdbot:delete:{job.id}",
    ]
    assert bot.fake.thread_of(job.status_message)["name"] == f"img2img · {job.id}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 100}, "multiple of 8"),
        ({"size": "big"}, "`size` must be WxH"),
        ({"size": "512x512", "width": 512}, "either `size=WxH` or `width=`"),
        ({"sampler": "Eulr a"}, "did you mean `Euler a`"),
    ],
)
async def test_an_invalid_option_is_answered_ephemerally_at_once(
    bot: Any, options: dict[str, Any], message: str
) -> None:
    token = bot.slash("img2img", options, {"image": png()})
    first = await bot.answered(token)
    assert first.json["type"] == 4 and first.json["data"]["flags"] == bot.ephemeral
    assert message in first.json["data"]["content"]
    assert await bot.jobs() == []
    assert bot.fake.in_channel(bot.channel) == []


async def test_refusals_before_the_defer_are_ephemeral(bot: Any) -> None:
    cloud = bot.slash("jobs", {"source": "cloud"})
    first = await bot.answered(cloud)
    assert first.json["type"] == 4 and first.json["data"]["flags"] == bot.ephemeral
    assert "only admins" in first.json["data"]["content"]
    await bot.stop()
    await bot.start(max_bytes=1000)
    too_big = bot.slash("img2img", {}, {"image": png(200, 200)})
    first = await bot.answered(too_big)
    assert first.json["data"]["flags"] == bot.ephemeral
    assert "image.png is" in first.json["data"]["content"]
    assert await bot.jobs() == []


async def test_results_split_by_file_count(harness: Any) -> None:
    harness.limits = DiscordLimits(max_files=2)
    bot = await harness.start()
    token = bot.slash("img2img", {"prompt": "four", "count": 4}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    first, second = bot.results(job.thread.thread)
    assert first["content"] == f"job `{job.id}` · result (1/2)"
    assert second["content"] == f"job `{job.id}` · result (2/2)"
    assert _files(first) + _files(second) == [f"{job.id}-{n}.png" for n in range(1, 5)]
    assert first["embeds"] and not second["embeds"]
    assert first["components"] == [] and len(_buttons(second)) == 7  # 4 × Use as input
    assert list(job.result_messages) == [first["id"], second["id"]]
    # Images over the server's per-file limit: test_discord_platform.py.


def _noise(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def test_results_split_by_bytes_per_message(harness: Any) -> None:
    images = [ResultImage(f"abcdefghij-{n}.png", _noise(48, 48, n)) for n in range(1, 5)]
    biggest = max(len(i.data) for i in images)
    harness.limits = DiscordLimits(max_message_bytes=2 * biggest + 10, message_overhead=0)
    bot = await harness.start()
    view = ResultView("abcdefghij", "img2img", JobState.SUCCEED, "text", images=tuple(images))
    thread = Conversation(str(bot.channel), "5555")
    posted = await bot.adapter.post_result(thread, view)
    messages = [bot.fake.messages[m] for m in posted]
    assert len(messages) >= 2
    assert [name for m in messages for name in _files(m)] == [i.name for i in images]
    for message in messages:
        assert sum(a["size"] for a in message["attachments"]) <= 2 * biggest + 10
        assert message["channel_id"] == "5555"


async def test_a_429_on_the_file_upload_is_waited_out_and_retried(bot: Any) -> None:
    bot.fake.rate_limit("POST", r"/channels/\d+/messages$", with_files=True)
    token = bot.slash("img2img", {"prompt": "x"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    uploads = bot.fake.calls("POST", rf"/channels/{job.thread.thread}/messages$")
    assert [u.status for u in uploads] == [429, 200]
    assert uploads[0].files == uploads[1].files  # the same file, sent again
    assert len(bot.results(job.thread.thread)) == 1 and job.delivery is Delivery.DONE


async def test_a_status_post_lost_after_discord_made_it_is_not_posted_twice(
    bot: Any, fast_discord_retries: None
) -> None:
    # Every try of the status post is made by Discord, then answered 500 (discord.py gives up
    # after five); the job runs on, and delivery opens its thread again.
    bot.fake.fail("POST", rf"/channels/{bot.channel}/messages$", 500, times=5, after=True)
    token = bot.slash("img2img", {"prompt": "x"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    statuses = [m for m in bot.fake.in_channel(bot.channel) if f"`{job.id}`" in m["content"]]
    assert len(statuses) == 1
    assert job.thread is not None and job.thread.thread == statuses[0]["id"]
    assert len(bot.results(job.thread.thread)) == 1 and job.delivery is Delivery.DONE


async def test_a_failed_upload_is_taken_back_and_posted_again_whole(harness: Any) -> None:
    harness.limits = DiscordLimits(max_files=1)
    bot = await harness.start()
    # The second message of the first attempt fails with a 503 (discord.py does not retry it).
    bot.fake.fail("POST", r"/channels/\d+/messages$", 503, with_files=True, skip=1)
    token = bot.slash("img2img", {"prompt": "two", "count": 2}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    thread = job.thread.thread
    uploads = bot.fake.calls("POST", rf"/channels/{thread}/messages$")
    assert [u.status for u in uploads] == [200, 503, 200, 200]
    deleted = bot.fake.calls("DELETE", rf"/channels/{thread}/messages/\d+$")
    assert len(deleted) == 1  # the lone first part of the failed attempt
    first, second = bot.results(thread)
    assert job.delivery is Delivery.DONE and job.result_messages == (first["id"], second["id"])
    assert _files(first) + _files(second) == [f"{job.id}-1.png", f"{job.id}-2.png"]


async def test_a_job_that_outlives_its_interaction_token_still_delivers(
    bot: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot.backend.gate.clear()  # hold the job in flight
    token = bot.slash("img2img", {"prompt": "slow"}, {"image": png()})
    await bot.fake.wait_for(lambda: any(r.method == "PATCH" for r in bot.fake.calls(None, token)))
    # Fifteen minutes pass: Discord forgets the token, and discord.py knows it expired.
    later = discord.utils.utcnow() + timedelta(minutes=16)
    monkeypatch.setattr(discord.utils, "utcnow", lambda: later)
    bot.fake.expire_all = True
    expired_at = len(bot.fake.requests)
    bot.backend.gate.set()
    await bot.settle()
    [job] = await bot.jobs()
    assert job.state is JobState.SUCCEED and job.delivery is Delivery.DONE
    after = bot.fake.requests[expired_at:]
    assert not [r for r in after if token in r.path]
    [result] = bot.results(job.thread.thread)
    posts = [r for r in after if r.path.endswith(f"/channels/{job.thread.thread}/messages")]
    assert result and posts and all(r.bot_auth for r in posts)


async def test_a_result_left_pending_by_a_crash_is_posted_once_after_restart(bot: Any) -> None:
    token = bot.slash("img2img", {"prompt": "x"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    [posted] = bot.results(job.thread.thread)
    # Crash while posting, after the message went out: the restart finds the marker.
    await bot.app.store.save(replace(job, delivery=Delivery.POSTING, result_messages=()))
    await bot.restart()
    await bot.settle()
    job = await bot.app.store.get(job.id)
    assert job.delivery is Delivery.DONE and job.result_messages == (posted["id"],)
    assert len(bot.results(job.thread.thread)) == 1
    # Crash before anything was posted: the restart posts it, once.
    del bot.fake.messages[posted["id"]]
    await bot.app.store.save(replace(job, delivery=Delivery.POSTING, result_messages=()))
    await bot.restart()
    await bot.settle()
    job = await bot.app.store.get(job.id)
    [again] = bot.results(job.thread.thread)
    assert job.delivery is Delivery.DONE and job.result_messages == (again["id"],)


async def test_queries(bot: Any) -> None:
    token = bot.slash("img2img", {"prompt": "x"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    answers = {}
    tokens = {}
    for name, options in [
        ("help", {}),
        ("endpoints", {}),
        ("models", {}),
        ("jobs", {}),
        ("job", {"id": job.id[:5]}),
        ("cancel", {"id": job.id}),
        ("settings", {}),
    ]:
        tokens[name] = bot.slash(name, options)
        answers[name] = await bot.answered(tokens[name])

    def content(name: str) -> str:
        return str(answers[name].json["data"]["content"])

    def private(name: str) -> bool:
        return bool(answers[name].json["data"].get("flags", 0) & bot.ephemeral)

    assert "img2img" in content("help") and private("help")
    assert "local-preview" in content("endpoints") and "InService" in content("endpoints")
    assert "sdbot-preview" in content("models")
    assert job.id in content("jobs") and private("jobs")
    # `/job` has images: deferred (publicly) first, the answer with its files follows.
    assert answers["job"].json["type"] == 5 and "data" not in answers["job"].json
    [shown] = bot.fake.answers_to(tokens["job"])
    assert job.id in shown["content"] and not shown["flags"] & bot.ephemeral
    assert [a["filename"] for a in shown["attachments"]] == [f"{job.id}-1.png"]
    assert "already finished (succeed)" in content("cancel") and private("cancel")
    assert answers["settings"].json["type"] == 4 and content("settings")


async def test_autocomplete_for_model_sampler_and_endpoint(bot: Any) -> None:
    def choices(token_answer: Any) -> list[str]:
        assert token_answer.json["type"] == 8
        return [c["value"] for c in token_answer.json["data"]["choices"]]

    model = await bot.answered(bot.autocomplete("img2img", "model", "prev"))
    assert choices(model) == ["sdbot-preview.safetensors"]
    sampler = await bot.answered(bot.autocomplete("img2img", "sampler", "euler"))
    assert choices(sampler)[:2] == ["Euler a", "Euler"]
    everything = await bot.answered(bot.autocomplete("inpaint", "sampler", ""))
    assert len(choices(everything)) == 25
    endpoint = await bot.answered(bot.autocomplete("interrogate", "endpoint", ""))
    assert choices(endpoint) == ["local-preview"]
    assert endpoint.json["data"]["choices"][0]["name"] == "local-preview (InService, Async)"


async def test_a_job_in_a_dm_stays_in_the_dm(bot: Any) -> None:
    token = bot.slash("img2img", {"prompt": "dm"}, {"image": png()}, guild=None, channel=8000)
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.caller.server == f"dm:{bot.alice.id}" and not job.caller.is_admin
    assert job.thread == Conversation("8000")
    assert bot.fake.channels == {}  # no thread in a DM
    assert len(bot.results("8000")) == 1
    assert bot.fake.answers_to(token)[0]["content"].endswith("its status is below")


async def test_a_job_started_in_a_thread_runs_in_that_thread(bot: Any) -> None:
    token = bot.slash("img2img", {"prompt": "t"}, {"image": png()}, thread="6000")
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.thread == Conversation(str(bot.channel), "6000")
    assert bot.fake.messages[job.status_message]["channel_id"] == "6000"
    assert len(bot.results("6000")) == 1 and bot.fake.channels == {}
    edits = bot.fake.calls("PATCH", rf"/channels/6000/messages/{job.status_message}$")
    assert edits


async def test_attachments_only_come_from_discords_cdn(bot: Any) -> None:
    wire = [
        {"name": "image", "type": 11, "value": "77"},
        {"name": "prompt", "type": 3, "value": "x"},
    ]
    resolved = {
        "77": {
            "id": "77",
            "filename": "evil.png",
            "size": 100,
            "url": "https://evil.example/evil.png?token=1",
            "proxy_url": "https://evil.example/evil.png",
            "content_type": "image/png",
        }
    }
    data = {
        "id": "1",
        "name": "img2img",
        "type": 1,
        "options": wire,
        "resolved": {"attachments": resolved},
    }
    token = bot.interaction(2, data)
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.state is JobState.FAILED and "not on Discord's file servers" in job.error
    [result] = bot.results(job.thread.thread)
    assert result["content"] == f"job `{job.id}` · failed"
    assert not [r for r in bot.fake.requests if "evil" in r.path]


async def test_download_size_cap_is_enforced_while_reading(bot: Any) -> None:
    upload = bot.fake.upload("big.png", b"x" * 5000)
    ref = AttachmentRef("big.png", upload["url"], None)  # size unknown up front
    with pytest.raises(ImageInputError, match=r"big\.png is over"):
        await bot.adapter.download(ref, 1000)
    assert await bot.adapter.download(ref, 5000) == b"x" * 5000


async def test_a_thread_refused_by_a_server_error_is_tried_again(
    harness: Any, fast_discord_retries: None
) -> None:
    # Discord answers 500 to more tries than discord.py makes (five): the adapter's own retry
    # goes on, and the job still gets its thread (the fault run met this at random).
    harness.adapter_options = {"retry": RetryPolicy(attempts=3, scale=0.001)}
    bot = await harness.start()
    bot.fake.fail("POST", r"/threads$", 500, times=7)
    token = bot.slash("img2img", {"prompt": "x"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.thread is not None and job.thread.thread == job.status_message
    assert len(bot.results(job.thread.thread)) == 1 and job.delivery is Delivery.DONE


async def test_without_thread_permission_the_job_stays_in_the_channel(bot: Any) -> None:
    bot.fake.fail("POST", r"/threads$", 403, {"message": "Missing Permissions", "code": 50013})
    token = bot.slash("img2img", {"prompt": "here"}, {"image": png()})
    await bot.answered(token)
    [job] = await bot.jobs()
    assert job.thread == Conversation(str(bot.channel)) and job.delivery is Delivery.DONE
    [result] = bot.results(bot.channel)
    assert result["content"] == f"job `{job.id}` · result"
    assert bot.fake.answers_to(token)[0]["content"].endswith("its status is below")
    # In a channel only messages addressed to the bot count: a reply to its result does.
    bot.say("steps=3", channel=bot.channel)
    await bot.settle()
    assert len(await bot.jobs()) == 1
    bot.say("steps=3", channel=bot.channel, reply_to=result)
    await bot.settle()
    made = (await bot.jobs())[-1]
    assert made.parent_id == job.id and made.params.steps == 3


async def test_a_channel_the_bot_cannot_post_in_is_explained(bot: Any) -> None:
    bot.fake.fail("POST", rf"/channels/{bot.channel}/messages$", 403, times=10)
    token = bot.slash("img2img", {"prompt": "x"}, {"image": png()})
    await bot.answered(token)
    [pointer] = bot.fake.answers_to(token)
    assert pointer["content"].startswith("I cannot post in this channel")
    assert pointer["flags"] == bot.ephemeral
    [job] = await bot.jobs()
    assert job.delivery is not Delivery.DONE  # kept; delivered once the bot may post


async def test_jobs_user_filter_accepts_a_mention(bot: Any) -> None:
    await bot.answered(bot.slash("img2img", {"prompt": "x"}, {"image": png()}))
    [job] = await bot.jobs()
    listed = await bot.answered(bot.slash("jobs", {"user": f"<@{bot.alice.id}>"}, user=bot.boss))
    assert job.id in listed.json["data"]["content"]


async def test_long_notices_are_split_into_messages(bot: Any) -> None:
    text = "\n".join(f"line {n} " + "x" * 90 for n in range(60))  # 5940 characters
    first = await bot.adapter.post_text(Conversation(str(bot.channel), "6200"), text)
    posted = sorted(bot.fake.in_channel("6200"), key=lambda m: int(m["id"]))
    assert len(posted) == 3 and posted[0]["id"] == first
    assert all(len(m["content"]) <= 2000 for m in posted)
    assert "\n".join(m["content"] for m in posted) == text


async def test_after_stop_new_requests_are_turned_away_but_posting_works(bot: Any) -> None:
    await bot.answered(bot.slash("img2img", {"prompt": "x"}, {"image": png()}))
    [job] = await bot.jobs()
    await bot.adapter.stop()
    answer = await bot.answered(bot.slash("img2img", {"prompt": "y"}, {"image": png()}))
    assert answer.json["data"]["flags"] == bot.ephemeral
    assert "restarting" in answer.json["data"]["content"]
    clicked = await bot.answered(
        bot.click(bot.fake.messages[job.result_messages[0]], f"sdbot:reroll:{job.id}")
    )
    assert "restarting" in clicked.json["data"]["content"]
    bot.say("steps=3", channel=job.thread.thread)
    await bot.settle()
    assert len(await bot.jobs()) == 1
    notice = await bot.adapter.post_text(job.thread, "still able to post")
    assert bot.fake.messages[notice]["content"] == "still able to post"


async def test_a_status_preview_is_attached_replaced_and_dropped_at_the_end(bot: Any) -> None:
    from bot.views import StatusView

    where = Conversation(str(bot.channel))
    first = StatusView("job1", "img2img", JobState.CREATED, "queued")
    posted = await bot.adapter.open_job_thread(where, first)
    status = bot.fake.messages[posted.message]
    running = replace(first, state=JobState.INPROGRESS, text="running", preview=png(32, 32))
    await bot.adapter.edit_status(posted.thread, posted.message, running)
    assert _files(status) == ["preview.png"]
    await bot.adapter.edit_status(posted.thread, posted.message, replace(running, preview=png()))
    [preview] = status["attachments"]
    assert preview["filename"] == "preview.png" and preview["size"] == len(png())
    done = replace(first, state=JobState.SUCCEED, text="done")
    await bot.adapter.edit_status(posted.thread, posted.message, done)
    assert _files(status) == []


async def test_a_drivers_post_leaves_only_under_its_lease(bot: Any) -> None:
    # As on Slack (tests/transport/test_leased.py): a replica frozen past its lease, whose job
    # another replica took, sends nothing once woken; outside a driver nothing is checked.
    from store_kit import held_lease, make_job

    from bot.leases import NotHeld
    from bot.model import Platform

    ttl = 30.0
    store = bot.app.store
    await store.insert(make_job("j1", platform=Platform("discord")))
    lease = await held_lease(store, "j1", ttl)
    clock, ownership = lease.clock, lease.ownership
    where = Conversation(str(bot.channel), "6300")
    with ownership.posting("j1", lease.fence):
        held = await bot.adapter.post_text(where, "under the lease")
        await store.claim_jobs("b", ttl, 10, [Platform("discord")], own=True)
        clock.at += ttl
        with pytest.raises(NotHeld):
            await bot.adapter.post_text(where, "after a takeover")
    outside = await bot.adapter.post_text(where, "no driver")
    assert [m["id"] for m in bot.fake.in_channel("6300")] == [held, outside]
