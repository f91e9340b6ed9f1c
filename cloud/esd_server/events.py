"""SageMaker-shaped completion notifications from the ESD-compatible server (`--events-queue-url`).

On a real stack SageMaker publishes each Async invocation's outcome to ESD's SNS topics
`ReceiveSageMakerInferenceSuccess` / `ReceiveSageMakerInferenceError`, and an SQS queue
subscribed with `RawMessageDelivery=true` receives SageMaker's JSON as the message body
(`reference/scale-out.md` §4). `Notifier` sends that same body straight to an SQS-compatible
queue (moto in server mode, ElasticMQ, a real queue), so the bot's whole event path runs on
one machine. As on a real stack, the notification goes out *before* ESD's own Lambda has stored
the images and set `succeed` (`reference/esd-api.md` §9): the server waits `lag` seconds between
the two. Only Async jobs notify: Real-time invocations answer synchronously and SageMaker sends
no notification for them. A failed send is logged and the job goes on, as a lost SNS delivery
would: the bot's backstop scan finds the job. Sends run on the notifier's own threads, not on
asyncio's default pool, so a burst of notifications never holds back other thread work of the
process (the server's preview engine, or the bot's when both run in one process, as in tests).
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3

from cloud.esd.events import queue_client_settings

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

_LOGGER = logging.getLogger(__name__)
# Sends under way at once (SNS delivers to SQS in parallel too).
_THREADS = 4


class Notifier:
    """Sends SageMaker async notifications to one SQS queue."""

    def __init__(self, queue_url: str, *, lag: float = 0.05, region: str = "us-east-1") -> None:
        self._url = queue_url
        self.lag = lag
        found_region, endpoint = queue_client_settings(queue_url)
        self._region = found_region or region
        self._endpoint = endpoint
        self._client: SQSClient | None = None
        self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="esd-notify")
        self.sent = 0

    def _sqs(self) -> SQSClient:
        if self._client is None:
            self._client = boto3.client(
                "sqs", region_name=self._region, endpoint_url=self._endpoint
            )
        return self._client

    async def publish(self, notification: dict[str, Any]) -> None:
        body = json.dumps(notification)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._pool, lambda: self._sqs().send_message(QueueUrl=self._url, MessageBody=body)
            )
            self.sent += 1
        except Exception as exc:
            _LOGGER.warning(
                "notification for %s not sent: %s", notification.get("inferenceId"), exc
            )
            return
        await asyncio.sleep(self.lag)  # ESD's Lambda stores the result a moment later

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.get_running_loop().run_in_executor(self._pool, client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)
