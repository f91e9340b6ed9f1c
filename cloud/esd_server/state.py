"""Live state of one ESD-compatible server: endpoints, jobs, stored objects, faults and counters.

`ServerState` is what ESD keeps in DynamoDB and S3 and what SageMaker does, in memory: the endpoint
table (the configured `sd` endpoints plus a ComfyUI one, as real tables mix them), the inference
job table (bounded; the oldest idle jobs are evicted first), the bucket (`PresignedStorage`), the
model catalogue (the local backend's: a built-in checkpoint plus `models_dir`), and the asyncio
tasks that run started jobs on the preview engine in worker threads. Faults are drawn here from
seeded generators, so a test that sets `faults` replays the same sequence every time. Routes
(`cloud.esd_server.app`) translate HTTP into calls on this object and its records back into JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from bot.clock import SystemClock
from bot.errors import ConfigError
from bot.model import JobState
from cloud.esd_server.config import EndpointSpec, Faults, ServerConfig
from cloud.esd_server.payload import PayloadError, loads, parse_img2img, parse_interrogate
from cloud.esd_server.storage import PresignedStorage
from cloud.local.backend import LocalBackend, LocalBackendConfig
from cloud.local.preview import ENGINE_NAME, caption, render, render_infotext

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

_LOGGER = logging.getLogger(__name__)

# Bounds: the job table is memory, and so is every payload and image in the bucket.
MAX_JOBS = 10_000
MAX_STORED_BYTES = 1024**3
# Every known user holds ESD's built-in administrator role (`api` is seeded with it).
USER_ROLE = "IT Operator"
# ComfyUI endpoints share ESD's endpoint table; clients must keep only `service_type` sd.
COMFY_ENDPOINT = EndpointSpec("comfy-async-local", "Async")
IMG2IMG = "img2img"
INTERROGATE_TASKS: tuple[str, ...] = ("interrogate_clip", "interrogate_deepbooru")
TASK_TYPES: tuple[str, ...] = (IMG2IMG, *INTERROGATE_TASKS)
# ESD does not look these VAE names up (`_get_checkpoint_by_name`).
_VAE_NOT_LOOKED_UP = ("Automatic", "None")
_ID_NAMESPACE = uuid.UUID("5b0f3a53-6c2e-4d0b-9a57-2f6f3c1e9d41")
_FAULT_REASON = (
    "Received server error (500) from primary with message "
    '"{{"error": "injected failure: this job was picked by the server\'s fail_rate"}}". '
    "See CloudWatch logs for the endpoint {endpoint}."
)


class WallClock(Protocol):
    """What the server reads the time from (timestamps, URL expiry); tests may stop it."""

    def now(self) -> datetime: ...


class LambdaError(Exception):
    """An error the Lambda answers in ESD's envelope (400 / 401 / 403 / 404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class GatewayError(Exception):
    """An error API Gateway answers itself: `{"message", "requestId"}`, no `x-api-version`."""

    def __init__(
        self, status: int, message: str, error_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = dict(headers or {})


class ApiFault(enum.Enum):
    NONE = "none"
    THROTTLE = "throttle"
    ERROR = "error"
    HANG = "hang"


@dataclass(frozen=True)
class ApiFaultDraw:
    kind: ApiFault
    status: int = 0  # the HTTP status of an ERROR draw


class JobOutcome(enum.Enum):
    SUCCEED = "succeed"
    FAIL = "fail"
    FAIL_SILENT = "fail-silent"
    STUCK = "stuck"


@dataclass(frozen=True)
class Checkpoint:
    """A model file as ESD's checkpoint table holds it."""

    id: str
    name: str
    type: str
    s3_location: str
    created: float


@dataclass(eq=False)
class EndpointRecord:
    """One row of the endpoint table; mutable because tests move it between states."""

    id: str
    name: str
    type: str
    status: str
    instance_type: str
    instance_count: int
    min_instances: int
    max_instances: int
    service_type: str
    start_time: datetime
    end_time: datetime | None
    error: str | None = None
    warm_at: float | None = None  # loop time when a scale-out from zero completes


@dataclass(eq=False)
class JobRecord:
    """One row of the inference job table, plus the task that runs it."""

    id: str
    task_type: str
    inference_type: str
    endpoint: EndpointRecord
    owner: str
    created: datetime
    used_models: dict[str, list[dict[str, str]]]
    input_key: str  # the payload's key in the bucket
    input_s3: str  # the same as an s3:// URI, as ESD stores it
    upload_url: str | None
    payload_string: str | None = None
    workflow: str | None = None
    status: JobState = JobState.CREATED
    started: datetime | None = None
    completed: datetime | None = None
    image_names: list[str] = field(default_factory=list)
    caption: str | None = None
    sagemaker_raw: str | None = None
    output_path: str | None = None
    task: asyncio.Task[None] | None = None
    # Set by `ServerState.finish`: every remaining wait of the job ends at once.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def result_prefix(self) -> str:
        return f"out/{self.id}/result/"

    @property
    def param_key(self) -> str:
        return f"{self.result_prefix}{self.id}_param.json"


@dataclass(frozen=True)
class _Result:
    images: tuple[bytes, ...] = ()
    param_json: bytes | None = None
    caption: str | None = None


class ServerState:
    """Everything one server knows; what tests read and steer while the server runs.

    - `jobs`: job id → `JobRecord` (`.status` is a `JobState`, `.sagemaker_raw`, `.task`, …)
    - `endpoints`: name → `EndpointRecord`; `set_endpoint_status`, `set_instance_count`
    - `faults`: assignable at run time; assigning restarts the fault sequences from its seed
    - `requests`: a `Counter` of requests per route name: ping, create_inference,
      start_inference, get_inference, list_inferences, delete_inferences, list_endpoints,
      list_checkpoints, s3_put, s3_get
    - `finish(job_id)`: end a started job now; `clock`: where timestamps and URL expiry come from
    - `storage`: the bucket (`PresignedStorage.objects`: key → bytes)
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.clock: WallClock = SystemClock()  # aware UTC `now()`; tests may swap it
        self.requests: Counter[str] = Counter()  # route name → requests received
        self.jobs: dict[str, JobRecord] = {}  # insertion order = creation order
        self.storage = PresignedStorage(config.url_ttl, lambda: self.clock.now().timestamp())
        self._booted = self.clock.now()
        self.endpoints: dict[str, EndpointRecord] = {}
        for index, spec in enumerate((*config.endpoints, COMFY_ENDPOINT)):
            self.endpoints[spec.name] = self._endpoint_record(spec, index)
        # The catalogue is the local backend's: the built-in checkpoint plus `models_dir`.
        self._catalogue = LocalBackend(LocalBackendConfig(models_dir=config.models_dir))
        self._endpoint_rng = random.Random(f"endpoints:{config.faults.seed}")
        self._faults = config.faults
        self._api_rng = random.Random(f"api:{config.faults.seed}")
        self._job_rng = random.Random(f"jobs:{config.faults.seed}")
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()

    # -- Lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        models_dir = self.config.models_dir
        if models_dir is not None and not await asyncio.to_thread(models_dir.is_dir):
            raise ConfigError(f"models_dir is not a directory: {models_dir}")
        self._closing.clear()

    async def aclose(self) -> None:
        """End hanging answers, cancel every running job and wait until their tasks have ended."""
        self._closing.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    @property
    def closing(self) -> bool:
        """True once `aclose` has begun: answers still in flight must not start new work."""
        return self._closing.is_set()

    # -- Faults -------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """Assigning faults restarts both fault sequences from `faults.seed`."""
        self._faults = faults
        self._api_rng = random.Random(f"api:{faults.seed}")
        self._job_rng = random.Random(f"jobs:{faults.seed}")

    def draw_api_fault(self) -> ApiFaultDraw:
        """One draw per API call, whatever the rates, so sequences depend only on the seed."""
        faults = self._faults
        roll = self._api_rng.random()
        if roll < faults.throttle_rate:
            return ApiFaultDraw(ApiFault.THROTTLE, 429)
        if roll < faults.throttle_rate + faults.error_rate:
            return ApiFaultDraw(ApiFault.ERROR, self._api_rng.choice((500, 502, 503)))
        if roll < faults.throttle_rate + faults.error_rate + faults.timeout_rate:
            return ApiFaultDraw(ApiFault.HANG)
        return ApiFaultDraw(ApiFault.NONE)

    async def pause_answer(self, seconds: float) -> None:
        """Wait `seconds` before an answer (latency, hangs); shutting down ends the wait."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # -- Users, endpoints, models -------------------------------------------------------------

    def known_user(self, name: str) -> bool:
        return name in self.config.users

    def set_endpoint_status(self, name: str, status: str) -> None:
        """Move an endpoint to `status` (InService, Creating, Updating, Failed, …)."""
        endpoint = self.endpoints[name]
        endpoint.status = status
        endpoint.error = "injected failure: set by the test harness" if status == "Failed" else None
        if status == "InService" and endpoint.end_time is None:
            endpoint.end_time = self.clock.now()

    def set_instance_count(self, name: str, count: int) -> None:
        """Set an endpoint's current instances; 0 makes the next Async job wait a cold start."""
        if count < 0:
            raise ValueError(f"instance count must be >= 0, got {count}")
        self.endpoints[name].instance_count = count

    def endpoint_rows(self) -> list[EndpointRecord]:
        """The endpoint table in scan order, which (as in DynamoDB) is the hash order of ids."""
        return sorted(self.endpoints.values(), key=lambda endpoint: endpoint.id)

    def pick_endpoint(self, name: str | None, inference_type: str, user: str) -> EndpointRecord:
        """ESD's `_schedule_inference_endpoint`: the named endpoint, or a random usable one."""
        if name:
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                raise LambdaError(400, f"sagemaker endpoint with name {name} is not found")
            if endpoint.status != "InService":
                raise LambdaError(
                    400, f"sagemaker endpoint is not ready with status: {endpoint.status}"
                )
            return endpoint
        usable = [
            endpoint
            for endpoint in self.endpoints.values()
            if endpoint.service_type == "sd"
            # ESD takes Updating endpoints too; that is why the bot always names one.
            and endpoint.status in ("InService", "Updating")
            and endpoint.type == inference_type
        ]
        if not usable:
            raise LambdaError(400, f'no available {inference_type} endpoints for user "{user}"')
        return self._endpoint_rng.choice(usable)

    async def checkpoints(self) -> list[Checkpoint]:
        """Every model, in a stable order (type, then name)."""
        models = await self._catalogue.models()
        answer = []
        for model in models:
            checkpoint_id = str(uuid.uuid5(_ID_NAMESPACE, f"checkpoint:{model.type}:{model.name}"))
            answer.append(
                Checkpoint(
                    id=checkpoint_id,
                    name=model.name,
                    type=model.type,
                    s3_location=self.storage.s3_uri(
                        f"{model.type}/checkpoint/custom/{checkpoint_id}"
                    ),
                    created=self._booted.timestamp(),
                )
            )
        return answer

    async def resolve_models(
        self, models: Mapping[str, Sequence[str]]
    ) -> tuple[dict[str, list[dict[str, str]]], list[Checkpoint]]:
        """`used_models` for a job and the checkpoints named, or 400 naming what is missing."""
        catalogue = {
            (checkpoint.type, checkpoint.name): checkpoint
            for checkpoint in await self.checkpoints()
        }
        found: list[Checkpoint] = []
        missing: list[str] = []
        for model_type, names in models.items():
            for name in names:
                if model_type == "VAE" and name in _VAE_NOT_LOOKED_UP:
                    found.append(Checkpoint("VAE", name, "VAE", "None", 0.0))
                elif (model_type, name) in catalogue:
                    found.append(catalogue[(model_type, name)])
                else:
                    missing.append(f"checkpoint with name {name}, type {model_type} is not found")
        if missing:
            raise LambdaError(400, " ".join(missing))
        used: dict[str, list[dict[str, str]]] = {}
        for checkpoint in found:
            used.setdefault(checkpoint.type, []).append(
                {
                    "id": checkpoint.id,
                    "model_name": checkpoint.name,
                    "s3": checkpoint.s3_location,
                    "type": checkpoint.type,
                }
            )
        return used, found

    # -- Jobs ---------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        task_type: str,
        inference_type: str,
        endpoint: EndpointRecord,
        owner: str,
        used_models: dict[str, list[dict[str, str]]],
        origin: str,
        payload_string: str | None,
        workflow: str | None,
    ) -> JobRecord:
        self._make_room()
        job_id = str(uuid.uuid4())
        input_key = f"{task_type}/infer_v2/{job_id}/api_param.json"
        upload_url = None
        if payload_string is None:
            upload_url = self.storage.url(origin, "PUT", input_key)
        job = JobRecord(
            id=job_id,
            task_type=task_type,
            inference_type=inference_type,
            endpoint=endpoint,
            owner=owner,
            created=self.clock.now(),
            used_models=used_models,
            input_key=input_key,
            input_s3=self.storage.s3_uri(input_key),
            upload_url=upload_url,
            payload_string=payload_string,
            workflow=workflow,
        )
        self.jobs[job_id] = job
        return job

    def upload_owner(self, key: str) -> JobRecord | None:
        """The job whose payload key `key` is; uploads go nowhere else."""
        parts = key.split("/")
        if len(parts) != 4 or parts[1:4:2] != ["infer_v2", "api_param.json"]:
            return None
        job = self.jobs.get(parts[2])
        return job if job is not None and job.input_key == key else None

    def start_job(self, job: JobRecord) -> None:
        """ESD's `inference_start`: draw the job's fate, mark it and run it in the background."""
        if self.closing:
            raise GatewayError(503, "Service Unavailable", "ServiceUnavailableException")
        if job.task is not None:
            raise LambdaError(400, f"inference {job.id} has already been started")
        if job.payload_string is None and job.input_key not in self.storage.objects:
            raise LambdaError(
                400,
                f"the payload of inference {job.id} has not been uploaded to "
                "api_params_s3_upload_url",
            )
        outcome, seconds = self._plan()
        job.started = self.clock.now()  # the start Lambda writes startTime, then the container
        if job.inference_type == "Async":
            job.output_path = self.storage.s3_uri(f"sagemaker_output/{uuid.uuid4()}.out")
            if outcome is not JobOutcome.STUCK:
                job.status = JobState.INPROGRESS
        task = asyncio.create_task(
            self._run(job, outcome, seconds), name=f"esd-server-job-{job.id}"
        )
        job.task = task
        self._tasks.add(task)
        task.add_done_callback(self._job_task_done)
        _LOGGER.info(
            "job %s (%s, %s on %s) started: %s in %.2f s",
            job.id,
            job.task_type,
            job.inference_type,
            job.endpoint.name,
            outcome.value,
            seconds,
        )

    async def finish(self, job_id: str) -> None:
        """Complete a started job now (tests): skip its remaining waits, then await its end.

        A stuck job is released too and then runs normally. Unknown ids raise `KeyError`; a job
        that was never started raises `ValueError`.
        """
        job = self.jobs[job_id]
        if job.task is None:
            raise ValueError(f"job {job_id} has not been started")
        job.hurry.set()
        await asyncio.wait([job.task])

    async def delete_jobs(self, job_ids: Iterable[str]) -> None:
        """ESD's `DELETE /inferences`: drop the rows and their objects; unknown ids are skipped."""
        stopping = []
        for job_id in job_ids:
            job = self.jobs.pop(job_id, None)
            if job is None:
                continue
            self._drop_objects(job)
            if job.task is not None and not job.task.done():
                job.task.cancel()
                stopping.append(job.task)
        if stopping:
            await asyncio.wait(stopping)

    def jobs_of_type(self, task_type: str) -> list[JobRecord]:
        """The jobs of one task type, newest first (ESD's `taskType-createTime-index`)."""
        rows = [job for job in self.jobs.values() if job.task_type == task_type]
        rows.sort(key=lambda job: (job.created, job.id), reverse=True)
        return rows

    # -- Running jobs -------------------------------------------------------------------------

    def _plan(self) -> tuple[JobOutcome, float]:
        faults = self._faults
        roll = self._job_rng.random()
        low, high = self.config.job_seconds
        seconds = self._job_rng.uniform(low, high)
        if roll < faults.stuck_rate:
            return JobOutcome.STUCK, seconds
        if roll < faults.stuck_rate + faults.fail_rate:
            return JobOutcome.FAIL, seconds
        if roll < faults.stuck_rate + faults.fail_rate + faults.fail_silent_rate:
            return JobOutcome.FAIL_SILENT, seconds
        return JobOutcome.SUCCEED, seconds

    async def _run(self, job: JobRecord, outcome: JobOutcome, seconds: float) -> None:
        if outcome is JobOutcome.STUCK:
            await job.hurry.wait()  # only `finish` moves a stuck job on
        await self._cold_start(job)
        job.started = self.clock.now()  # the container writes startTime when it picks the job up
        await self._pause(job, seconds)
        if outcome is JobOutcome.FAIL:
            self._fail(job, _FAULT_REASON.format(endpoint=job.endpoint.name))
        elif outcome is JobOutcome.FAIL_SILENT:
            # Like a container that swallowed its exception: `failed`, and no reason anywhere.
            self._fail(job, None)
        else:
            await self._execute(job)
        _LOGGER.info("job %s ended %s", job.id, job.status.value)

    async def _cold_start(self, job: JobRecord) -> None:
        endpoint = job.endpoint
        if job.inference_type != "Async" or endpoint.instance_count > 0:
            return
        loop = asyncio.get_running_loop()
        if endpoint.warm_at is None:
            endpoint.warm_at = loop.time() + self.config.cold_start_seconds
        await self._pause(job, endpoint.warm_at - loop.time())
        if endpoint.instance_count == 0:
            endpoint.instance_count = max(1, endpoint.min_instances)
        endpoint.warm_at = None

    async def _pause(self, job: JobRecord, seconds: float) -> None:
        if seconds <= 0 or job.hurry.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.hurry.wait(), seconds)

    async def _execute(self, job: JobRecord) -> None:
        raw = (
            job.payload_string.encode()
            if job.payload_string is not None
            else self.storage.objects.get(job.input_key)
        )
        if raw is None:
            self._fail(job, f"{self.storage.s3_uri(job.input_key)} does not exist")
            return
        try:
            result = await asyncio.to_thread(self._work, job, raw)
        except PayloadError as exc:
            self._fail(job, f"the inference container could not run the payload: {exc}")
            return
        except Exception as exc:  # CancelledError is not an Exception: it still propagates
            _LOGGER.warning("job %s: the preview engine failed", job.id, exc_info=True)
            self._fail(job, f"preview engine error: {exc}")
            return
        if self.jobs.get(job.id) is not job:
            return  # deleted while rendering: store nothing
        for index, image in enumerate(result.images):
            name = f"image_{index}.png"
            self.store(f"{job.result_prefix}{name}", image, job)
            job.image_names.append(name)
        if result.param_json is not None:
            self.store(job.param_key, result.param_json, job)
        job.caption = result.caption
        job.completed = self.clock.now()
        job.status = JobState.SUCCEED

    def _work(self, job: JobRecord, raw: bytes) -> _Result:
        """The container's part, in a worker thread: parse the payload and run the engine."""
        payload = loads(raw)
        if job.task_type in INTERROGATE_TASKS:
            request = parse_interrogate(payload, job.task_type)
            return _Result(caption=caption(request.image, request.method))
        checkpoints = job.used_models.get("Stable-diffusion") or []
        if not checkpoints:
            raise PayloadError(
                "models has no Stable-diffusion checkpoint (KeyError: 'Stable-diffusion')"
            )
        vaes = job.used_models.get("VAE") or []
        img2img = parse_img2img(
            payload,
            model=checkpoints[0]["model_name"],
            vae=vaes[0]["model_name"] if vaes else "Automatic",
            endpoint=job.endpoint.name,
            job_id=job.id,
        )
        params = img2img.params
        images = render(img2img.init_image, img2img.mask, params)
        masked = img2img.mask is not None
        seeds, subseeds = zip(*(params.seeds(index) for index in range(params.images)), strict=True)
        info: dict[str, Any] = {
            "prompt": params.prompt,
            "all_prompts": [params.prompt] * params.images,
            "negative_prompt": params.negative,
            "all_negative_prompts": [params.negative] * params.images,
            "seed": params.seed,
            "all_seeds": list(seeds),
            "subseed": params.subseed,
            "all_subseeds": list(subseeds),
            "width": params.width,
            "height": params.height,
            "sampler_name": params.sampler,
            "cfg_scale": params.cfg,
            "steps": params.steps,
            "batch_size": params.count,
            "sd_model_name": params.model,
            "sd_vae_name": params.vae,
            "denoising_strength": params.strength,
            "infotexts": [
                render_infotext(params, index, masked=masked) for index in range(params.images)
            ],
            "engine": ENGINE_NAME,
        }
        document = {
            "parameters": img2img.echoed,
            "info": json.dumps(info),
            "endpoint_name": job.endpoint.name,
            "inference_id": job.id,
        }
        return _Result(images=tuple(images), param_json=json.dumps(document).encode())

    def _fail(self, job: JobRecord, reason: str | None) -> None:
        job.sagemaker_raw = reason
        job.completed = self.clock.now()
        job.status = JobState.FAILED

    def _job_task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a job failure (those are caught in `_execute`): say so loudly, once.
            _LOGGER.error("job task %s crashed", task.get_name(), exc_info=task.exception())

    # -- Housekeeping -------------------------------------------------------------------------

    def store(self, key: str, data: bytes, owner: JobRecord) -> None:
        """Put an object of `owner` in the bucket, evicting the oldest idle jobs past the cap."""
        self.storage.put(key, data)
        for job in list(self.jobs.values()):
            if self.storage.stored_bytes <= MAX_STORED_BYTES:
                return
            if job is not owner and (job.task is None or job.task.done()):
                self._evict(job)

    def _make_room(self) -> None:
        """Evict the oldest job that is not running when the table is full."""
        if len(self.jobs) < MAX_JOBS:
            return
        for job in self.jobs.values():
            if job.task is None or job.task.done():
                self._evict(job)
                return
        raise LambdaError(400, f"the local backend already holds {MAX_JOBS} running jobs")

    def _evict(self, job: JobRecord) -> None:
        _LOGGER.info("job %s evicted to keep the server's memory bounded", job.id)
        del self.jobs[job.id]
        self._drop_objects(job)

    def _drop_objects(self, job: JobRecord) -> None:
        self.storage.delete(job.input_key)
        self.storage.delete_prefix(job.result_prefix)

    def _endpoint_record(self, spec: EndpointSpec, index: int) -> EndpointRecord:
        # Listed newest first: the first configured endpoint is the most recent one.
        started = datetime.fromtimestamp(self._booted.timestamp() - 60 * (index + 1), UTC)
        return EndpointRecord(
            id=str(uuid.uuid5(_ID_NAMESPACE, f"endpoint:{spec.name}")),
            name=spec.name,
            type=spec.type,
            status=spec.status,
            instance_type=spec.instance_type,
            instance_count=spec.instance_count,
            min_instances=spec.min_instances,
            max_instances=spec.max_instances,
            service_type="comfy" if spec is COMFY_ENDPOINT else "sd",
            start_time=started,
            end_time=started if spec.status == "InService" else None,
            error="injected failure: configured as Failed" if spec.status == "Failed" else None,
        )
