"""`A1111Backend`: jobs on an AUTOMATIC1111 / Forge WebUI started with `--api`.

The WebUI runs one job at a time (`queue_lock` in modules/api/api.py) and holds each HTTP
request open until its job is done, so this backend keeps the queue itself: jobs wait in a
first-in-first-out queue and at most `concurrency` requests are open at once (default 1).
Statuses are answered from memory: a queued job reports its place in the queue, a running one
the progress and live preview read from `GET /sdapi/v1/progress` (one reader for all jobs, every
`progress_interval` seconds, only while a job runs). Requests carry `force_task_id` (1.7+), so
`current_task` says which job the progress is about.

The request bodies are `cloud.esd.a1111`'s — the same `/sdapi/v1/img2img` JSON ESD forwards
to the WebUI — with the checkpoint and VAE added in `override_settings` (restored afterwards).

Durability: every job is written to `state_dir` (request, how often it was sent, outcome) before
it is queued. A job whose request was cut — by a restart of the bot (found again when the core
asks about it) or of the WebUI (the connection breaks) — is sent once more with the same body,
hence the same seed and the same images, and its status carries a note saying so; a job cut a
second time fails instead of being sent a third time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import sys
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import model_validator

from bot.config import Env, Secret, Section
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
from bot.retry import RetryPolicy
from cloud.a1111.client import (
    RequestCutError,
    WebUiClient,
    WebUiUnreachableError,
    decode_image,
    parse_progress,
)
from cloud.esd.a1111 import INTERROGATE_MODELS, img2img_payload, interrogate_payload
from cloud.job_folders import job_folder, read_output, write_output, write_whole

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from pathlib import Path

    import aiohttp

    from bot.config import Config
    from bot.ports import PollTarget

_LOGGER = logging.getLogger(__name__)

RESUBMITTED = (
    "the connection to the WebUI was cut (a restart of the bot or of the WebUI): the job was "
    "sent again with the same seed"
)
CUT_TWICE = (
    "the connection to the WebUI was cut again after the job had been sent a second time "
    "(restarts of the bot or of the WebUI); it is not sent a third time"
)
IMG2IMG = "/sdapi/v1/img2img"
INTERROGATE = "/sdapi/v1/interrogate"
# Catalogue routes per ESD model type (modules/api/api.py; `/sdapi/v1/loras` is the built-in
# Lora extension's, extensions-builtin/Lora/scripts/lora_script.py).
CATALOGUE: dict[str, str] = {
    "Stable-diffusion": "/sdapi/v1/sd-models",
    "VAE": "/sdapi/v1/sd-vae",
    "Lora": "/sdapi/v1/loras",
    "hypernetworks": "/sdapi/v1/hypernetworks",
    "embeddings": "/sdapi/v1/embeddings",
}
# `title` is "<name> [<short hash>]" once the WebUI has hashed the file (sd_models.py).
_TITLE_HASH = re.compile(r"\s\[[0-9a-fA-F]{8,10}\]$")
_PREVIEW_MAX = 4_000_000
_HISTORY = 1000  # finished jobs kept (without their results) for `history`
_RESULT = "result-{n}"  # a stored result image's file name (`cloud.job_folders`)


class A1111Settings(Section):
    """The WebUI backend's settings section (README "Run on your own GPU")."""

    a1111_api_url: Annotated[str | None, Env("A1111_API_URL")] = None
    # `user:password` (the WebUI's --api-auth).
    a1111_api_auth: Annotated[str | None, Secret("A1111_API_AUTH")] = None
    a1111_concurrency: int = 1  # jobs sent to the WebUI at once; it runs one at a time
    a1111_reconnect: float = 120.0  # seconds a job waits for a WebUI that is restarting

    @model_validator(mode="after")
    def _check(self) -> A1111Settings:
        if self.a1111_api_auth is not None and ":" not in self.a1111_api_auth:
            raise ConfigError("A1111_API_AUTH must be `user:password` (the WebUI's --api-auth)")
        if self.a1111_concurrency < 1:
            raise ConfigError("a1111_concurrency must be at least 1")
        if self.a1111_reconnect < 0:
            raise ConfigError("a1111_reconnect must be zero or more seconds")
        return self


