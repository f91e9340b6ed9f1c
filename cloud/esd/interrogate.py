"""How an ESD deployment captions images: the `Interrogator` seam of `EsdBackend`.

Real ESD (v1.4+) has no interrogate route (`reference/esd-api.md` §7.3); the container still
captions on Async endpoints when invoked directly through SageMaker (§8.4). So there are three
interrogators: `RestInterrogator` for ESD-compatible servers whose `/ping` advertises
`interrogate` (the bot's own `sdbot local-backend`), `cloud.esd.sagemaker.SageMakerInterrogator`
for real deployments when `ESD_BUCKET` is set, and `UnsupportedInterrogator`, which says what is
missing. An interrogator that follows its jobs itself (not through ESD's REST rows) is also a
`JobReader`; the backend then asks it, not the REST API, about its jobs.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bot.errors import BackendError
from bot.model import Submitted
from cloud.esd.a1111 import INTERROGATE_TASKS, interrogate_payload
from cloud.esd.launch import launch
from cloud.esd.wire import CreateInference

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from bot.model import InterrogateParams
    from cloud.esd.client import EsdClient
    from cloud.esd.payloads import EsdJob

NEEDS_SAGEMAKER = (
    "interrogate on this ESD deployment runs through SageMaker directly: set ESD_BUCKET (the "
    "S3BucketName output of the ESD stack) and give the bot AWS credentials (docs/esd.md)"
)


class Interrogator(Protocol):
    """Starts a caption job whose row `GET inferences/{id}` can read (status, `caption`)."""

    async def interrogate(
        self,
        job_id: str,
        params: InterrogateParams,
        image_png: bytes,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted: ...


@runtime_checkable
class JobReader(Protocol):
    """An interrogator that reads its own jobs, which ESD's REST rows may not describe."""

    async def read(self, backend_ids: Sequence[str]) -> dict[str, EsdJob]:
        """The jobs it could read; a `BackendUnavailableError` when it could read none."""
        ...

    def forget(self, backend_id: str) -> None:
        """The job was cancelled: drop what is kept about it."""
        ...

    async def aclose(self) -> None: ...


def task_type(method: str) -> str:
    """The ESD task type of an interrogate method, or a `BackendError` users can read."""
    try:
        return INTERROGATE_TASKS[method]
    except KeyError:
        raise BackendError(
            f"unknown interrogate method {method!r}",
            user_message=f"unknown interrogate method: {method} (use clip or deepbooru)",
        ) from None


class RestInterrogator:
    """Interrogate through `POST inferences` on servers that accept `interrogate_*` types."""

    def __init__(self, client: EsdClient) -> None:
        self._client = client

    async def interrogate(
        self,
        job_id: str,
        params: InterrogateParams,
        image_png: bytes,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted:
        task = task_type(params.method)
        body = CreateInference(
            task_type=task,
            # The container captions on Async endpoints only (§7.3).
            inference_type="Async",
            models={},
            sagemaker_endpoint_name=params.endpoint,
        )
        payload = await asyncio.to_thread(
            lambda: json.dumps(interrogate_payload(image_png, params.method))
        )
        launched = await launch(
            self._client, body, payload, realtime=False, label=job_id, on_created=created
        )
        return Submitted(
            launched.job_id, launched.endpoint or params.endpoint, started=launched.started
        )


class UnsupportedInterrogator:
    """For deployments where interrogate has no route: a clear refusal."""

    async def interrogate(
        self,
        job_id: str,
        params: InterrogateParams,
        image_png: bytes,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted:
        task_type(params.method)
        raise BackendError(
            "the ESD server does not advertise interrogate over REST", user_message=NEEDS_SAGEMAKER
        )
