"""Completion events with several replicas on one PostgreSQL store (issue 16).

Two bots, each with its own replica id, its own `PostgresJobStore` on one schema and its own
consumer, built by the composition root (`adapters.cli.make_app`) as `sdbot run` builds them,
against the ESD-compatible server and moto in server mode. Every replica consumes the events
queue; here the one subscribed to ESD's topics is read only by replica b, while replica a (the
one that accepts, and so drives, the job) reads a queue of its own that nothing is sent to: so
every event of a's job is taken by the replica that does not drive it, which is what happens to
about (N-1)/N of them with N replicas on one queue. The backstop scan is an hour away, so a
result posted at all was delivered through the event handed over, not by a scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import TYPE_CHECKING

from pg_kit import fresh_schema
from scenario_kit import RecordingAdapter, RecordingResponder, chat_caller, fast_config, png

from adapters.cli import make_app
from bot.model import JobState
from cloud.esd_server import running_server
from tests.esd.esd_kit import KEY, server_config, state_of
from tests.esd.test_esd_events import (
    aws_env,  # noqa: F401 - fixture
    moto_url,  # noqa: F401 - fixture
    notification,
    until,
    wire,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType

    from bot.app import BotApp


@contextlib.asynccontextmanager
async def _replica(
    name: str, tmp_path: Path, esd: str, database: str, queue: str
) -> AsyncIterator[tuple[BotApp, RecordingAdapter]]:
    settings = fast_config(
        tmp_path / name,
        backend="esd",
        esd_api_url=esd,
        esd_api_key=KEY,
        esd_events_queue_url=queue,
        esd_events_backstop=3600.0,
        database_url=database,
        replica_id=name,
    )
    app = make_app(settings)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        yield app, adapter


def _waiting(sqs: SQSClient, queue: str) -> int:
    names: list[QueueAttributeNameType] = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
    ]
    values = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=names)["Attributes"]
    return sum(int(values[name]) for name in names)


def _results(adapter: RecordingAdapter) -> list[str]:
    return [post.payload.job_id for post in adapter.posts if post.kind == "result"]


async def test_an_event_taken_by_the_replica_not_driving_the_job_is_delivered_once(
    moto_url: str,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    subscribed = wire(moto_url)  # ESD's topics → this queue, read by replica b
    own = subscribed.sqs.create_queue(QueueName=f"sdbot-a-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    config = server_config(events_queue_url=subscribed.queue_url, events_lag=0.05)
    async with (
        fresh_schema() as database,
        running_server(config) as esd,
        _replica("a", tmp_path, esd, database, own) as (app_a, adapter_a),
        _replica("b", tmp_path, esd, database, subscribed.queue_url) as (app_b, adapter_b),
    ):
        for app in (app_a, app_b):
            events = app.backend.events  # type: ignore[attr-defined]
            await until(lambda events=events: events.healthy, "both consumers answer")
        responder = RecordingResponder()
        await app_a.dispatcher.handle_text(
            chat_caller("u1"),
            "img2img a red fox size=64x64",
            [adapter_a.attach("a.png", png())],
            responder,
        )
        [job_id] = responder.accepted_ids
        started: dict[str, str] = {}

        async def backend_id() -> None:
            job = await app_a.store.get(job_id)
            if job is not None and job.backend_id and job.state is JobState.INPROGRESS:
                started["id"] = job.backend_id

        for _ in range(400):
            await backend_id()
            if started:
                break
            await asyncio.sleep(0.025)
        esd_job = started["id"]
        state = state_of(esd)
        await state.finish(esd_job)  # the server sends the success event to b's queue
        # A duplicate, and another user's job (the topics carry the whole ESD stack's).
        subscribed.publish(notification(esd_job))
        subscribed.publish(notification("someone-elses-webui-job"))
        await until(lambda: _results(adapter_a) == [job_id], "a posted the result", 1200)
        await until(lambda: subscribed.waiting() == 0, "b deleted every message", 1200)
        # A late duplicate reaching the driving replica itself: harmless too.
        own_body = json.dumps(notification(esd_job))
        subscribed.sqs.send_message(QueueUrl=own, MessageBody=own_body)
        await until(lambda: _waiting(subscribed.sqs, own) == 0, "a deleted it", 1200)
        job = await app_b.store.get(job_id)
        assert job is not None and job.state is JobState.SUCCEED
        # Delivered by the replica driving it, once; through the event, not a list scan.
        assert _results(adapter_a) == [job_id] and _results(adapter_b) == []
        assert state.requests["list_inferences"] == 0
