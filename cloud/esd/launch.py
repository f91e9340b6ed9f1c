"""Launching one ESD job: `POST inferences` → `PUT` the payload → `PUT inferences/{id}/start`.

The start is the one call that must not simply be repeated: an Async start that already
happened would run the job twice. So a start is retried as such only where ESD cannot have
acted (no connection, 429, 503); after an ambiguous failure (timeout, 500/502/504) the job is
read back, and only a job still `created` is started again. Real-time starts hold the request
open while the endpoint works: 200 carries the finished job, and a 504 from API Gateway
(29 s) or our own timeout means "still running", so the job is polled like an Async one
(`reference/esd-api.md` §4.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.errors import BackendError
from bot.model import JobState
from cloud.esd.client import OutcomeUnknownError
from cloud.esd.payloads import EsdJob, parse_job

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from cloud.esd.client import EsdClient

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launched:
    """A started job."""

    job_id: str
    endpoint: str | None  # the endpoint ESD named in its answer, when it did
    finished: EsdJob | None = None  # Real-time 200: the job as it ended


def _endpoint_of(data: object) -> str | None:
    """`endpoint_name` from an Async start answer (`data.inference.endpoint_name`)."""
    if isinstance(data, dict):
        inference = data.get("inference")
        if isinstance(inference, dict):
            name = inference.get("endpoint_name")
            if isinstance(name, str) and name:
                return name
    return None


async def launch(
    client: EsdClient,
    body: dict[str, Any],
    payload_text: str,
    *,
    realtime: bool,
    label: str,
    on_created: Callable[[str], Awaitable[None]] | None = None,
) -> Launched:
    """Create, upload and start one job. `label` names the bot job in logs.

    `on_created(id)` runs between the upload and the start (the bot records the id), so a bot
    killed at any point knows every job that may run (`bot.ports.Backend.submit`).
    """
    created = await client.create_inference(body)
    _LOGGER.info("ESD job %s created for %s", created.id, label)
    try:
        await client.upload(created.upload_url, payload_text)
        if on_created is not None:
            await on_created(created.id)
    except Exception:
        # Never started, so nothing runs: remove the orphan row, best effort.
        with contextlib.suppress(BackendError):
            await client.delete_inferences([created.id])
        raise
    return await _start(client, created.id, realtime=realtime)


async def _start(client: EsdClient, job_id: str, *, realtime: bool) -> Launched:
    config = client.config
    attempt = 0
    while True:
        try:
            answer = await client.start_inference(job_id)
        except OutcomeUnknownError as exc:
            if realtime and exc.status in (504, None):
                _LOGGER.info("ESD job %s: Real-time start still running (%s); polling", job_id, exc)
                return Launched(job_id, None)
            job = await client.get_inference(job_id)
            if job.state is not JobState.CREATED:
                _LOGGER.info("ESD job %s started despite %s", job_id, exc)
                terminal = job.state is not None and job.state.terminal
                return Launched(job_id, job.endpoint, job if terminal else None)
            if attempt >= config.retries:
                raise
            attempt += 1
            delay = min(config.retry_cap, config.retry_base * 2.0**attempt)
            _LOGGER.info("ESD job %s is still `created` after %s; starting again", job_id, exc)
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            continue
        if (
            answer.status == 200
            and isinstance(answer.data, dict)
            and "InferenceJobId" in answer.data
        ):
            finished = parse_job(answer.data)
            return Launched(job_id, finished.endpoint, finished)
        return Launched(job_id, _endpoint_of(answer.data))
