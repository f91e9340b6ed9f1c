"""`LocalBackend`: ESD's job life, in process, on the preview engine.

It owns a table of jobs that move through ESD's states (`created` → `inprogress` →
`succeed` / `failed`), one always-`InService` endpoint, a model list made of a built-in checkpoint
plus the files of an optional local folder laid out by ESD type, and the asyncio tasks that run the
jobs. Rendering and captioning happen in worker threads (`cloud.local.preview`), so the event loop
never blocks. Every job's end is decided in one method, `_outcome`, which is where latency and
failures can be injected.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.errors import BackendError, BackendUnavailableError, ConfigError, JobFailedError
from bot.model import (
    BackendStatus,
    CloudJob,
    Endpoint,
    GenerationParams,
    InterrogateParams,
    JobOutput,
    JobState,
    Model,
    Submitted,
)
from cloud.local.preview import caption, render, render_infotext

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from bot.ports import PollTarget

log = logging.getLogger(__name__)

# The checkpoint every local backend has, so a fresh install can run a job with no files at all.
DEFAULT_CHECKPOINT = "sdbot-preview.safetensors"
# ESD checkpoint types, which are also the folder names under `models_dir` (as in A1111's models/).
MODEL_TYPES: tuple[str, ...] = ("Stable-diffusion", "Lora", "VAE", "hypernetworks", "embeddings")
INTERROGATE_METHODS: tuple[str, ...] = ("clip", "deepbooru")
# ESD does not look these VAE names up; the empty string is the core saying "none chosen".
_VAE_NOT_LOOKED_UP = ("", "Automatic", "None")
# How long a job sits in `created` at most, so pollers see the same states as on ESD.
_PICKUP_SECONDS = 0.05


@dataclass(frozen=True)
class LocalBackendConfig:
    """Settings of the local backend (`SDBOT_LOCAL_DELAY` sets `delay`)."""

    delay: float = 1.0  # seconds a job takes, from submission to its result
    # Optional folder of model files: <dir>/<ESD type>/<file>, e.g. models/Lora/style.safetensors.
    models_dir: Path | None = None
    endpoint_name: str = "local-preview"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ConfigError(f"local backend delay must be seconds >= 0, got {self.delay!r}")
        if not self.endpoint_name.strip():
            raise ConfigError("local backend endpoint name must not be empty")


@dataclass(eq=False)
class _LocalJob:
    """One row of the backend's job table; mutable because its state moves on."""

    backend_id: str
    task_type: str  # ESD task type: img2img, interrogate_clip, interrogate_deepbooru
    endpoint: str
    model: str | None
    created_at: datetime
    state: JobState = JobState.CREATED
    reason: str | None = None
    output: JobOutput | None = None
    task: asyncio.Task[None] | None = None