@dataclass(frozen=True)
class A1111Config:
    """Settings of the WebUI backend (`A1111_API_URL`, `A1111_API_AUTH`, `a1111_*`)."""

    api_url: str
    auth: str | None = field(default=None, repr=False)  # `user:password` (--api-auth)
    concurrency: int = 1  # requests open at once; the WebUI itself runs one job at a time
    reconnect: float = 120.0  # seconds a job waits for an unreachable (restarting) WebUI
    state_dir: Path | None = None  # where jobs are kept so they survive a restart of the bot
    progress_interval: float = 1.0  # seconds between progress reads while a job runs
    timeout: float = 30.0  # per catalogue / progress request
    endpoint_name: str = "webui"

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("a1111_concurrency must be at least 1")
        if self.reconnect < 0 or self.progress_interval <= 0 or self.timeout <= 0:
            raise ConfigError("WebUI backend intervals must be positive seconds")

    @property
    def reconnect_policy(self) -> RetryPolicy:
        """How a job's request waits for an unreachable WebUI: quick retries at first (a
        restart takes seconds), every 5 s at most, for `reconnect` seconds; the time bounds
        it, not a count."""
        return RetryPolicy(
            attempts=sys.maxsize, backoff=0.2, max_backoff=5.0, within=self.reconnect
        )

    @classmethod
    def from_config(cls, a1111: A1111Settings, config: Config) -> A1111Config:
        """From its settings section; jobs are kept under the core's data_dir."""
        if not a1111.a1111_api_url:
            raise ConfigError("A1111_API_URL is not set")
        return cls(
            api_url=a1111.a1111_api_url,
            auth=a1111.a1111_api_auth,
            concurrency=a1111.a1111_concurrency,
            reconnect=a1111.a1111_reconnect,
            state_dir=config.data_dir / "a1111-backend",
        )


@dataclass(eq=False)
class _Job:
    """One job of the backend; mutable because its state moves on."""

    backend_id: str
    task_type: str  # img2img, interrogate_clip, interrogate_deepbooru (ESD's names)
    body: dict[str, Any]
    model: str | None
    created_at: datetime
    state: JobState = JobState.CREATED
    attempts: int = 0  # times the request was sent to the WebUI
    queued: bool = False  # handed to the queue (the port's "started"), after `created`
    reason: str | None = None
    note: str | None = None
    output: JobOutput | None = None
    progress: float | None = None
    preview: bytes | None = None
    task: asyncio.Task[None] | None = None

    @property
    def route(self) -> str:
        return IMG2IMG if self.task_type == "img2img" else INTERROGATE

    @property
    def image_count(self) -> int:
        """Images the job makes: `batch_size` per batch, `n_iter` batches."""
        count = 1
        for key in ("batch_size", "n_iter"):
            value = self.body.get(key, 1)
            count *= value if isinstance(value, int) and value > 0 else 1
        return count


