"""Every way into sdbot on Slack, through the real Bolt app: `/sd`, mentions (as `message`
and `app_mention`, de-duplicated), direct messages, message shortcuts, the img2img modal,
`file_shared`, Slack's retries, signatures and the allow-lists."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import png

from bot.model import JobState
from commands.options import GenerateOptions

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bot.model import Endpoint
    from tests.slack.conftest import MakeRig, Message, SlackRig

TEAM = "T1"
ADMIN = "UADMIN"
SIGNING_SECRET = "test-signing-secret"


# -- /sd --------------------------------------------------------------------------------------


async def test_slash_queries_are_answered_in_the_ack(any_rig: SlackRig) -> None:
    rig = any_rig
    helped = await rig.slash("help inpaint")
    assert helped.body["response_type"] == "ephemeral"
    assert "inpaint" in helped.body["text"] and "mask" in helped.body["text"]
    empty = await rig.slash("")  # `/sd` alone is `help`
    assert "img2img" in empty.body["text"]
    endpoints = await rig.slash("endpoints")
    assert endpoints.body["response_type"] == "in_channel"
    assert "local-preview" in endpoints.body["text"]
    listing = await rig.slash("jobs")
    assert listing.body == {"text": "no jobs match", "response_type": "ephemeral"}


async def test_slash_models_settings_and_cancel(make_rig: MakeRig) -> None:
    async with make_rig("http", local_delay=30.0) as rig:
        models = await rig.slash("models")
        assert (
            models.body["response_type"] == "in_channel" and "sdbot-preview" in models.body["text"]
        )
        changed = await rig.slash("settings concurrency=3", user=ADMIN)
        assert changed.body == {
            "text": "settings for this channel: concurrency = 3",
            "response_type": "ephemeral",
        }
        refused = await rig.slash("settings model=x", user="U1")
        assert refused.body["response_type"] == "ephemeral" and "admin" in refused.body["text"]
        await rig.post("<@UBOT> img2img slow", files=[rig.fake.add_file("a.png", png())])
        await rig.adapter.wait_idle()
        [job] = await rig.jobs()
        cancelled = await rig.slash(f"cancel {job.id}")
        assert f"job `{job.id}` cancelled" in cancelled.body["text"]
        await rig.settle()
        [job] = await rig.jobs()
        assert job.state is JobState.CANCELLED


async def test_slash_grammar_errors_and_missing_files_are_ephemeral(any_rig: SlackRig) -> None:
    rig = any_rig
    typo = await rig.slash("img2img a cat strenght=0.5")
    assert typo.body["response_type"] == "ephemeral"
    assert "did you mean `strength`" in typo.body["text"]
    no_file = await rig.slash("img2img a watercolor cat")
    assert no_file.body["response_type"] == "ephemeral"
    assert "attach the file(s) to a message that mentions the bot" in no_file.body["text"]
    path = await rig.slash("img2img x image=/etc/passwd")
    assert "only work in the console" in path.body["text"]
    assert await rig.jobs() == []
    assert not rig.fake.bot_messages()


async def test_slash_acks_after_its_budget_and_answers_through_response_url(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_rig("http", adapter_options={"ack_budget": 0.05}) as rig:
        release = asyncio.Event()
        real = rig.app.backend.endpoints

        async def slow_endpoints() -> Sequence[Endpoint]:
            await release.wait()
            return await real()

        monkeypatch.setattr(rig.app.backend, "endpoints", slow_endpoints)
        answer = await rig.slash("endpoints")
        # Acknowledged (empty) although the backend has not answered yet.
        assert answer.status == 200 and answer.body == {}
        assert rig.fake.responses == []
        release.set()
        await rig.settle()
        [late] = rig.fake.responses
        assert late["response_type"] == "in_channel" and "local-preview" in late["text"]


async def test_slash_text_is_unescaped_and_replies_are_escaped(rig: SlackRig) -> None:
    # Slack sends the user's `<` `>` `&` as HTML escapes; the grammar sees them undone, and the
    # bot escapes them again, so nothing a user types can become a mention or a ping.
    answer = await rig.slash("jobs type=&lt;!channel&gt;")
    assert "<!channel>" not in answer.body["text"]
    assert "&lt;!channel&gt;" in answer.body["text"]


# -- mentions and messages ----------------------------------------------------------------------


async def test_a_mention_with_an_image_becomes_one_job(any_rig: SlackRig) -> None:
    rig = any_rig
    image = rig.fake.add_file("cat.png", png())
    await rig.post(
        "<@UBOT> img2img a &lt;small&gt; cat", files=[image], events=("message", "app_mention")
    )
    await rig.settle()
    [job] = await rig.jobs()
    assert job.state is JobState.SUCCEED
    assert job.caller.user == "U1" and job.caller.server == TEAM
    assert job.options == GenerateOptions(prompt="a <small> cat")
    # The bot token went to the file host, and only there.
    path = image["url_private"].removeprefix(rig.fake.base)
    assert rig.fake.file_requests == [(path, "Bearer xoxb-test-bot-token")]


async def test_app_mention_first_without_files_waits_for_its_message_twin(
    make_rig: MakeRig,
) -> None:
    for mode in ("http", "socket"):
        # A long grace: the wait must end when the twin arrives, not when the grace runs out.
        async with make_rig(mode, adapter_options={"mention_grace": 60.0}) as rig:
            image = rig.fake.add_file("cat.png", png())
            await rig.post(
                "<@UBOT> img2img a cat",
                files=[image],
                events=("app_mention", "app_mention", "message"),
                mention_files=False,
            )
            await rig.settle()
            [job] = await rig.jobs()
            assert job.state is JobState.SUCCEED, job.error
            assert not rig.fake.called("conversations.history")


async def test_app_mention_alone_reads_its_files_back(rig: SlackRig) -> None:
    image = rig.fake.add_file("cat.png", png())
    await rig.post(
        "<@UBOT> img2img a cat", files=[image], events=("app_mention",), mention_files=False
    )
    await rig.settle()
    [job] = await rig.jobs()
    assert job.state is JobState.SUCCEED, job.error
    assert rig.fake.called("conversations.history")


async def test_a_direct_message_needs_no_mention_and_chatter_is_ignored(rig: SlackRig) -> None:
    image = rig.fake.add_file("cat.png", png())
    await rig.post("img2img a cat", files=[image], channel="D1", channel_type="im")
    await rig.post("what a nice cat", files=[rig.fake.add_file("b.png", png())])
    await rig.post("img2img but no mention")
    await rig.settle()
    [job] = await rig.jobs()
    assert job.caller.conversation.channel == "D1"
    assert rig.fake.ephemerals == []


async def test_a_bad_mention_is_answered_privately_in_its_thread(rig: SlackRig) -> None:
    message = await rig.post("<@UBOT> imgtoimg a cat")
    await rig.settle()
    [private] = rig.fake.ephemerals
    assert private["user"] == "U1" and private["thread_ts"] == message.ts
    assert "did you mean `img2img`" in private["text"]
    assert await rig.jobs() == []


async def test_a_mention_query_is_answered_in_a_thread(rig: SlackRig) -> None:
    message = await rig.post("<@UBOT> endpoints")
    await rig.settle()
    [answer] = rig.fake.bot_messages()
    assert answer.thread_ts == message.ts and "local-preview" in answer.text


async def test_retried_events_never_make_a_second_job(any_rig: SlackRig) -> None:
    rig = any_rig
    image = rig.fake.add_file("cat.png", png())
    message = await rig.post("<@UBOT> img2img a cat", files=[image])
    event = {
        "type": "message",
        "subtype": "file_share",
        "channel": "C1",
        "channel_type": "channel",
        "user": "U1",
        "text": message.text,
        "ts": message.ts,
        "files": [image],
    }
    for attempt in (1, 2, 3):
        answer = await rig.send_event(event, retry=attempt, event_id="EvSame")
        assert answer.status == 200
    await rig.settle()
    assert len(await rig.jobs()) == 1


async def test_file_shared_is_acknowledged_without_work(any_rig: SlackRig) -> None:
    rig = any_rig
    answer = await rig.send_event(
        {
            "type": "file_shared",
            "file_id": "F1",
            "user_id": "U1",
            "channel_id": "C1",
            "file": {"id": "F1"},
        }
    )
    assert answer.status == 200
    await rig.settle()
    assert await rig.jobs() == [] and rig.fake.bot_messages() == []


async def test_a_message_the_bot_edits_or_another_bot_writes_is_ignored(rig: SlackRig) -> None:
    await rig.send_event(
        {
            "type": "message",
            "subtype": "message_changed",
            "channel": "C1",
            "ts": "1.1",
            "message": {"text": "<@UBOT> help", "user": "U1"},
        }
    )
    await rig.send_event(
        {
            "type": "message",
            "subtype": "bot_message",
            "bot_id": "B2",
            "channel": "C1",
            "text": "<@UBOT> help",
            "ts": "1.2",
        }
    )
    await rig.settle()
    assert rig.fake.bot_messages() == [] and rig.fake.ephemerals == []


# -- HTTP mode security -----------------------------------------------------------------------


async def test_requests_with_a_bad_or_stale_signature_are_refused(rig: SlackRig) -> None:
    image = rig.fake.add_file("cat.png", png())
    body = json.dumps(
        {
            "team_id": TEAM,
            "type": "event_callback",
            "event_id": "EvForged",
            "event": {
                "type": "message",
                "subtype": "file_share",
                "channel": "C1",
                "user": "U1",
                "text": "<@UBOT> img2img x",
                "ts": "1.5",
                "files": [image],
            },
        }
    )
    forged = await rig.signed(body, "application/json", secret="not-the-secret")
    assert forged.status == 401
    stale_stamp = str(int(time.time()) - 600)
    from slack_sdk.signature import SignatureVerifier

    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(
        timestamp=stale_stamp, body=body
    )
    assert signature is not None
    stale = await rig._post(
        body,
        "application/json",
        {"X-Slack-Request-Timestamp": stale_stamp, "X-Slack-Signature": signature},
    )
    assert stale.status == 401
    unsigned = await rig._post(body, "application/json", {})
    assert unsigned.status == 401
    await rig.settle()
    assert await rig.jobs() == [] and rig.fake.file_requests == []


async def test_url_verification_is_answered(rig: SlackRig) -> None:
    answer = await rig.signed(
        json.dumps({"type": "url_verification", "challenge": "c-123", "token": "x"}),
        "application/json",
    )
    assert answer.status == 200 and answer.body == {"challenge": "c-123"}


# -- shortcuts and the img2img modal --------------------------------------------------------


async def test_interrogate_shortcut_answers_in_the_messages_thread(any_rig: SlackRig) -> None:
    rig = any_rig
    image = rig.fake.add_file("photo.png", png())
    target = await rig.post("look at this", files=[image], user="U2")
    answer = await rig.shortcut("sdbot_interrogate", target)
    assert answer.status == 200
    await rig.settle()
    [job] = await rig.jobs()
    assert job.command == "interrogate" and job.state is JobState.SUCCEED
    assert job.caller.user == "U1" and job.thread is not None
    assert job.thread.thread == target.ts
    [result] = rig.results_in("C1", target.ts)
    assert job.caption and job.caption.split()[0] in result.text
    assert result.action_ids() == [f"sdbot:prompt:{job.id}", f"sdbot:delete:{job.id}"]


async def test_shortcut_payload_without_files_reads_the_message(rig: SlackRig) -> None:
    image = rig.fake.add_file("photo.png", png())
    target = await rig.post("look", files=[image])
    await rig.shortcut("sdbot_interrogate", target, include_files=False)
    await rig.settle()
    [job] = await rig.jobs()
    assert job.state is JobState.SUCCEED
    assert rig.fake.called("conversations.history")


async def test_shortcut_on_a_message_without_an_image_is_refused_privately(
    rig: SlackRig,
) -> None:
    target = await rig.post("just words")
    await rig.shortcut("sdbot_interrogate", target)
    await rig.shortcut("sdbot_img2img", target)
    await rig.settle()
    assert [e["text"] for e in rig.fake.ephemerals] == [
        "that message has no image file to interrogate",
        "that message has no image file to start from",
    ]
    assert rig.fake.views == [] and await rig.jobs() == []


async def test_img2img_shortcut_opens_a_modal_whose_submission_runs_a_job(
    any_rig: SlackRig,
) -> None:
    rig = any_rig
    image = rig.fake.add_file("photo.png", png())
    target = await rig.post("my photo", files=[image])
    await rig.shortcut("sdbot_img2img", target)
    await rig.settle()
    [view] = rig.fake.views
    assert view["callback_id"] == "sdbot_img2img"
    answer = await rig.submit(
        view,
        {
            "prompt": "a watercolor",
            "negative": "blurry",
            "strength": "0.4",
            "options": 'steps=5 seed=7 sampler="Euler a"',
        },
    )
    assert answer.status == 200 and answer.body == {}
    await rig.settle()
    [job] = await rig.jobs()
    assert job.state is JobState.SUCCEED, job.error
    assert job.params is not None
    assert (job.params.prompt, job.params.negative, job.params.strength) == (
        "a watercolor",
        "blurry",
        0.4,
    )
    assert (job.params.steps, job.params.seed, job.params.sampler) == (5, 7, "Euler a")
    assert job.thread is not None and job.thread.thread == target.ts
    assert rig.uploads_in("C1", target.ts)


async def test_img2img_modal_errors_are_shown_in_the_modal(rig: SlackRig) -> None:
    target = await rig.post("my photo", files=[rig.fake.add_file("p.png", png())])
    await rig.shortcut("sdbot_img2img", target)
    await rig.settle()
    [view] = rig.fake.views
    answer = await rig.submit(view, {"strength": "7", "options": "stepz=5"})
    assert answer.body["response_action"] == "errors"
    errors = answer.body["errors"]
    assert set(errors) == {"strength", "options"}
    assert "between 0 and 1" in errors["strength"]
    assert "did you mean `steps`" in errors["options"]
    loose = await rig.submit(view, {"options": "steps=5 oops"})
    assert loose.body["errors"] == {"options": "options are `key=value` words; `oops` is not one"}
    await rig.settle()
    assert await rig.jobs() == []


# -- allow-lists ------------------------------------------------------------------------------


async def test_workspace_and_channel_allow_lists(make_rig: MakeRig) -> None:
    # The core's policy decides; the adapter hands it the workspace, channel and admin flag.
    async with make_rig("http", allowed_channels=("C9",)) as rig:
        image = rig.fake.add_file("cat.png", png())
        await rig.post("<@UBOT> img2img a cat", files=[image])
        refused = await rig.slash("help")
        assert refused.body["text"] == "this bot is not enabled in this channel"
        assert "img2img" in (await rig.slash("help", user=ADMIN)).body["text"]
        await rig.post("<@UBOT> img2img a cat", files=[image], channel="C9")
        await rig.settle()
        [job] = await rig.jobs()
        assert job.caller.conversation.channel == "C9"
        [private] = rig.fake.ephemerals
        assert private["channel"] == "C1" and "not enabled in this channel" in private["text"]
    async with make_rig("http", allowed_servers=("T9",)) as rig:
        await rig.post("<@UBOT> help")
        await rig.settle()
        assert rig.fake.bot_messages() == []
        assert "not enabled in this server / workspace" in rig.fake.ephemerals[0]["text"]


async def test_admins_are_the_configured_user_ids(rig: SlackRig) -> None:
    image = rig.fake.add_file("cat.png", png())
    await rig.post("<@UBOT> img2img mine", files=[image])
    await rig.settle()
    as_admin = await rig.slash("jobs", user=ADMIN)
    as_other = await rig.slash("jobs", user="U2")
    [job] = await rig.jobs()
    assert job.id in as_admin.body["text"]
    assert as_other.body["text"] == "no jobs match"


async def test_a_retry_that_arrives_after_a_restart_makes_no_second_job(make_rig: MakeRig) -> None:
    async with make_rig("http") as rig:
        image = rig.fake.add_file("cat.png", png())
        message = await rig.post("<@UBOT> img2img a cat", files=[image])
        await rig.settle()
        assert len(await rig.jobs()) == 1
        # The adapter restarts (its in-memory memory of events is gone) and Slack retries.
        await rig.adapter.aclose()
        from adapters.cli import slack_core
        from adapters.slack import SlackAdapter

        fresh = SlackAdapter(slack_core(rig.app), rig.slack, http_host="127.0.0.1", http_port=0)
        rig.app._adapters[fresh.platform] = fresh
        rig.adapter = fresh
        await fresh.start()
        event = {
            "type": "message",
            "subtype": "file_share",
            "channel": "C1",
            "channel_type": "channel",
            "user": "U1",
            "text": message.text,
            "ts": message.ts,
            "files": [image],
        }
        answer = await rig.send_event(event, retry=2, event_id="EvLate")
        assert answer.status == 200
        await rig.settle()
        assert len(await rig.jobs()) == 1


def _event(message: Message, image: dict[str, object]) -> dict[str, object]:
    return {
        "type": "message",
        "subtype": "file_share",
        "channel": message.channel,
        "channel_type": "channel",
        "user": message.user,
        "text": message.text,
        "ts": message.ts,
        "files": [image],
    }


async def test_an_event_is_acknowledged_only_once_its_job_is_written(
    any_rig: SlackRig,
) -> None:
    # Slack retries only events not acknowledged: one acknowledged before its job's row was
    # committed is lost with a replica stopped in between (SPEC §3 step 1).
    rig = any_rig
    image = rig.fake.add_file("cat.png", png())
    message = rig.fake.user_message("<@UBOT> img2img a cat", files=[image])
    answer = await rig.send_event(_event(message, image))
    assert answer.status == 200
    [job] = await rig.jobs()  # committed before the ack, not after
    await rig.settle()
    assert (await rig.app.store.get(job.id)) is not None


async def test_a_retry_makes_the_job_a_replica_stopped_before_writing(rig: SlackRig) -> None:
    # Another replica claimed each message and stopped before writing its job: Slack's retry
    # of the first makes its job; the second's twin (an event that is not a retry) leaves it.
    image = rig.fake.add_file("cat.png", png())
    retried = rig.fake.user_message("<@UBOT> img2img a cat", files=[image])
    twinned = rig.fake.user_message("<@UBOT> img2img a dog", channel="C2", files=[image])
    for message in (retried, twinned):
        assert await rig.app.store.claim(f"slack:T1:{message.channel}:{message.ts}")
    assert (await rig.send_event(_event(retried, image), retry=1)).status == 200
    assert (await rig.send_event(_event(twinned, image))).status == 200
    await rig.settle()
    [job] = await rig.jobs()
    assert job.caller.conversation.channel == "C1"
    # (A retry reaching a replica that does not remember the message makes no second job:
    # test_a_retry_that_arrives_after_a_restart_makes_no_second_job.)


async def test_a_message_whose_job_is_not_written_in_time_is_answered_503_for_a_retry(
    make_rig: MakeRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An event answered 200 is never sent again: one whose job's row is not committed within
    # the ack budget is answered 503, so Slack retries it (and the job's claim makes one job).
    async with make_rig("http", adapter_options={"ack_budget": 0.05}) as rig:
        release = asyncio.Event()
        real = rig.app.store.insert

        async def slow_insert(*args: Any, **kwargs: Any) -> None:
            await release.wait()
            await real(*args, **kwargs)

        monkeypatch.setattr(rig.app.store, "insert", slow_insert)
        image = rig.fake.add_file("cat.png", png())
        message = rig.fake.user_message("<@UBOT> img2img a cat", files=[image])
        assert (await rig.send_event(_event(message, image))).status == 503
        # Slack's retry reaches this replica again: it is answered as the first handling goes,
        # still 503 while the job is not written, and 200 once it is (one job).
        assert (await rig.send_event(_event(message, image), retry=1)).status == 503
        release.set()
        await rig.settle()
        assert (await rig.send_event(_event(message, image), retry=2)).status == 200
        assert len(await rig.jobs()) == 1