class LocalBackend:
    """The embedded backend (SPEC §4 "Local"); implements `bot.ports.Backend`."""

    name = "local"

    def __init__(self, config: LocalBackendConfig) -> None:
        self._config = config
        self._jobs: dict[str, _LocalJob] = {}  # insertion order = submission order
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- Lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        models_dir = self._config.models_dir
        if models_dir is not None and not await asyncio.to_thread(models_dir.is_dir):
            raise ConfigError(f"local backend models folder is not a directory: {models_dir}")
        self._closed = False

    async def aclose(self) -> None:
        """Cancel the jobs still running and wait until their tasks have ended."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # `wait` never raises the tasks' own CancelledError, yet our own cancellation passes.
            await asyncio.wait(tasks)

    # -- Catalogue ----------------------------------------------------------------------------

    async def endpoints(self) -> Sequence[Endpoint]:
        return (
            Endpoint(
                name=self._config.endpoint_name,
                status="InService",
                type="Async",
                instance_type="local",
                instance_count=1,
            ),
        )

    async def models(self, model_type: str | None = None) -> Sequence[Model]:
        found = await asyncio.to_thread(self._scan_models)
        return [model for model in found if model_type is None or model.type == model_type]

    def _scan_models(self) -> list[Model]:
        models = [Model(name=DEFAULT_CHECKPOINT, type="Stable-diffusion")]
        if self._config.models_dir is None:
            return models
        for model_type in MODEL_TYPES:
            folder = self._config.models_dir / model_type
            if not folder.is_dir():
                continue
            names = sorted(
                entry.name
                for entry in folder.iterdir()
                # Dot files are housekeeping (.gitkeep, .DS_Store), never models.
                if entry.is_file() and not entry.name.startswith(".")
            )
            models.extend(
                Model(name=name, type=model_type)
                for name in names
                if (name, model_type) != (DEFAULT_CHECKPOINT, "Stable-diffusion")
            )
        return models

    # -- Jobs ---------------------------------------------------------------------------------

    async def submit(
        self, job_id: str, params: GenerationParams, init_png: bytes, mask_png: bytes | None
    ) -> Submitted:
        self._check_open()
        self._check_endpoint(params.endpoint)
        await self._check_models(params)
        masked = mask_png is not None

        def work() -> JobOutput:
            images = render(init_png, mask_png, params)
            # ESD's WebUI shows `infotexts[0]`; the other images differ only by seed + i.
            return JobOutput(
                images=tuple(images), infotext=render_infotext(params, 0, masked=masked)
            )

        record = self._launch(job_id, "img2img", params.model, work)
        return Submitted(backend_id=record.backend_id, endpoint=record.endpoint)

    async def interrogate(
        self, job_id: str, params: InterrogateParams, image_png: bytes
    ) -> Submitted:
        self._check_open()
        self._check_endpoint(params.endpoint)
        method = params.method
        if method not in INTERROGATE_METHODS:
            raise BackendError(
                f"unknown interrogate method {method!r}",
                status=400,
                user_message=f"unknown interrogate method: {method} (use clip or deepbooru)",
            )

        def work() -> JobOutput:
            return JobOutput(caption=caption(image_png, method))

        record = self._launch(job_id, f"interrogate_{method}", None, work)
        return Submitted(backend_id=record.backend_id, endpoint=record.endpoint)

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        answer: dict[str, BackendStatus] = {}
        for target in targets:
            record = self._jobs.get(target.backend_id)
            if record is not None:
                answer[record.backend_id] = BackendStatus(
                    backend_id=record.backend_id, state=record.state, reason=record.reason
                )
        return answer

    async def results(self, backend_id: str) -> JobOutput:
        record = self._jobs.get(backend_id)
        if record is None:
            raise BackendError(f"inference with id {backend_id} not found", status=404)
        if record.state is JobState.FAILED:
            raise JobFailedError(f"job {backend_id} failed: {record.reason}")
        if record.state is not JobState.SUCCEED or record.output is None:
            raise BackendError(f"job {backend_id} has no results yet: it is {record.state}")
        return record.output

    async def refresh(self, backend_id: str) -> None:
        """Nothing to do: results are held in memory, there are no URLs to expire."""

    async def cancel(self, backend_id: str) -> None:
        """Stop the job and drop it from the table, as ESD's `DELETE /inferences` does."""
        record = self._jobs.pop(backend_id, None)
        if record is None or record.task is None:
            return  # unknown ids are skipped, as on ESD
        record.task.cancel()
        await asyncio.wait([record.task])

    async def history(self, task_type: str, limit: int) -> Sequence[CloudJob]:
        rows = [record for record in reversed(self._jobs.values()) if record.task_type == task_type]
        return [
            CloudJob(
                backend_id=record.backend_id,
                task_type=record.task_type,
                state=record.state.value,
                created_at=record.created_at,
                endpoint=record.endpoint,
                model=record.model,
            )
            for record in rows[: max(limit, 0)]
        ]

    # -- Running jobs -------------------------------------------------------------------------

    def _launch(
        self, job_id: str, task_type: str, model: str | None, work: Callable[[], JobOutput]
    ) -> _LocalJob:
        record = _LocalJob(
            backend_id=str(uuid.uuid4()),
            task_type=task_type,
            endpoint=self._config.endpoint_name,
            model=model,
            created_at=datetime.now(UTC),
        )
        task = asyncio.create_task(
            self._run(record, work), name=f"local-backend-job-{record.backend_id}"
        )
        record.task = task
        self._jobs[record.backend_id] = record
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("local job %s (%s) for bot job %s", record.backend_id, task_type, job_id)
        return record

    async def _run(self, record: _LocalJob, work: Callable[[], JobOutput]) -> None:
        pickup = min(_PICKUP_SECONDS, self._config.delay / 2)
        await asyncio.sleep(pickup)
        record.state = JobState.INPROGRESS
        await asyncio.sleep(self._config.delay - pickup)
        try:
            output = await self._outcome(record, work)
        except Exception as exc:  # CancelledError is not an Exception: it still propagates
            log.warning("local job %s failed", record.backend_id, exc_info=True)
            record.reason = f"preview engine error: {exc}"
            record.state = JobState.FAILED
        else:
            record.output = output
            record.state = JobState.SUCCEED

    async def _outcome(self, record: _LocalJob, work: Callable[[], JobOutput]) -> JobOutput:
        """Decide how a job ends: its output, or an exception that fails it with that reason.

        The one seam for fault injection (added latency, forced failures).
        """
        return await asyncio.to_thread(work)

    # -- Checks -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailableError("the local backend is closed")

    def _check_endpoint(self, endpoint: str) -> None:
        available = self._config.endpoint_name
        if endpoint != available:
            raise BackendError(
                f"unknown endpoint {endpoint!r}; the local backend has {available!r}",
                status=400,
                user_message=f"endpoint not found: {endpoint} (available: {available})",
            )

    async def _check_models(self, params: GenerationParams) -> None:
        available = await self.models()
        checkpoints = {model.name for model in available if model.type == "Stable-diffusion"}
        if params.model not in checkpoints:
            raise BackendError(
                f"checkpoint with name {params.model}, type Stable-diffusion is not found",
                status=400,
                user_message=f"model not found: {params.model}",
            )
        vaes = {model.name for model in available if model.type == "VAE"}
        if params.vae not in _VAE_NOT_LOOKED_UP and params.vae not in vaes:
            raise BackendError(
                f"checkpoint with name {params.vae}, type VAE is not found",
                status=400,
                user_message=f"VAE not found: {params.vae}",
            )