class A1111Backend:
    """The WebUI backend (README "Run on your own GPU"); implements `bot.ports.Backend`."""

    name = "a1111"

    def __init__(
        self, config: A1111Config, *, trace_configs: Sequence[aiohttp.TraceConfig] = ()
    ) -> None:
        """`trace_configs` observe the WebUI requests (operators' metrics, `adapters.web`)."""
        self._config = config
        self._client = WebUiClient(
            config.api_url, config.auth, timeout=config.timeout, trace_configs=trace_configs
        )
        # Insertion order = submission order. Bounded: jobs in flight, and the newest
        # `_HISTORY` finished ones without their results (`release`).
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[_Job] = deque()
        self._running: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress: asyncio.Task[None] | None = None
        self._writing: dict[str, asyncio.Future[None]] = {}  # folder writes still running
        self._closed = False

    @classmethod
    def from_config(
        cls,
        a1111: A1111Settings,
        config: Config,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> A1111Backend:
        return cls(A1111Config.from_config(a1111, config), trace_configs=trace_configs)

    @property
    def client(self) -> WebUiClient:
        return self._client

    # -- Lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._client.start()
        if self._config.state_dir is not None:
            await asyncio.to_thread(self._config.state_dir.mkdir, parents=True, exist_ok=True)
        self._closed = False

    async def aclose(self) -> None:
        """Stop sending; requests in flight are dropped and sent again on the next start."""
        self._closed = True
        tasks = [*self._tasks, *([self._progress] if self._progress else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._client.aclose()

    # -- Catalogue ----------------------------------------------------------------------------

    async def endpoints(self) -> Sequence[Endpoint]:
        """The WebUI as one endpoint; raises with a clear message when it is unreachable."""
        await self._client.progress(with_image=False)
        return (
            Endpoint(
                name=self._config.endpoint_name,
                status="InService",
                type=EndpointType.ASYNC,
                instance_type=f"WebUI at {self._client.host}",
                instance_count=1,
            ),
        )

    async def models(self, model_type: str | None = None) -> Sequence[Model]:
        kinds = [model_type] if model_type is not None else list(CATALOGUE)
        found: list[Model] = []
        for kind in kinds:
            route = CATALOGUE.get(kind)
            if route is None:
                continue
            try:
                answer = await self._client.get(route)
            except BackendError as exc:
                if kind == "Lora" and exc.status == 404:
                    continue  # the Lora extension is disabled: no LoRAs
                raise
            found.extend(Model(name=name, type=kind) for name in catalogue_names(kind, answer))
        return found

    async def samplers(self) -> list[str]:
        """Sampler names (`GET /sdapi/v1/samplers`, `SamplerItem`)."""
        answer = await self._client.get("/sdapi/v1/samplers")
        items = answer if isinstance(answer, list) else []
        return [i["name"] for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]

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
        backend_id = str(uuid.uuid4())
        body = img2img_payload(params, init_png, mask_png)
        # The checkpoint and VAE of this job only; the WebUI puts its own back afterwards.
        overrides = body.get("override_settings")
        body["override_settings"] = {
            **(overrides if isinstance(overrides, dict) else {}),
            "sd_model_checkpoint": params.model,
            "sd_vae": params.vae or "Automatic",
        }
        body["override_settings_restore_afterwards"] = True
        # 1.7+: the id `current_task` of /sdapi/v1/progress reports (older WebUIs ignore it).
        body["force_task_id"] = backend_id
        job = _Job(backend_id, "img2img", body, params.model, datetime.now(UTC))
        return await self._accept(job_id, job, created)

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
        if params.method not in INTERROGATE_MODELS:
            raise BackendError(
                f"unknown interrogate method {params.method!r}",
                status=400,
                user_message=f"unknown interrogate method: {params.method} (use clip or deepbooru)",
            )
        body = interrogate_payload(image_png, params.method)
        job = _Job(str(uuid.uuid4()), f"interrogate_{params.method}", body, None, datetime.now(UTC))
        return await self._accept(job_id, job, created)

    async def _accept(
        self, job_id: str, job: _Job, created: Callable[[str], Awaitable[None]] | None
    ) -> Submitted:
        """Write the job down, let the core record its id (`Backend.submit`), then queue it."""
        await self._write_request(job)
        if created is not None:
            try:
                await created(job.backend_id)
            except BaseException:
                await self._forget(job.backend_id)
                raise
        job.queued = True
        await self._write_state(job)
        self._jobs[job.backend_id] = job
        self._queue.append(job)
        _LOGGER.info(
            "WebUI job %s (%s) for bot job %s, %d queued",
            job.backend_id,
            job.task_type,
            job_id,
            len(self._queue),
        )
        self._pump()
        return Submitted(backend_id=job.backend_id, endpoint=self._config.endpoint_name)

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        answer: dict[str, BackendStatus] = {}
        positions = {job.backend_id: n for n, job in enumerate(self._queue, start=1)}
        for target in targets:
            job = self._jobs.get(target.backend_id) or await self._revive(target.backend_id)
            if job is None:
                answer[target.backend_id] = BackendStatus(
                    target.backend_id, JobState.FAILED, reason=LOST_JOB
                )
                continue
            answer[job.backend_id] = BackendStatus(
                backend_id=job.backend_id,
                state=job.state,
                reason=job.reason,
                queue_position=positions.get(job.backend_id),
                progress=job.progress,
                preview=job.preview,
                note=job.note,
            )
        return answer

    async def results(self, backend_id: str) -> JobOutput:
        job = self._jobs.get(backend_id) or await self._revive(backend_id)
        if job is None:
            raise BackendError(f"WebUI job {backend_id} is not known", status=404)
        if job.state is JobState.FAILED:
            raise JobFailedError(f"WebUI job {backend_id} failed: {job.reason}")
        if job.state is not JobState.SUCCEED or job.output is None:
            raise BackendError(f"WebUI job {backend_id} has no results yet: it is {job.state}")
        return job.output

    async def refresh(self, backend_id: str) -> None:
        """Nothing to do: results are kept by this backend, no URLs expire."""

    async def cancel(self, backend_id: str) -> None:
        """A queued job leaves the queue; a running one is interrupted (`/sdapi/v1/interrupt`)
        when the WebUI says it is the one it is working on."""
        job = self._jobs.pop(backend_id, None)
        if job is not None:
            with contextlib.suppress(ValueError):
                self._queue.remove(job)
            if backend_id in self._running and job.task is not None:
                if await self._is_current(job):
                    try:
                        await self._client.interrupt()
                    except BackendError as exc:
                        _LOGGER.warning("WebUI interrupt of %s failed: %s", backend_id, exc)
                job.task.cancel()
                await asyncio.wait([job.task])
        await self._forget(backend_id)

    async def release(self, backend_id: str) -> None:
        """The core stored the results: drop them here and on disk; history keeps the row."""
        job = self._jobs.get(backend_id)
        if job is not None and job.state.terminal:
            job.output, job.body = None, {}
        await self._forget(backend_id)
        done = [j.backend_id for j in self._jobs.values() if j.state.terminal and not j.body]
        for old in done[: max(0, len(done) - _HISTORY)]:
            del self._jobs[old]

    async def _forget(self, backend_id: str) -> None:
        """Remove the job's folder, after any write to it still running in a thread."""
        writing = self._writing.get(backend_id)
        if writing is not None:
            await asyncio.wait([writing])
        folder = self._folder(backend_id)
        if folder is not None:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    async def _io(self, backend_id: str, work: Callable[[], None]) -> None:
        """Run a write to the job's folder in a thread; `_forget` waits for it even when the
        caller was cancelled meanwhile (a thread cannot be)."""
        task: asyncio.Future[None] = asyncio.ensure_future(asyncio.to_thread(work))
        self._writing[backend_id] = task

        def done(_: asyncio.Future[None]) -> None:
            if self._writing.get(backend_id) is task:
                del self._writing[backend_id]

        task.add_done_callback(done)
        await asyncio.shield(task)

    async def _is_current(self, job: _Job) -> bool:
        """Whether the WebUI is working on `job` (rather than on a request before it)."""
        try:
            progress = await self._client.progress(with_image=False)
        except BackendError:
            return len(self._running) == 1
        if progress.task is not None:
            return progress.task == job.backend_id
        return len(self._running) == 1 and progress.job_count > 0

    async def history(self, task_type: str, limit: int) -> Sequence[CloudJob]:
        rows = [job for job in reversed(self._jobs.values()) if job.task_type == task_type]
        return [self._row(job) for job in rows[: max(limit, 0)]]

    async def job(self, backend_id: str) -> CloudJob | None:
        """A job this backend queued (the WebUI keeps no job history of its own to ask)."""
        job = self._jobs.get(backend_id)
        return None if job is None else self._row(job)

    def _row(self, job: _Job) -> CloudJob:
        return CloudJob(
            backend_id=job.backend_id,
            task_type=job.task_type,
            state=job.state.value,
            created_at=job.created_at,
            endpoint=self._config.endpoint_name,
            model=job.model,
            reason=job.reason,
        )

    # -- The queue ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send queued jobs while fewer than `concurrency` requests are open."""
        while not self._closed and self._queue and len(self._running) < self._config.concurrency:
            job = self._queue.popleft()
            self._running[job.backend_id] = job
            task = asyncio.create_task(self._run(job), name=f"a1111-job-{job.backend_id}")
            job.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        idle = self._progress is None or self._progress.done()
        if not self._closed and self._running and idle:
            self._progress = asyncio.create_task(self._watch_progress(), name="a1111-progress")

    async def _run(self, job: _Job) -> None:
        output: JobOutput | None = None
        reason: str | None = None
        try:
            output = await self._send(job)
        except BackendError as exc:
            _LOGGER.warning("WebUI job %s failed: %s", job.backend_id, exc)
            reason = exc.user_message or str(exc)
        finally:
            self._running.pop(job.backend_id, None)
            self._pump()
        # The outcome is on disk before anyone can see it (and `release` or `cancel` remove it).
        state = JobState.FAILED if output is None else JobState.SUCCEED
        if output is not None:
            await self._write_output(job, output)
        await self._write_state(job, state, reason)
        job.state, job.reason, job.output = state, reason, output
        job.progress = job.preview = None
        if output is None:
            job.body = {}  # nothing more to send; the failure is all that is kept

    async def _send(self, job: _Job) -> JobOutput:
        """Send the job's request until the WebUI answers: an unreachable WebUI is waited for
        under `A1111Config.reconnect_policy`, a cut request is sent once more."""
        while True:
            if job.attempts >= 2:
                raise BackendError(CUT_TWICE, user_message=CUT_TWICE)
            try:
                answer = await self._config.reconnect_policy.run(
                    lambda: self._post(job),
                    retry_if=lambda exc: isinstance(exc, WebUiUnreachableError),
                    what=f"WebUI job {job.backend_id}",
                )
            except RequestCutError:
                _LOGGER.warning("WebUI job %s: the request was cut", job.backend_id)
                job.note = RESUBMITTED
                continue
            return parse_output(job.task_type, answer, job.image_count)

    async def _post(self, job: _Job) -> Any:
        """Send the job's request once, its state on disk first (`attempts` counts the sends
        that reached the WebUI)."""
        job.attempts += 1
        job.state = JobState.INPROGRESS
        await self._write_state(job)
        try:
            return await self._client.post(job.route, job.body, held=True)
        except WebUiUnreachableError:
            job.attempts -= 1  # never reached the WebUI: not a resubmission
            job.state = JobState.CREATED
            await self._write_state(job)
            raise

    async def _watch_progress(self) -> None:
        """Read `/sdapi/v1/progress` while jobs run and give it to the job it is about."""
        while self._running:
            try:
                progress = await self._client.progress(with_image=True)
            except BackendError as exc:
                _LOGGER.debug("WebUI progress read failed: %s", exc)
            else:
                job = None
                if progress.task is not None:
                    job = self._running.get(progress.task)
                elif len(self._running) == 1 and progress.job_count > 0:
                    [job] = self._running.values()
                if job is not None and job.state is JobState.INPROGRESS:
                    job.progress = progress.progress
                    if progress.image is not None and len(progress.image) <= _PREVIEW_MAX:
                        job.preview = progress.image
            await asyncio.sleep(self._config.progress_interval)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailableError("the WebUI backend is closed")

    def _check_endpoint(self, endpoint: str) -> None:
        available = self._config.endpoint_name
        if endpoint != available:
            raise BackendError(
                f"unknown endpoint {endpoint!r}; the WebUI backend has {available!r}",
                status=400,
                user_message=f"endpoint not found: {endpoint} (available: {available})",
            )

    # -- Surviving restarts -------------------------------------------------------------------

    def _folder(self, backend_id: str) -> Path | None:
        return job_folder(self._config.state_dir, backend_id)

    async def _write_request(self, job: _Job) -> None:
        folder = self._folder(job.backend_id)
        if folder is None:
            return
        request = {
            "task_type": job.task_type,
            "model": job.model,
            "created_at": job.created_at.isoformat(),
            "body": job.body,
        }

        def write() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            write_whole(folder / "request.json", json.dumps(request))
            write_whole(folder / "state.json", json.dumps({"attempts": 0, "queued": False}))

        await self._io(job.backend_id, write)

    async def _write_state(
        self, job: _Job, outcome: JobState | None = None, reason: str | None = None
    ) -> None:
        folder = self._folder(job.backend_id)
        if folder is None:
            return
        state = {
            "attempts": job.attempts,
            "state": (outcome or job.state).value,
            "reason": reason if outcome is not None else job.reason,
            "queued": job.queued,
        }

        def write() -> None:
            if folder.is_dir():  # not when cancelled meanwhile
                write_whole(folder / "state.json", json.dumps(state))

        await self._io(job.backend_id, write)

    async def _write_output(self, job: _Job, output: JobOutput) -> None:
        folder = self._folder(job.backend_id)
        if folder is None:
            return

        await self._io(job.backend_id, lambda: write_output(folder, output, _RESULT))

    async def _revive(self, backend_id: str) -> _Job | None:
        """A job an earlier process took: its outcome, or the job queued (and sent) again."""
        folder = self._folder(backend_id)
        if folder is None or self._closed:
            return None
        stored = await asyncio.to_thread(_read_folder, folder)
        if stored is None or backend_id in self._jobs:
            return self._jobs.get(backend_id)
        request, state, output = stored
        model = request.get("model")
        job = _Job(
            backend_id=backend_id,
            task_type=str(request["task_type"]),
            body=dict(request["body"]),
            model=model if isinstance(model, str) else None,
            created_at=datetime.fromisoformat(str(request["created_at"])),
            attempts=int(state.get("attempts", 0)),
            queued=bool(state.get("queued")),
        )
        self._jobs[backend_id] = job
        if not state.get("queued"):
            pass  # created, never queued: it stays `created` until the core cancels it
        elif output is not None:
            job.state, job.output = JobState.SUCCEED, output
        elif state.get("state") == JobState.FAILED.value:
            job.state, job.reason = JobState.FAILED, str(state.get("reason") or CUT_TWICE)
        elif job.attempts >= 2:
            job.state, job.reason = JobState.FAILED, CUT_TWICE
            await self._write_state(job)
        else:
            if job.attempts == 1:
                job.note = RESUBMITTED  # the bot stopped while the WebUI had the request
            _LOGGER.info("WebUI job %s queued again after a restart", backend_id)
            self._queue.append(job)
            self._pump()
        return job


def _read_folder(
    folder: Path,
) -> tuple[dict[str, Any], dict[str, Any], JobOutput | None] | None:
    """A stored job's request, state and (when it succeeded) output; None if absent."""
    if not folder.is_dir():
        return None  # cancelled, released, or never this backend's
    try:
        request = json.loads((folder / "request.json").read_text())
        state = json.loads((folder / "state.json").read_text())
        output = read_output(folder, _RESULT)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _LOGGER.warning("WebUI job folder %s is unreadable: %s", folder, exc)
        return None
    if not isinstance(request, dict) or not isinstance(state, dict):
        return None
    if not isinstance(request.get("body"), dict):
        return None
    return request, state, output


def catalogue_names(kind: str, answer: object) -> list[str]:
    """Model names from a catalogue answer (`SDModelItem`, `SDVaeItem`, `EmbeddingsResponse`,
    the Lora extension's items, `HypernetworkItem`), skipping items of another shape."""
    if kind == "embeddings":
        loaded = answer.get("loaded") if isinstance(answer, dict) else None
        return sorted(loaded) if isinstance(loaded, dict) else []
    key = {"Stable-diffusion": "title", "VAE": "model_name"}.get(kind, "name")
    names = []
    for item in answer if isinstance(answer, list) else []:
        value = item.get(key) if isinstance(item, dict) else None
        if isinstance(value, str) and value:
            # A checkpoint's title ends with its hash once computed; the name is what
            # `sd_model_checkpoint` accepts whether hashed or not (`checkpoint_aliases`).
            names.append(_TITLE_HASH.sub("", value) if kind == "Stable-diffusion" else value)
    return names


def parse_output(task_type: str, answer: object, count: int) -> JobOutput:
    """The job's result from the WebUI's answer (`ImageToImageResponse`: base64 `images`, `info`
    a JSON text with `infotexts`; `InterrogateResponse`: `caption`)."""
    data = answer if isinstance(answer, dict) else {}
    if task_type != "img2img":
        caption = data.get("caption")
        if not isinstance(caption, str):
            raise BackendError(
                "the WebUI's interrogate answer has no caption",
                user_message="the WebUI returned no caption",
            )
        return JobOutput(caption=caption.strip())
    raw_images = data.get("images")
    if not isinstance(raw_images, list) or not raw_images:
        raise BackendError(
            "the WebUI's img2img answer has no images",
            user_message="the WebUI returned no images",
        )
    images = []
    # Extensions may append extra pictures (masks, grids) after the job's own.
    for raw in raw_images[:count]:
        image = decode_image(raw)
        if image is None:
            raise BackendError(
                "the WebUI's img2img answer holds something that is not an image",
                user_message="the WebUI returned an image this bot cannot read",
            )
        images.append(image)
    infotext = None
    info = data.get("info")
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        texts = json.loads(info).get("infotexts") if isinstance(info, str) else None
        if isinstance(texts, list) and texts and isinstance(texts[0], str):
            infotext = texts[0]
    return JobOutput(images=tuple(images), infotext=infotext)


__all__ = ["A1111Backend", "A1111Config", "catalogue_names", "parse_output", "parse_progress"]
