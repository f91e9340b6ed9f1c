"""Launching one ESD job: `POST inferences` → `PUT` the payload → `PUT inferences/{id}/start`.

The start is the one call that is never repeated once it may have reached ESD: ESD has no guard
against a second start, which would run the job twice on the GPU
(inferences/start_inference_job.py). So a start is retried only where ESD cannot have acted
(no connection, 429, 503). After an ambiguous failure (timeout, 500, 502, 504) the job is
followed as started: polling shows what ESD does with it, and a job that never ran stays
`created` until the core's `created_timeout` says so. Real-time starts hold the request open
while the endpoint works: 200 carries the finished job, 400 carries the failure (ESD leaves the
row `created` with `sagemakerRaw`), and a 504 from API Gateway (29 s) or our own timeout means
"still running" (`reference/esd-api.md` §4.3).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.errors import BackendError, JobFailedError
from cloud.esd.client import OutcomeUnknownError
from cloud.esd.payloads import (
    NO_IMAGES,
    EsdJob,
    parse_job,
    readable_reason,
    started_endpoint,
    started_state,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from cloud.esd.client import EsdClient
    from cloud.esd.wire import CreateInference

_LOGGER = logging.getLogger(__name__)

# ESD's create Lambda indexes the first row of its endpoint scan before its own "is not found"
# check, so an unknown endpoint name is answered with Python's IndexError text
# (inferences/create_inference_job.py, `_schedule_inference_endpoint`).
_UNKNOWN_ENDPOINT = "list index out of range"


@dataclass(frozen=True)
class Launched:
    """A started job."""

    job_id: str
    endpoint: str | None  # the endpoint ESD named in its answer, when it did
    finished: EsdJob | None = None  # Real-time 200: the job as it ended
    started: bool = False  # ESD answered the start with `inprogress` (Async, §4.3)


async def launch(
    client: EsdClient,
    body: CreateInference,
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
    try:
        created = await client.create_inference(body)
    except BackendError as exc:
        if exc.status == 400 and exc.user_message == _UNKNOWN_ENDPOINT:
            name = body.sagemaker_endpoint_name
            raise BackendError(
                f"{exc} (endpoint {name!r} is not in ESD's table)",
                status=400,
                user_message=f"endpoint `{name}` is not on ESD (see `endpoints`)",
            ) from None
        raise
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
    try:
        answer = await client.start_inference(job_id)
    except OutcomeUnknownError as exc:
        _LOGGER.info("ESD job %s: the start may have run (%s); following it", job_id, exc)
        return Launched(job_id, None)
    except BackendError as exc:
        if realtime and exc.status == 400:
            # The endpoint ran the job and failed it; the answer is the reason, often a Python
            # repr of the container's error body.
            reason = readable_reason(exc.user_message or str(exc)) or NO_IMAGES
            raise JobFailedError(
                f"ESD job {job_id} failed: {reason}", user_message=reason
            ) from None
        raise
    if answer.status == 200 and isinstance(answer.data, dict) and "InferenceJobId" in answer.data:
        finished = parse_job(answer.data)
        return Launched(job_id, finished.endpoint, finished)
    return Launched(
        job_id, started_endpoint(answer.data), started=started_state(answer.data) == "inprogress"
    )
