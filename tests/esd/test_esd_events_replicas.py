"""Completion events with several replicas on one store (issue 16).

Two bots, each with its own replica id, its own `PostgresJobStore` on one schema and its own
consumer, built by the composition root (`adapters.cli.make_app`) as `sdbot run` builds them,
against the ESD-compatible server and moto in server mode. Every replica consumes the events
queue; here the one subscribed to ESD's topics is read only by replica b, while replica a (the
one that accepts, and so drives, the job) reads a queue of its own that nothing is sent to: so
every event of a's job is taken by the replica that does not drive it, which is what happens to
about (N-1)/N of them with N replicas on one queue. The backstop scan is an hour away, so a
result posted at all was delivered through the event handed over, not by a scan.

The races around it run on backends sharing one SQLite store's `SharedReads` (the port, not the
engine, is what they exercise): an event handed over before the job's start is answered, and
one handed over to a replica that died before a replica taking its job over follows it.
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
from bot.store import SqliteJobStore
from cloud.esd import EsdBackend
from cloud.esd_server import running_server
from tests.esd.esd_kit import KEY, esd_config, params, server_config, state_of, target
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


class _Leases:
    """Leader leases nobody else holds (the list scan is not what these tests look at)."""

    async def lead(self, name: str, owner: str, ttl: float) -> int | None:
        return 1

    async def resign(self, name: str, owner: str) -> None:
        return None


@contextlib.asynccontextmanager
async def _backend(
    name: str, esd: str, store: SqliteJobStore, queue: str
) -> AsyncIterator[tuple[EsdBackend, list[str]]]:
    backend = EsdBackend(
        esd_config(esd, events_queue_url=queue, events_wait=1, events_backstop=3600.0)
    )
    nudged: list[str] = []
    backend.notify_changes(nudged.append)
    backend.share_scans(store, _Leases(), name)
    async with backend:
        events = backend.events
        assert events is not None
        await until(lambda: events.healthy, f"{name}'s consumer answers")
        yield backend, nudged


async def test_an_event_handed_over_while_the_job_is_being_started_waits_for_it(
    moto_url: str,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    subscribed = wire(moto_url)  # read by b only
    own = subscribed.sqs.create_queue(QueueName=f"sdbot-a-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    async with (
        SqliteJobStore(tmp_path / "shared.sqlite3") as store,
        running_server(server_config()) as esd,
        _backend("a", esd, store, own) as (a, nudged),
        _backend("b", esd, store, subscribed.queue_url),
    ):

        async def created(backend_id: str) -> None:
            # A loaded bot: b takes the job's event and hands it over before a has the
            # answer to the start.
            subscribed.publish(notification(backend_id))
            await until(lambda: backend_id in a._book._early, "a has the event handed over")

        job = (await a.submit("job1", params(), png(), None, created=created)).backend_id
        await state_of(esd).finish(job)  # ESD's row says so a little after the event
        await until(lambda: job in nudged, "a handled it once it followed the job")
        answer = await a.statuses([target(job)])
        assert answer[job].state is JobState.SUCCEED
        assert subscribed.waiting() == 0


async def test_a_replica_taking_over_a_job_finds_the_event_handed_over_before(
    moto_url: str,  # noqa: F811 - fixture
    tmp_path: Path,
) -> None:
    subscribed = wire(moto_url)  # read by b only
    own = subscribed.sqs.create_queue(QueueName=f"sdbot-a-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    async with (
        SqliteJobStore(tmp_path / "shared.sqlite3") as store,
        running_server(server_config()) as esd,
        _backend("b", esd, store, subscribed.queue_url),
    ):
        async with _backend("a", esd, store, own) as (a, _):
            # More jobs than are read one by one: they wait for the backstop scan.
            jobs = [(await a.submit(f"job{n}", params(), png(), None)).backend_id for n in "xyz"]
        # a is gone, its asks still in the store; its jobs end and b hands the events over.
        for job in jobs:
            await state_of(esd).finish(job)
            subscribed.publish(notification(job))
        await until(lambda: subscribed.waiting() == 0, "b handed them over and deleted them")
        async with _backend("c", esd, store, own) as (c, nudged):
            targets = [target(job) for job in jobs]
            assert await c.statuses(targets) == {}  # taken over: followed from now
            await until(lambda: set(nudged) == set(jobs), "c found the events handed to a")
            answer = await c.statuses(targets)
            assert {status.state for status in answer.values()} == {JobState.SUCCEED}
            assert len(answer) == len(jobs)
