"""Completion events: ESD's SageMaker notifications through an SQS queue (SPEC §4.1).

ESD creates every Async endpoint with SageMaker's `NotificationConfig` pointing at its SNS
topics `ReceiveSageMakerInferenceSuccess` and `ReceiveSageMakerInferenceError`
(`reference/scale-out.md` §4; ESD `middleware_api/endpoints/create_endpoint.py`). An SQS queue
subscribed to both tells the bot the moment a job ends; the message's `inferenceId` is the ESD
job id. This module reads that queue; `cloud.esd.polling.StatusBook.complete` decides what an
event means for a job.

- `parse_notification` reads one message body: SageMaker's JSON as raw delivery puts it in the
  queue, or wrapped in SNS's `{"Type": "Notification", "Message": …}` envelope.
- `EventQueue` is boto3's SQS client run in worker threads, like the SageMaker interrogate path
  (`cloud.esd.sagemaker`): a long poll blocks a thread for up to 20 s, which costs nothing on the
  event loop, and it needs no second AWS SDK (aiobotocore pins botocore to its own narrow range,
  which would fight the boto3 the bot already depends on). The threads are the queue's own, not
  asyncio's default pool (min(32, cores + 4): 6 on 2 cores), so neither the long poll nor the
  process's other thread work (Pillow, files) ever holds a receive or a delete back.
- `CompletionConsumer` long-polls (10 messages a receive, SQS's most), hands every event to the
  book, and deletes a message only once the book says it is handled (unknown ids included: the
  topics carry every job of the ESD stack, WebUI users' too), with `DeleteMessageBatch`: handled
  messages gather while a batch call is under way and go in the next (at most 10 each, SQS's
  limit), so a burst costs one call per ten events. Delivery is at least once and unordered
  (standard SNS topics and SQS queues), so handling is idempotent: the first terminal word about
  a job wins and a second event for it is deleted. A message the book could not handle (ESD
  unreachable) is left for SQS to deliver again after its visibility timeout, and the slow
  backstop scan catches it anyway.
  A queue that stops answering marks the consumer unhealthy: the book goes back to normal
  polling until the queue answers again, and says so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig

from bot.errors import BackendError, ConfigError
from bot.retry import RetryPolicy
from cloud.esd.sagemaker import AwsAction, SageMakerConfig, aws_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from typing import TypeVar

    T = TypeVar("T")

    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import DeleteMessageBatchRequestEntryTypeDef, MessageTypeDef

_LOGGER = logging.getLogger(__name__)

# SQS's limits: a long poll waits at most 20 s, a receive returns at most 10 messages
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html).
LONG_POLL_SECONDS = 20
_BATCH = 10
# Events handled at once. Each mostly waits (for ESD to say `succeed`: the SNS success event
# fires before ESD's own Lambda has written the images, `reference/scale-out.md` §4; then for
# the poller's hand-off), so this bounds memory, not requests: the reads have their own gate in
# `StatusBook.complete`.
_CONCURRENCY = 1000
# Waits between receives while the queue does not answer: doubling from 0.5 s to 30 s,
# jittered (the same back-off as every retry).
RECEIVE_RETRY = RetryPolicy(backoff=0.5, max_backoff=30.0)
_MAX_BODY = 262_144  # SQS's largest message (256 KiB): anything longer is not ours
# The queue's threads: one long poll, and deletes beside it.
_THREADS = 4
# `DeleteMessageBatch` calls under way at once: a burst beyond ten per round trip opens another.
_DELETERS = 3


@dataclass(frozen=True, slots=True)
class Completion:
    """What one SageMaker notification says about one inference."""

    inference_id: str  # the ESD job id (ESD invokes with `InferenceId=InferenceJobId`)
    succeeded: bool  # `invocationStatus` is `Completed`
    reason: str | None  # `failureReason` of a failed invocation
    endpoint: str | None


def parse_notification(body: str) -> Completion | None:
    """The completion a message body describes, or None when it is not a SageMaker async
    inference notification (anything else on a shared queue is skipped and deleted).

    Raw delivery (`RawMessageDelivery=true`) puts SageMaker's JSON in the body; without it SNS
    wraps it: `{"Type": "Notification", "Message": "<the JSON as a string>", …}`
    (https://docs.aws.amazon.com/sns/latest/dg/sns-large-payload-raw-message-delivery.html).
    SageMaker's shape: `{"invocationStatus": "Completed" | "Failed", "inferenceId": …,
    "failureReason": …, "requestParameters": {"endpointName": …}, "eventSource":
    "aws:sagemaker", "eventName": "InferenceResult", …}` (`reference/scale-out.md` §4).
    """
    if len(body) > _MAX_BODY:
        return None
    message = _json_object(body)
    if message is not None and message.get("Type") == "Notification":
        inner = message.get("Message")
        message = _json_object(inner) if isinstance(inner, str) else None
    if message is None:
        return None
    inference_id = message.get("inferenceId")
    status = message.get("invocationStatus")
    if not isinstance(inference_id, str) or not inference_id or not isinstance(status, str):
        return None
    reason = message.get("failureReason")
    request = message.get("requestParameters")
    endpoint = request.get("endpointName") if isinstance(request, dict) else None
    return Completion(
        inference_id=inference_id,
        succeeded=status == "Completed",
        reason=reason.strip() or None if isinstance(reason, str) else None,
        endpoint=endpoint if isinstance(endpoint, str) else None,
    )


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class Received:
    """One message taken from the queue: its receipt (for deleting it), its body, and when
    SQS took it (`SentTimestamp`, epoch seconds) when the queue said."""

    receipt: str
    body: str
    sent_at: float | None = None


def event_lag(message: Received, now: float) -> float | None:
    """Seconds from when the event was sent to `now` (epoch seconds): the SQS message's
    `SentTimestamp`, else the `Timestamp` of SNS's envelope (ISO 8601, UTC); None when neither
    is known. Clocks of AWS and this machine may differ a little: never below zero."""
    sent = message.sent_at
    if sent is None and len(message.body) <= _MAX_BODY:
        envelope = _json_object(message.body)
        stamp = envelope.get("Timestamp") if envelope is not None else None
        if isinstance(stamp, str):
            with contextlib.suppress(ValueError):
                sent = datetime.fromisoformat(stamp).timestamp()
    return None if sent is None else max(0.0, now - sent)


def _sent_at(message: MessageTypeDef) -> float | None:
    stamp = message.get("Attributes", {}).get("SentTimestamp")  # milliseconds
    try:
        return int(stamp) / 1000 if stamp else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class QueueReport:
    """What `EventQueue.check` found, for `sdbot check`."""

    name: str
    messages: int  # ApproximateNumberOfMessages
    topics: tuple[str, ...]  # topic ARNs the queue policy lets SNS send from (when readable)


def queue_client_settings(queue_url: str) -> tuple[str | None, str | None]:
    """(region, endpoint URL) for a queue URL.

    AWS queue URLs are `https://sqs.<region>.amazonaws.com/<account>/<name>`; any other host
    (moto, ElasticMQ, a VPC endpoint) is used as the endpoint itself.
    """
    parts = urlsplit(queue_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.count("/") < 2:
        raise ConfigError(
            "ESD_EVENTS_QUEUE_URL must be an SQS queue URL such as "
            "https://sqs.us-east-1.amazonaws.com/123456789012/sdbot-events"
        )
    labels = parts.hostname.split(".")
    if parts.hostname.endswith(".amazonaws.com") and len(labels) >= 4 and labels[0] == "sqs":
        return labels[1], None
    return None, f"{parts.scheme}://{parts.netloc}"


class EventQueue:
    """The SQS queue of completion events, through boto3 in worker threads."""

    def __init__(self, queue_url: str, aws: SageMakerConfig, *, wait_seconds: int = 20) -> None:
        self.url = queue_url
        self.name = urlsplit(queue_url).path.rstrip("/").rsplit("/", 1)[-1]
        self._region, self._endpoint = queue_client_settings(queue_url)
        self._aws = aws
        self._wait = max(0, min(wait_seconds, LONG_POLL_SECONDS))
        self._client: SQSClient | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def _in_thread(self, call: Callable[..., T], *args: object) -> T:
        """Run a blocking SQS call on one of the queue's own threads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix=f"sqs-{self.name}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(call, *args))

    def _sqs(self) -> SQSClient:
        if self._client is None:
            config = BotoConfig(
                connect_timeout=self._aws.connect_timeout,
                # A long poll holds the request open for `wait` seconds.
                read_timeout=self._wait + self._aws.read_timeout,
                retries={"max_attempts": self._aws.max_attempts, "mode": "standard"},
            )
            self._client = boto3.client(
                "sqs",
                region_name=self._region or self._aws.region or self._aws.fallback_region,
                endpoint_url=self._endpoint,
                config=config,
            )
        return self._client

    def _action(self, iam: str) -> AwsAction:
        return AwsAction(iam, f"queue {self.name}")

    async def receive(self, *, wait: bool = True) -> list[Received]:
        """Up to 10 messages, waiting up to the long-poll time for the first (with `wait`)."""

        def call() -> list[Received]:
            answer = self._sqs().receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=_BATCH,
                WaitTimeSeconds=self._wait if wait else 0,
                MessageSystemAttributeNames=["SentTimestamp"],  # for the event lag metric
            )
            return [
                Received(m["ReceiptHandle"], m.get("Body", ""), _sent_at(m))
                for m in answer.get("Messages", [])
                if "ReceiptHandle" in m
            ]

        try:
            return await self._in_thread(call)
        except Exception as exc:
            raise aws_error(exc, self._action("sqs:ReceiveMessage"), self._aws) from exc

    async def delete(self, receipts: Sequence[str]) -> None:
        """Delete handled messages (`DeleteMessageBatch`, 10 at a time)."""

        def call(chunk: Sequence[str]) -> None:
            entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
                {"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(chunk)
            ]
            answer = self._sqs().delete_message_batch(QueueUrl=self.url, Entries=entries)
            for failed in answer.get("Failed", []):
                _LOGGER.warning(
                    "events queue %s: a message was not deleted (%s); SQS will deliver it "
                    "again and it will be recognised as handled",
                    self.name,
                    failed.get("Code"),
                )

        for start in range(0, len(receipts), _BATCH):
            try:
                await self._in_thread(call, receipts[start : start + _BATCH])
            except Exception as exc:
                raise aws_error(exc, self._action("sqs:DeleteMessage"), self._aws) from exc

    async def check(self) -> QueueReport:
        """Reachable, readable and receivable, without taking a message from anyone: a receive
        with `VisibilityTimeout=0` leaves every message visible to the consumers."""

        def call() -> QueueReport:
            sqs = self._sqs()
            attributes = sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["All"])
            values = attributes.get("Attributes", {})
            sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=1, WaitTimeSeconds=0, VisibilityTimeout=0
            )
            return QueueReport(
                self.name,
                int(values.get("ApproximateNumberOfMessages", "0") or 0),
                _policy_topics(values.get("Policy")),
            )

        try:
            return await self._in_thread(call)
        except Exception as exc:
            raise aws_error(exc, self._action("sqs:GetQueueAttributes"), self._aws) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await self._in_thread(client.close)
        if self._pool is not None:
            # A long poll still under way ends on its own (within `wait` seconds).
            pool, self._pool = self._pool, None
            pool.shutdown(wait=False, cancel_futures=True)


