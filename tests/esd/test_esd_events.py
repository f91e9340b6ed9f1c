"""Completion events: SageMaker notifications → SNS → SQS (moto in server mode) → the ESD backend.

Topics and subscriptions are set up as docs/esd.md tells operators to: ESD's two standard SNS
topics, one SQS queue subscribed to both (raw delivery unless a test wants SNS's envelope).
The ESD-compatible server plays SageMaker: with `events_queue_url` it sends each Async job's
notification to the queue *before* the job's row says it ended, as a real stack does
(`reference/scale-out.md` §4). Tests publish to the topics themselves where they need a
notification the server would not send (duplicates, unknown ids, out-of-order events).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from scenario_kit import png
from strict_moto import strict

from bot.model import JobState
from cloud.esd import EsdBackend
from cloud.esd.events import (
    Completion,
    CompletionConsumer,
    EventQueue,
    Received,
    event_lag,
    parse_notification,
    settle_delays,
)
from cloud.esd.sagemaker import SageMakerConfig
from cloud.esd_server import running_server
from tests.esd.esd_kit import esd_config, params, server_config, state_of, target

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence
    from pathlib import Path

    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

REGION = "us-east-1"
SUCCESS = "ReceiveSageMakerInferenceSuccess"
ERROR = "ReceiveSageMakerInferenceError"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    strict()  # SQS's batch limit of 10 deletes, which moto alone does not enforce
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@dataclass
class Wiring:
    """One queue subscribed to ESD's two topics, in a fresh moto account namespace."""

    sqs: SQSClient
    sns: SNSClient
    queue_url: str
    topics: dict[str, str] = field(default_factory=dict)

    def publish(self, message: dict[str, Any], topic: str = SUCCESS) -> None:
        self.sns.publish(TopicArn=self.topics[topic], Message=json.dumps(message))

    def waiting(self) -> int:
        """Messages in the queue, visible or in flight."""
        values = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])[
            "Attributes"
        ]
        return int(values["ApproximateNumberOfMessages"]) + int(
            values["ApproximateNumberOfMessagesNotVisible"]
        )


