"""`LocalBackend`: ESD's job life, in process, on the preview engine.

It owns a table of jobs that move through ESD's states (`created` → `inprogress` →
`succeed` / `failed`), one always-`InService` endpoint, a model list made of a built-in checkpoint
plus the files of an optional local folder laid out by ESD type, and the asyncio tasks that run the
jobs. Rendering and captioning happen in worker threads (`cloud.local.preview`), so the event loop
never blocks. Every job's end is decided in one method, `_outcome`, which is where latency and
failures can be injected.

With a `state_dir`, every job's request and result are also written to disk (one folder per
backend id), so a bot restarted with jobs in flight finds them again: a finished job's result is
read back, an unfinished one is run again — the engine is deterministic, so the images are the
same ones the lost run would have made.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import model_validator

from bot.config import Section
from bot.errors import BackendError, BackendUnavailableError, ConfigError, JobFailedError
from bot.model import (
    BackendStatus,
    CloudJob,
    Endpoint,
    EndpointType,
    GenerationParams,
    InterrogateParams,
    JobOutput,
    JobState,
    Model,
    Submitted,
)
from bot.ports import LOST_JOB
from bot.records import params_value, read_params
from cloud.job_folders import job_folder, read_output, write_output, write_whole
from cloud.local.preview import caption, render, render_infotext

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from bot.config import Config
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
# Delivered jobs kept (without their results) for `history`.
_HISTORY = 1000
_RESULT = "result-{n}.png"  # a stored result image's file name (`cloud.job_folders`)


class LocalSettings(Section):
    """The local backend's settings section (`sdbot.toml` / `SDBOT_LOCAL_…`)."""

    local_delay: float = 1.0  # seconds each job takes
    local_models_dir: Path | None = None  # <dir>/<Stable-diffusion|Lora|VAE|…>/<file>

    @model_validator(mode="after")
    def _check(self) -> LocalSettings:
        if self.local_delay < 0:
            raise ConfigError("SDBOT_LOCAL_DELAY must be zero or more seconds")
        return self


@dataclass(frozen=True)
class LocalBackendConfig:
    """Settings of the local backend (`SDBOT_LOCAL_DELAY` sets `delay`)."""

    delay: float = 1.0  # seconds a job takes, from submission to its result
    # Optional folder of model files: <dir>/<ESD type>/<file>, e.g. models/Lora/style.safetensors.
    models_dir: Path | None = None
    endpoint_name: str = "local-preview"
    # Optional folder where jobs are kept so they survive a restart of the bot.
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay) and self.delay >= 0):
            raise ConfigError(f"local backend delay must be seconds >= 0, got {self.delay!r}")
        if not self.endpoint_name.strip():
            raise ConfigError("local backend endpoint name must not be empty")

    @classmethod
    def from_settings(cls, local: LocalSettings, core: Config) -> LocalBackendConfig:
        """The backend's configuration from its settings section; jobs kept under data_dir."""
        return cls(
            delay=local.local_delay,
            models_dir=local.local_models_dir,
            state_dir=core.data_dir / "local-backend",
        )


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
    released: bool = False  # delivered: output dropped, kept only for `history`


def _row(record: _LocalJob) -> CloudJob:
    """A job as the backend's own history shows it."""
    return CloudJob(
        backend_id=record.backend_id,
        task_type=record.task_type,
        state=record.state.value,
        created_at=record.created_at,
        endpoint=record.endpoint,
        model=record.model,
        reason=record.reason,
    )