def _policy_topics(policy: str | None) -> tuple[str, ...]:
    """Topic ARNs named as `aws:SourceArn` in the queue policy (what SNS may send from)."""
    document = _json_object(policy) if policy else None
    statements = document.get("Statement", []) if document else []
    if isinstance(statements, dict):
        statements = [statements]
    topics: list[str] = []
    for statement in statements if isinstance(statements, list) else []:
        condition = statement.get("Condition", {}) if isinstance(statement, dict) else {}
        for test in condition.values() if isinstance(condition, dict) else ():
            arns = test.get("aws:SourceArn") if isinstance(test, dict) else None
            for arn in [arns] if isinstance(arns, str) else arns or []:
                if isinstance(arn, str) and arn.startswith("arn:") and ":sns:" in arn:
                    topics.append(arn)
    return tuple(dict.fromkeys(topics))


class CompletionConsumer:
    """Long-polls the queue and hands each completion to `handle` (True: handled, delete it).

    Supervised like every background task: an unexpected exception is logged with its
    traceback and the loop goes on after a back-off. `healthy` is False from the first failed
    receive until one succeeds again; `on_health` hears each change.
    """

    def __init__(
        self,
        queue: EventQueue,
        handle: Callable[[Completion], Awaitable[bool]],
        *,
        on_health: Callable[[bool], None],
        retry: RetryPolicy = RECEIVE_RETRY,
    ) -> None:
        """`retry`: the waits between receives while the queue fails (its `pause`; the
        consumer never gives up, so the policy's attempts do not apply)."""
        self._queue = queue
        self._handle = handle
        self._on_health = on_health
        self._retry = retry
        self._gate = asyncio.Semaphore(_CONCURRENCY)
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()  # at most `_CONCURRENCY` (`_gate`)
        self._done: list[str] = []  # receipts of handled messages, waiting for a delete call
        self._deleters: set[asyncio.Task[None]] = set()
        self.healthy = False
        self.last_error: str | None = None
        self.handled = 0  # events handled (duplicates and unknown ids included)
        self._on_lag: Callable[[float], None] | None = None

    def observe_lag(self, callback: Callable[[float], None]) -> None:
        """Call `callback` with each received event's lag (`event_lag`): operators' metrics."""
        self._on_lag = callback

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="esd-events")

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Deletes under way finish (what is handled need not come back); the rest is left
        # for SQS to deliver again, which the book recognises as handled.
        await asyncio.gather(*self._deleters, return_exceptions=True)
        await self._queue.aclose()

    def _set_health(self, healthy: bool, error: str | None = None) -> None:
        self.last_error = error
        if healthy != self.healthy:
            self.healthy = healthy
            self._on_health(healthy)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                # Until the queue has answered once, ask without waiting, so a healthy queue
                # switches polling to the backstop pace at once rather than after a long poll.
                received = await self._queue.receive(wait=self.healthy)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                error = exc.user_message if isinstance(exc, BackendError) else None
                if not isinstance(exc, BackendError):
                    _LOGGER.exception("events queue %s: unexpected failure", self._queue.name)
                if self.healthy or failures == 1:
                    _LOGGER.warning(
                        "events queue %s does not answer (%s): polling ESD at the normal "
                        "rate until it does",
                        self._queue.name,
                        error or exc,
                    )
                self._set_health(False, str(error or exc))
                await self._retry.pause(min(failures, 10))
                continue
            if failures or not self.healthy:
                _LOGGER.info(
                    "events queue %s answers: polling ESD only as a backstop", self._queue.name
                )
            failures = 0
            self._set_health(True)
            if self._on_lag is not None:
                now = time.time()
                for message in received:
                    lag = event_lag(message, now)
                    if lag is not None:
                        self._on_lag(lag)
            for message in received:
                await self._gate.acquire()
                task = asyncio.create_task(self._one(message), name="esd-event")
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _one(self, message: Received) -> None:
        try:
            event = parse_notification(message.body)
            handled = True if event is None else await self._handle(event)
            if handled:
                self._delete_later(message.receipt)
        except asyncio.CancelledError:
            raise
        except BackendError as exc:
            _LOGGER.warning(
                "events queue %s: %s (SQS will deliver it again)", self._queue.name, exc
            )
        except Exception:
            _LOGGER.exception("events queue %s: an event could not be handled", self._queue.name)
        finally:
            self._gate.release()

    def _delete_later(self, receipt: str) -> None:
        """Queue a handled message for `DeleteMessageBatch`: a delete call starts at once when
        none is under way; otherwise the receipt goes in a coming batch of up to ten (another
        call opens when ten are waiting, up to `_DELETERS` at once)."""
        self._done.append(receipt)
        # A deleter that has returned stays in the set until its done-callback runs: count
        # only those still running, or a receipt added meanwhile would wait for the next one.
        running = sum(1 for task in self._deleters if not task.done())
        if not running or (len(self._done) >= _BATCH and running < _DELETERS):
            task = asyncio.create_task(self._delete_done(), name="esd-events-delete")
            self._deleters.add(task)
            task.add_done_callback(self._deleters.discard)

    async def _delete_done(self) -> None:
        while self._done:
            batch, self._done = self._done[:_BATCH], self._done[_BATCH:]
            try:
                await self._queue.delete(batch)
            except BackendError as exc:
                _LOGGER.warning(
                    "events queue %s: %d handled message(s) not deleted: %s (SQS will deliver "
                    "them again and they will be recognised as handled)",
                    self._queue.name,
                    len(batch),
                    exc,
                )
                continue
            except Exception:
                _LOGGER.exception("events queue %s: deleting messages failed", self._queue.name)
                continue
            self.handled += len(batch)


def settle_delays(total: float, first: float) -> list[float]:
    """Waits before each read of a job whose success event came before ESD said `succeed`:
    `first`, then doubling, capped at 2 s, adding up to at most `total` seconds."""
    delays: list[float] = []
    delay = first
    while math.fsum(delays) + delay <= total:
        delays.append(delay)
        delay = min(delay * 2, 2.0)
    return delays