def wire(moto_url: str, *, raw: bool = True) -> Wiring:
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_url)
    sns = boto3.client("sns", region_name=REGION, endpoint_url=moto_url)
    name = f"sdbot-events-{uuid.uuid4().hex[:8]}"
    queue_url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "2"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    wiring = Wiring(sqs, sns, queue_url)
    statements = []
    for topic in (SUCCESS, ERROR):
        topic_arn = sns.create_topic(Name=topic)["TopicArn"]
        wiring.topics[topic] = topic_arn
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RawMessageDelivery": "true" if raw else "false"},
        )
        statements.append(
            {
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        )
    policy = json.dumps({"Version": "2012-10-17", "Statement": statements})
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": policy})
    return wiring


def notification(
    job_id: str, status: str = "Completed", reason: str | None = None
) -> dict[str, Any]:
    """SageMaker's async inference notification (`reference/scale-out.md` §4)."""
    message: dict[str, Any] = {
        "awsRegion": REGION,
        "eventTime": "2026-12-03T12:00:00.000Z",
        "receivedTime": "2026-12-03T11:59:00.000Z",
        "invocationStatus": status,
        "requestParameters": {
            "contentType": "application/json",
            "endpointName": "sd-async-local",
            "inputLocation": f"s3://bucket/async-inputs/{job_id}",
        },
        "inferenceId": job_id,
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    }
    if reason is not None:
        message["failureReason"] = reason
    else:
        message["responseParameters"] = {"outputLocation": f"s3://bucket/out/{job_id}.out"}
    return message


@dataclass
class Setup:
    wiring: Wiring
    server: str
    backend: EsdBackend
    nudged: list[str]


async def until(condition: Any, what: str, rounds: int = 400) -> None:
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never: {what}")


@pytest.fixture
async def setup(moto_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    options: dict[str, Any] = getattr(request, "param", {})
    wiring = wire(moto_url, raw=options.get("raw", True))
    server_options: dict[str, Any] = {"events_lag": options.get("lag", 0.05)}
    if options.get("notify", True):
        server_options["events_queue_url"] = wiring.queue_url
    async with running_server(server_config(**server_options)) as url:
        config = esd_config(
            url,
            events_queue_url=wiring.queue_url,
            events_wait=1,
            events_backstop=options.get("backstop", 3600.0),
            list_interval=0.0,
        )
        backend = EsdBackend(config)
        nudged: list[str] = []
        backend.notify_changes(nudged.append)
        # The first read waits longer than the server's lag between notification and row.
        backend._book._settle_delays = [0.15] + [0.05] * 20
        async with backend:
            assert backend.events is not None
            await until(lambda: backend.events is not None and backend.events.healthy, "healthy")
            yield Setup(wiring, url, backend, nudged)


async def submitted(setup: Setup) -> str:
    done = await setup.backend.submit("job1", params(), png(), None)
    return done.backend_id


async def status_of(setup: Setup, backend_id: str) -> JobState | None:
    answer = await setup.backend.statuses([target(backend_id)])
    found = answer.get(backend_id)
    return None if found is None else found.state


def test_parse_raw_envelope_and_strangers() -> None:
    raw = notification("abc")
    assert parse_notification(json.dumps(raw)) == parse_notification(
        json.dumps({"Type": "Notification", "Message": json.dumps(raw)})
    )
    event = parse_notification(json.dumps(raw))
    assert event is not None and event.succeeded and event.inference_id == "abc"
    assert event.endpoint == "sd-async-local" and event.reason is None
    failed = parse_notification(json.dumps(notification("abc", "Failed", "ClientError: boom")))
    assert failed is not None and not failed.succeeded and failed.reason == "ClientError: boom"
    for body in ("", "not json", "[]", '{"Type": "Notification", "Message": 3}', '{"a": 1}'):
        assert parse_notification(body) is None
    assert parse_notification(json.dumps(raw) + " " * 300_000) is None


async def test_success_event_ends_the_job_at_once_and_the_scan_stays_a_backstop(
    setup: Setup,
) -> None:
    job = await submitted(setup)
    state = state_of(setup.server)
    assert await status_of(setup, job) in (JobState.CREATED, JobState.INPROGRESS)
    lists_before = state.requests["list_inferences"]
    reads_before = state.requests["get_inference"]
    await state.finish(job)
    await until(lambda: job in setup.nudged, "the poller was nudged")
    assert await status_of(setup, job) is JobState.SUCCEED
    # Asked again (the core asks until its row is written, or follows the job anew after
    # reading its row again): the same answer, without asking ESD or waiting for a scan.
    assert await status_of(setup, job) is JobState.SUCCEED
    # Reads for the outcome and its result URLs, no scan. Usually one: the first read waits
    # out ESD's Lambda (the fake stores the row `lag` after the event), but on a loaded machine
    # the row can come later and the settle schedule reads again (CI saw 3 more); the count
    # per job is measured by `python -m bench esd-events`, not asserted here.
    reads = state.requests["get_inference"] - reads_before
    assert 1 <= reads <= len(settle_delays(15.0, first=0.15))
    assert state.requests["list_inferences"] == lists_before
    await until(lambda: setup.wiring.waiting() == 0, "the message was deleted")
    output = await setup.backend.results(job)
    assert output.images


@pytest.mark.parametrize("setup", [{"raw": False, "notify": False}], indirect=True)
async def test_sns_enveloped_failure_is_read_with_its_reason(setup: Setup) -> None:
    job = await submitted(setup)
    await status_of(setup, job)
    setup.wiring.publish(notification(job, "Failed", "ClientError: model crashed"), ERROR)
    await until(lambda: job in setup.nudged, "the poller was nudged")
    answer = await setup.backend.statuses([target(job)])
    assert answer[job].state is JobState.FAILED
    assert "model crashed" in (answer[job].reason or "")
    await until(lambda: setup.wiring.waiting() == 0, "the message was deleted")


@pytest.mark.parametrize("setup", [{"notify": False}], indirect=True)
async def test_duplicates_out_of_order_and_unknown_ids_are_harmless(setup: Setup) -> None:
    job = await submitted(setup)
    await status_of(setup, job)
    state = state_of(setup.server)
    await state.finish(job)
    await until(lambda: state.jobs[job].status is JobState.SUCCEED, "the server finished it")
    setup.wiring.publish(notification("someone-elses-webui-job"))
    setup.wiring.publish(notification(job))
    setup.wiring.publish(notification(job))
    setup.wiring.publish(notification(job, "Failed", "late and wrong"), ERROR)
    await until(lambda: job in setup.nudged, "the poller was nudged")
    answer = await setup.backend.statuses([target(job)])
    assert answer[job].state is JobState.SUCCEED
    await until(lambda: setup.wiring.waiting() == 0, "every message was deleted")
    assert setup.nudged.count(job) == 1


@pytest.mark.parametrize("setup", [{"lag": 0.5}], indirect=True)
async def test_success_before_esd_says_succeed_is_read_again_until_it_does(setup: Setup) -> None:
    job = await submitted(setup)
    await status_of(setup, job)
    state = state_of(setup.server)
    reads_before = state.requests["get_inference"]
    await state.finish(job)
    await until(lambda: job in setup.nudged, "the poller was nudged")
    # The first read found the job still running: the book read again until `succeed`.
    assert state.requests["get_inference"] >= reads_before + 2
    assert await status_of(setup, job) is JobState.SUCCEED


@pytest.mark.parametrize("setup", [{"notify": False, "backstop": 0.3}], indirect=True)
async def test_a_lost_event_is_caught_by_the_backstop_scan(setup: Setup) -> None:
    job = await submitted(setup)
    await status_of(setup, job)
    state = state_of(setup.server)
    await state.finish(job)
    await until(lambda: state.jobs[job].status is JobState.SUCCEED, "the server finished it")
    found: list[JobState | None] = []

    async def poll() -> bool:
        found.append(await status_of(setup, job))
        return found[-1] is JobState.SUCCEED

    for _ in range(100):
        if await poll():
            break
        await asyncio.sleep(0.05)
    assert found[-1] is JobState.SUCCEED
    assert setup.nudged == []  # no event: the scan found it


@pytest.mark.parametrize("setup", [{"notify": False}], indirect=True)
async def test_an_event_before_the_start_answer_is_handled_once_the_job_is_tracked(
    setup: Setup,
) -> None:
    wiring = setup.wiring

    def taken() -> bool:  # received by the consumer, not deleted
        values = wiring.sqs.get_queue_attributes(
            QueueUrl=wiring.queue_url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(values["ApproximateNumberOfMessagesNotVisible"]) == 1

    async def created(backend_id: str) -> None:
        # A loaded bot: the job's end event comes before the answer to its start.
        wiring.publish(notification(backend_id))
        await until(taken, "the consumer took the event")

    job = (await setup.backend.submit("job1", params(), png(), None, created=created)).backend_id
    await state_of(setup.server).finish(job)
    # Not taken for a stranger's job and deleted: SQS delivers it again (visibility 2 s).
    await until(lambda: job in setup.nudged, "the poller was nudged")
    assert await status_of(setup, job) is JobState.SUCCEED
    await until(lambda: wiring.waiting() == 0, "the message was deleted")


@pytest.mark.parametrize("setup", [{"notify": False, "backstop": 0.3}], indirect=True)
async def test_with_events_flowing_the_first_backstop_scan_waits_one_interval(
    setup: Setup,
) -> None:
    # More jobs than are read one by one: scans cover them. Events flow, so the first scan
    # is a backstop like the rest, one interval after the book first looked.
    submit = setup.backend.submit
    jobs = [(await submit(f"job{n}", params(), png(), None)).backend_id for n in "abc"]
    state = state_of(setup.server)
    targets = [target(job) for job in jobs]
    assert await setup.backend.statuses(targets) == {}  # waiting for the backstop, unread
    assert state.requests["list_inferences"] == 0 and state.requests["get_inference"] == 0
    for job in jobs:
        await state.finish(job)
    await until(lambda: all(state.jobs[j].status is JobState.SUCCEED for j in jobs), "done")
    answers: dict[str, Any] = {}
    for _ in range(100):  # no event comes: the backstop scan finds them
        answers.update(await setup.backend.statuses(targets))
        if len(answers) == len(jobs):
            break
        await asyncio.sleep(0.05)
    assert {a.state for a in answers.values()} == {JobState.SUCCEED}
    assert state.requests["list_inferences"] >= 1


@pytest.mark.parametrize("setup", [{"backstop": 0.3}], indirect=True)
async def test_a_poll_never_waits_for_the_backstop_scan(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backstop scan of thousands of jobs takes seconds; the poller's call that carries a job
    # an event has just ended must not wait for it (2,000 jobs: p95 1.87 s when it did).
    submit = setup.backend.submit
    jobs = [(await submit(f"job{n}", params(), png(), None)).backend_id for n in "abc"]
    targets = [target(job) for job in jobs]
    pages_asked = asyncio.Event()
    never = asyncio.Event()

    async def hanging_page(*args: object, **kwargs: object) -> Any:
        pages_asked.set()
        await never.wait()  # ESD's list pages take as long as the test likes

    monkeypatch.setattr(setup.backend._client, "list_inferences", hanging_page)
    assert await setup.backend.statuses(targets) == {}  # the first backstop scan is not due
    await asyncio.sleep(0.35)
    assert await setup.backend.statuses(targets) == {}  # due: started, not waited for
    await asyncio.wait_for(pages_asked.wait(), 5)
    await state_of(setup.server).finish(jobs[0])
    await until(lambda: jobs[0] in setup.nudged, "the poller was nudged")
    answer = await asyncio.wait_for(setup.backend.statuses(targets), 5)
    assert {job: status.state for job, status in answer.items()} == {jobs[0]: JobState.SUCCEED}
    scans = list(setup.backend._book._scanning.values())
    assert scans  # the scan still hangs
    # Closing ends it before the client goes (it would fail on a closed client, and warn).
    await setup.backend._book.aclose()
    assert all(scan.cancelled() for scan in scans)


async def test_a_queue_that_goes_away_falls_back_to_polling_and_back(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    events = setup.backend.events
    assert events is not None
    name = setup.wiring.queue_url.rsplit("/", 1)[-1]
    setup.wiring.sqs.delete_queue(QueueUrl=setup.wiring.queue_url)
    await until(lambda: not events.healthy, "the consumer noticed")
    assert "polling ESD at the normal rate" in caplog.text
    assert not setup.backend._book._events_on
    setup.wiring.sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "2"})
    await until(lambda: events.healthy, "the consumer recovered")
    assert setup.backend._book._events_on
    job = await submitted(setup)
    await status_of(setup, job)
    await state_of(setup.server).finish(job)
    await until(lambda: job in setup.nudged, "events flow again")


async def test_a_burst_of_handled_events_is_deleted_in_batches_of_at_most_ten(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wiring = wire(moto_url)
    strangers = [f"someone-elses-job-{n}" for n in range(25)]
    for name in strangers:
        body = json.dumps(notification(name))
        wiring.sqs.send_message(QueueUrl=wiring.queue_url, MessageBody=body)
    queue = EventQueue(wiring.queue_url, SageMakerConfig(bucket=None), wait_seconds=1)
    batches: list[int] = []
    delete = queue.delete

    async def counted(receipts: Sequence[str]) -> None:
        batches.append(len(receipts))
        await delete(receipts)

    monkeypatch.setattr(queue, "delete", counted)
    seen: list[str] = []

    async def handle(event: Completion) -> bool:
        seen.append(event.inference_id)
        return True

    consumer = CompletionConsumer(queue, handle, on_health=lambda _: None)
    await consumer.start()
    try:
        await until(lambda: consumer.handled == len(strangers), "every message was deleted")
    finally:
        await consumer.aclose()
    assert wiring.waiting() == 0 and sorted(seen) == sorted(strangers)
    # Each message deleted once, in calls of at most 10 (more would be refused, as SQS does):
    # messages handled while a delete is under way share the next call.
    assert sum(batches) == len(strangers) and max(batches) <= 10
    assert len(batches) < len(strangers) / 2


async def test_sdbot_check_reports_the_queue_and_its_topics(moto_url: str) -> None:
    from bot.config import Config
    from cloud.esd.check import check_backend
    from cloud.esd.config import EsdSettings

    wiring = wire(moto_url)
    async with running_server(server_config()) as url:
        key = "local-backend-key"
        esd = EsdSettings(esd_api_url=url, esd_events_queue_url=wiring.queue_url, esd_api_key=key)
        out = io.StringIO()
        assert await check_backend(esd, Config(), out) == 0
        text = out.getvalue()
        assert f"events queue: {wiring.queue_url.rsplit('/', 1)[-1]} answers" in text
        assert "warning: events queue" not in text
        missing = EsdSettings(
            esd_api_url=url,
            esd_events_queue_url=moto_url + "/123456789012/no-such-queue",
            esd_api_key=key,
        )
        out = io.StringIO()
        assert await check_backend(missing, Config(), out) == 1
        assert "error: events queue" in out.getvalue()


def test_the_composition_root_wakes_the_poller_on_events(moto_url: str, tmp_path: Path) -> None:
    from adapters.cli import load_config, make_app

    settings = load_config(
        {
            "ESD_API_URL": "http://127.0.0.1:9/prod/",
            "ESD_EVENTS_QUEUE_URL": moto_url + "/123456789012/sdbot-events",
            "ESD_API_KEY": "k",
            "SDBOT_DATA_DIR": str(tmp_path),
        }
    )
    app = make_app(settings)
    assert isinstance(app.backend, EsdBackend)
    assert app.backend._book.on_change == app.poller.nudge


def test_event_lag_is_counted_from_sqs_sent_timestamp_or_the_sns_timestamp() -> None:
    raw = json.dumps(notification("abc"))
    assert event_lag(Received("r", raw, sent_at=1000.0), now=1002.5) == 2.5
    enveloped = json.dumps(
        {"Type": "Notification", "Message": raw, "Timestamp": "2026-01-01T00:00:00.000Z"}
    )
    published = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert event_lag(Received("r", enveloped), now=published + 4.0) == 4.0
    # SQS's own stamp wins; a clock behind AWS's never makes a negative lag.
    assert event_lag(Received("r", enveloped, sent_at=published + 1.0), published + 4.0) == 3.0
    assert event_lag(Received("r", raw, sent_at=1000.0), now=999.0) == 0.0
    assert event_lag(Received("r", raw), now=1000.0) is None


async def test_each_received_event_reports_its_lag(moto_url: str) -> None:
    wiring = wire(moto_url, raw=False)
    before = time.time()
    for name in ("one", "two"):
        wiring.publish(notification(name))
    queue = EventQueue(wiring.queue_url, SageMakerConfig(bucket=None), wait_seconds=1)
    consumer = CompletionConsumer(queue, _handled, on_health=lambda _: None)
    lags: list[float] = []
    consumer.observe_lag(lags.append)
    await consumer.start()
    try:
        await until(lambda: consumer.handled == 2, "both events were handled")
    finally:
        await consumer.aclose()
    after = time.time()
    # SQS's SentTimestamp is in milliseconds: read as seconds, each lag is within the span of
    # the test (a second more for the milliseconds' rounding).
    assert len(lags) == 2 and all(0.0 <= lag <= after - before + 1.0 for lag in lags)


async def _handled(event: Completion) -> bool:
    return True


def test_the_composition_root_measures_the_event_lag(moto_url: str, tmp_path: Path) -> None:
    from adapters.cli import load_config, make_app
    from adapters.web.metrics import Metrics

    config = load_config(
        {
            "ESD_API_URL": "http://127.0.0.1:9/prod/",
            "ESD_EVENTS_QUEUE_URL": moto_url + "/123456789012/sdbot-events",
            "ESD_API_KEY": "k",
            "SDBOT_DATA_DIR": str(tmp_path),
        }
    )
    metrics = Metrics()
    app = make_app(config, metrics)
    # Through the metrics wrapper, as the core sees the backend (which passes `events` on).
    events = getattr(app.backend, "events", None)
    assert isinstance(events, CompletionConsumer) and events._on_lag == metrics.event_lag.observe
    events._on_lag(2.0)
    assert metrics.registry.get_sample_value("sdbot_event_queue_lag_seconds_count") == 1
    assert b"sdbot_event_queue_lag_seconds_bucket" in metrics.exposition()


async def test_a_message_handled_as_a_delete_call_ends_is_still_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deleted: list[str] = []

    async def delete(receipts: Sequence[str]) -> None:
        deleted.extend(receipts)

    # A real queue object (it connects at its first call only), its deletes recorded.
    queue = EventQueue("https://sqs.us-east-1.amazonaws.com/1/q", SageMakerConfig(bucket=None))
    monkeypatch.setattr(queue, "delete", delete)
    consumer = CompletionConsumer(queue, _handled, on_health=lambda _: None)
    ended = asyncio.create_task(asyncio.sleep(0))
    await ended
    # A delete call that has returned, its done-callback not yet run (one event-loop turn).
    consumer._deleters.add(ended)
    consumer._delete_later("r1")
    await until(lambda: deleted == ["r1"], "the message was deleted")