class LocalBackend:
    """The embedded backend (SPEC §4 "Local"); implements `bot.ports.Backend`."""

    name = "local"

    def __init__(self, config: LocalBackendConfig) -> None:
        self._config = config
        # Insertion order = submission order. Bounded: jobs in flight, and the newest
        # `_HISTORY` released ones (`_released`).
        self._jobs: dict[str, _LocalJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._released: collections.deque[str] = collections.deque()
        self._closed = False

    # -- Lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        models_dir = self._config.models_dir
        if models_dir is not None and not await asyncio.to_thread(models_dir.is_dir):
            raise ConfigError(f"local backend models folder is not a directory: {models_dir}")
        if self._config.state_dir is not None:
            await asyncio.to_thread(self._config.state_dir.mkdir, parents=True, exist_ok=True)
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
                type=EndpointType.ASYNC,
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
        self,
        job_id: str,
        params: GenerationParams,
        init_png: bytes,
        mask_png: bytes | None,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted:
        self._check_open()
        self._check_endpoint(params.endpoint)
        await self._check_models(params)
        request: dict[str, object] = {"task_type": "img2img", "params": params_value(params)}
        files = {"init.png": init_png} | ({"mask.png": mask_png} if mask_png else {})
        backend_id = await self._persist(request | {"model": params.model}, files)
        await self._created(backend_id, created)
        await self._mark_started(backend_id)
        record = self._launch(
            job_id, "img2img", params.model, _img2img_work(params, files), backend_id=backend_id
        )
        return Submitted(backend_id=record.backend_id, endpoint=record.endpoint)

    async def interrogate(
        self,
        job_id: str,
        params: InterrogateParams,
        image_png: bytes,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
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

        task_type = f"interrogate_{method}"
        files = {"init.png": image_png}
        backend_id = await self._persist({"task_type": task_type, "model": None}, files)
        await self._created(backend_id, created)
        await self._mark_started(backend_id)
        record = self._launch(
            job_id, task_type, None, _interrogate_work(method, files), backend_id=backend_id
        )
        return Submitted(backend_id=record.backend_id, endpoint=record.endpoint)

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        answer: dict[str, BackendStatus] = {}
        for target in targets:
            record = self._jobs.get(target.backend_id) or await self._revive(target.backend_id)
            if record is None:
                # Not in the table nor on disk: a restart without a state folder lost it.
                answer[target.backend_id] = BackendStatus(
                    target.backend_id, JobState.FAILED, reason=LOST_JOB
                )
                continue
            answer[record.backend_id] = BackendStatus(
                backend_id=record.backend_id, state=record.state, reason=record.reason
            )
        return answer

    async def results(self, backend_id: str) -> JobOutput:
        record = self._jobs.get(backend_id) or await self._revive(backend_id)
        if record is None:
            raise BackendError(f"inference with id {backend_id} not found", status=404)
        if record.state is JobState.FAILED:
            raise JobFailedError(f"job {backend_id} failed: {record.reason}")
        if record.state is not JobState.SUCCEED or record.output is None:
            raise BackendError(f"job {backend_id} has no results yet: it is {record.state}")
        return record.output

    async def release(self, backend_id: str) -> None:
        """Drop a delivered job's result bytes and its state folder; a short row stays for
        `history` (the newest `_HISTORY` finished jobs)."""
        record = self._jobs.get(backend_id)
        if record is not None and not record.released:
            record.output = None
            record.released = True
            self._released.append(backend_id)
        folder = self._folder(backend_id)
        if folder is not None:
            await asyncio.to_thread(shutil.rmtree, folder, True)
        while len(self._released) > _HISTORY:
            self._jobs.pop(self._released.popleft(), None)

    async def refresh(self, backend_id: str) -> None:
        """Nothing to do: results are held in memory, there are no URLs to expire."""

    async def cancel(self, backend_id: str) -> None:
        """Stop the job and drop it from the table, as ESD's `DELETE /inferences` does."""
        record = self._jobs.pop(backend_id, None)
        folder = self._folder(backend_id)
        if folder is not None:
            await asyncio.to_thread(shutil.rmtree, folder, True)
        if record is None or record.task is None:
            return  # unknown ids are skipped, as on ESD
        record.task.cancel()
        await asyncio.wait([record.task])

    async def history(self, task_type: str, limit: int) -> Sequence[CloudJob]:
        rows = [record for record in reversed(self._jobs.values()) if record.task_type == task_type]
        return [_row(record) for record in rows[: max(limit, 0)]]

    async def job(self, backend_id: str) -> CloudJob | None:
        record = self._jobs.get(backend_id)
        return None if record is None else _row(record)

    # -- Running jobs -------------------------------------------------------------------------

    async def _created(
        self, backend_id: str, created: Callable[[str], Awaitable[None]] | None
    ) -> None:
        """Tell the bot the job's id before it runs; if that fails, the job never runs."""
        if created is None:
            return
        try:
            await created(backend_id)
        except BaseException:
            folder = self._folder(backend_id)
            if folder is not None:
                await asyncio.to_thread(shutil.rmtree, folder, True)
            raise

    def _launch(
        self,
        job_id: str,
        task_type: str,
        model: str | None,
        work: Callable[[], JobOutput],
        *,
        backend_id: str | None = None,
        created_at: datetime | None = None,
        state: JobState = JobState.CREATED,
    ) -> _LocalJob:
        record = _LocalJob(
            backend_id=backend_id or str(uuid.uuid4()),
            task_type=task_type,
            endpoint=self._config.endpoint_name,
            model=model,
            created_at=created_at or datetime.now(UTC),
            state=state,
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
            await self._persist_output(record.backend_id, output)
            record.state = JobState.SUCCEED

    async def _outcome(self, record: _LocalJob, work: Callable[[], JobOutput]) -> JobOutput:
        """Decide how a job ends: its output, or an exception that fails it with that reason.

        The one seam for fault injection (added latency, forced failures).
        """
        return await asyncio.to_thread(work)

    # -- Surviving restarts -------------------------------------------------------------------

    def _folder(self, backend_id: str) -> Path | None:
        return job_folder(self._config.state_dir, backend_id)

    async def _persist(self, request: dict[str, object], files: dict[str, bytes]) -> str:
        """Pick the new job's backend id and, with a state dir, write its request down first."""
        backend_id = str(uuid.uuid4())
        folder = self._folder(backend_id)
        if folder is None:
            return backend_id
        request = request | {"created_at": datetime.now(UTC).isoformat()}

        def write() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (folder / name).write_bytes(data)
            write_whole(folder / "request.json", json.dumps(request))

        await asyncio.to_thread(write)
        return backend_id

    async def _mark_started(self, backend_id: str) -> None:
        """Write down that the job was started: a restarted backend runs only started jobs
        again, and leaves the others `created` (as ESD does), for the bot to decide."""
        folder = self._folder(backend_id)
        if folder is not None:
            await asyncio.to_thread((folder / "started").touch)

    async def _persist_output(self, backend_id: str, output: JobOutput) -> None:
        folder = self._folder(backend_id)
        if folder is None:
            return

        await asyncio.to_thread(write_output, folder, output, _RESULT)

    async def _revive(self, backend_id: str) -> _LocalJob | None:
        """A job an earlier process started: its stored result, or the job run again."""
        folder = self._folder(backend_id)
        if folder is None or self._closed:
            return None
        stored = await asyncio.to_thread(_read_folder, folder)
        if stored is None:
            return None
        request, files, output = stored
        task_type = str(request["task_type"])
        created = datetime.fromisoformat(str(request["created_at"]))
        model = request.get("model")
        if output is not None:
            record = _LocalJob(
                backend_id,
                task_type,
                self._config.endpoint_name,
                model if isinstance(model, str) else None,
                created,
                JobState.SUCCEED,
                output=output,
            )
            self._jobs[backend_id] = record
            return record
        if not request.get("started"):
            # Created but never started: it stays `created` until it is cancelled.
            record = _LocalJob(
                backend_id,
                task_type,
                self._config.endpoint_name,
                model if isinstance(model, str) else None,
                created,
            )
            self._jobs[backend_id] = record
            return record
        if task_type == "img2img":
            params = read_params(request["params"])
            work = _img2img_work(params, files)
        else:
            work = _interrogate_work(task_type.removeprefix("interrogate_"), files)
        log.info("local job %s resumed after a restart", backend_id)
        return self._launch(
            "(resumed)",
            task_type,
            model if isinstance(model, str) else None,
            work,
            backend_id=backend_id,
            created_at=created,
            state=JobState.INPROGRESS,  # it had been started: it never goes back to `created`
        )

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


def _img2img_work(params: GenerationParams, files: dict[str, bytes]) -> Callable[[], JobOutput]:
    def work() -> JobOutput:
        images = render(files["init.png"], files.get("mask.png"), params)
        # ESD's WebUI shows `infotexts[0]`; the other images differ only by seed + i.
        masked = "mask.png" in files
        return JobOutput(images=tuple(images), infotext=render_infotext(params, 0, masked=masked))

    return work


def _interrogate_work(method: str, files: dict[str, bytes]) -> Callable[[], JobOutput]:
    def work() -> JobOutput:
        return JobOutput(caption=caption(files["init.png"], method))

    return work


def _read_folder(
    folder: Path,
) -> tuple[dict[str, object], dict[str, bytes], JobOutput | None] | None:
    """A stored job's request, input files and (when it finished) output; None if absent."""
    try:
        request = json.loads((folder / "request.json").read_text())
        if isinstance(request, dict):
            request["started"] = (folder / "started").exists()
        files = {
            name: (folder / name).read_bytes()
            for name in ("init.png", "mask.png")
            if (folder / name).exists()
        }
        output = read_output(folder, _RESULT)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("local job folder %s is unreadable: %s", folder, exc)
        return None
    if not isinstance(request, dict):
        return None
    return request, files, output
