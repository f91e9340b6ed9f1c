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
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from bot.clock import SystemClock
from bot.errors import ConfigError
from bot.model import JobState
from cloud.esd.wire import esd_time
from cloud.esd_server.config import ROLES, EndpointSpec, Faults, ServerConfig, UserSpec
from cloud.esd_server.events import Notifier
from cloud.esd_server.payload import PayloadError, loads, parse_img2img, parse_interrogate
from cloud.esd_server.storage import PresignedStorage
from cloud.local.backend import LocalBackend, LocalBackendConfig
from cloud.local.preview import ENGINE_NAME, caption, render, render_infotext

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

_LOGGER = logging.getLogger(__name__)

# Bounds: the job table is memory, and so is every payload and image in the bucket.
MAX_JOBS = 10_000
MAX_STORED_BYTES = 1024**3
# ComfyUI endpoints share ESD's endpoint table; clients must keep only `service_type` sd.
COMFY_ENDPOINT = EndpointSpec("comfy-async-local", "Async")
IMG2IMG = "img2img"
INTERROGATE_TASKS: tuple[str, ...] = ("interrogate_clip", "interrogate_deepbooru")
# What ESD's create Lambda accepts (middleware_api/inferences/create_inference_job.py); the
# preview engine runs img2img only, and interrogate only with `rest_interrogate`.
ESD_TASK_TYPES: tuple[list[str], list[str]] = (
    ["extra-single-image", "extra-batch-images", "rembg"],
    ["txt2img", "img2img"],
)
# ESD does not look these VAE names up (`_get_checkpoint_by_name`).
_VAE_NOT_LOOKED_UP = ("Automatic", "None")
_ID_NAMESPACE = uuid.UUID("5b0f3a53-6c2e-4d0b-9a57-2f6f3c1e9d41")
_FAULT_REASON = (
    "ClientError: Received server error (500) from primary with message "
    '"injected failure: this job was picked by the server\'s fail_rate". '
    "See CloudWatch logs for the endpoint {endpoint}."
)
# What ESD's start Lambda answers when the container returned `null` (it swallowed its own
# exception, scripts/api.py): `'error' in None` (inferences/start_inference_job.py).
NULL_OUTPUT = "argument of type 'NoneType' is not iterable"


def owned_by(owners: Sequence[str], roles: Sequence[str], username: str | None) -> bool:
    """ESD's `check_user_permissions` (middleware_api/libs/utils.py): no owners, `*`, the user
    itself or one of `roles` among the owners."""
    if not owners or "*" in owners or (username is not None and username in owners):
        return True
    return any(role in owners for role in roles)


# A DynamoDB Query or Scan call reads at most 1 MB of items, before any filter, and then hands
# back a LastEvaluatedKey ("Paginating table query results" and "Query" in the Amazon DynamoDB
# Developer Guide); its MB is 1,048,576 bytes ("Constraints in Amazon DynamoDB").
MAX_READ_BYTES = 1024 * 1024

Row = TypeVar("Row")


def read_page(
    rows: Iterable[Row], limit: int, size: Callable[[Row], int]
) -> tuple[list[Row], bool]:
    """What one DynamoDB Query or Scan call reads of `rows`, in order: `limit` rows at most, and
    no more than `MAX_READ_BYTES` of them by `size` (but always one). The flag is True when it
    stopped at either bound rather than at the end of `rows`: DynamoDB then answers a
    LastEvaluatedKey, even when nothing is left after a full page."""
    page: list[Row] = []
    read = 0
    for row in rows:
        if len(page) == limit:
            return page, True
        read += size(row)
        if page and read > MAX_READ_BYTES:
            return page, True
        page.append(row)
    return page, len(page) == limit


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
    allowed: tuple[str, ...] = ()  # `allowed_roles_or_users`


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
    owners: tuple[str, ...] = ()  # `owner_group_or_role`
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
    # What the Real-time start Lambda answers 400 with when the job did not succeed.
    realtime_error: str | None = None
    starts: int = 0  # `PUT …/start` calls that ran the job: ESD has no guard against a second
    task: asyncio.Task[None] | None = None
    # Set by `ServerState.finish`: every remaining wait of the job ends at once.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def result_prefix(self) -> str:
        return f"out/{self.id}/result/"

    @property
    def param_key(self) -> str:
        return f"{self.result_prefix}{self.id}_param.json"


class _Instances:
    """An Async endpoint's instances when each runs `per_instance` jobs at a time: the jobs
    beyond them wait in the order they were started (SageMaker's own queue of an asynchronous
    endpoint; `MaxConcurrentInvocationsPerInstance` 1 for SD in ESD, esd-api.md §8.1, §10.2)."""

    def __init__(self, endpoint: EndpointRecord, per_instance: int) -> None:
        self._endpoint = endpoint
        self._per_instance = per_instance
        self._running = 0
        # Waiting runs, first started first: the future each waits on (True: it got a slot;
        # False: `let_through` ended its wait without one) → its job id.
        self._waiting: OrderedDict[asyncio.Future[bool], str] = OrderedDict()

    async def enter(self, job_id: str) -> bool:
        """Wait for a slot; True once the run holds one (`leave` gives it back), False when
        `let_through` ended the wait without one."""
        if self._running < self._slots() and not self._waiting:
            self._running += 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[waiter] = job_id
        try:
            return await waiter
        except asyncio.CancelledError:
            granted = not waiter.cancelled() and waiter.done() and waiter.result()
            self._waiting.pop(waiter, None)
            if granted:
                self.leave()  # the slot came with the cancellation: pass it on
            raise

    def leave(self) -> None:
        self._running -= 1
        self.wake()

    def wake(self) -> None:
        """Hand free slots to the runs that waited longest (also after a scale-out)."""
        while self._waiting and self._running < self._slots():
            waiter, _ = self._waiting.popitem(last=False)
            if not waiter.done():  # else cancelled with its run, which is ending
                self._running += 1
                waiter.set_result(True)

    def let_through(self, job_id: str) -> None:
        """End the waits of a job's runs without a slot (`ServerState.finish`)."""
        for waiter in [w for w, waiting_id in self._waiting.items() if waiting_id == job_id]:
            del self._waiting[waiter]
            if not waiter.done():
                waiter.set_result(False)

    def _slots(self) -> int:
        return max(1, self._endpoint.instance_count) * self._per_instance


@dataclass(frozen=True)
class _Result:
    images: tuple[bytes, ...] = ()
    param_json: bytes | None = None
    caption: str | None = None


# The container's answer: a result, A1111's error body (`{"error", "detail", "body", "errors"}`
# plus `start_time`, `endpoint_name`, `endpoint_instance_id`), or `null` (scripts/api.py).
_ContainerOut = _Result | dict[str, Any] | None


class ServerState:
    """Everything one server knows; what tests read and steer while the server runs.

    - `jobs`: job id → `JobRecord` (`.status` is a `JobState`, `.sagemaker_raw`, `.task`,
      `.starts`: how many start calls ran it, …)
    - users and roles: `user`, `user_roles`, `permissions`, `check_permissions` and the
      `visible_*` filters of ESD's listings
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
        self._instances: dict[str, _Instances] = {}  # endpoint name → its queue, when bounded
        self.notifier = (
            Notifier(config.events_queue_url, lag=config.events_lag)
            if config.events_queue_url
            else None
        )

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
        if self.notifier is not None:
            await self.notifier.aclose()

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

    def user(self, name: str) -> UserSpec | None:
        return next((user for user in self.config.users if user.name == name), None)

    def known_user(self, name: str) -> bool:
        return self.user(name) is not None

    def user_roles(self, name: str) -> list[str]:
        """ESD's `get_user_roles`: 400 `user: "x" not exist` for an unknown user."""
        user = self.user(name)
        if user is None:
            raise LambdaError(400, f'user: "{name}" not exist')
        return list(user.roles)

    def permissions(self, name: str) -> dict[str, set[str]]:
        """ESD's `get_permissions_by_username`: resource → actions of the user's roles."""
        answer: dict[str, set[str]] = {}
        for role in self.user_roles(name):
            for permission in ROLES[role]:
                resource, _, action = permission.partition(":")
                answer.setdefault(resource, set()).add(action)
        return answer

    def check_permissions(self, name: str, needed: Sequence[str]) -> None:
        """ESD's `permissions_check` after the user is known: 403 without any of `needed`."""
        user = self.user(name)
        if user is None:
            raise LambdaError(401, "Unauthorized")
        if not user.permissions() & set(needed):
            raise LambdaError(403, f"User {name} has no permissions: {list(needed)}")

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
        if name in self._instances:
            self._instances[name].wake()

    def endpoint_rows(self) -> list[EndpointRecord]:
        """The endpoint table in scan order, which (as in DynamoDB) is the hash order of ids."""
        return sorted(self.endpoints.values(), key=lambda endpoint: endpoint.id)

    def pick_endpoint(self, name: str | None, inference_type: str, user: str) -> EndpointRecord:
        """ESD's `_schedule_inference_endpoint`: the named endpoint, or a random usable one."""
        if name:
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                # ESD indexes the scan's first row (`ddb_service.scan(...)[0]`) before its own
                # "is not found" check, so an unknown name fails with Python's IndexError.
                raise LambdaError(400, "list index out of range")
            if endpoint.status != "InService":
                raise LambdaError(
                    400, f"sagemaker endpoint is not ready with status: {endpoint.status}"
                )
            return endpoint
        roles = self.user_roles(user)
        usable = [
            endpoint
            for endpoint in self.endpoints.values()
            if endpoint.service_type == "sd"
            # ESD takes Updating endpoints too; that is why the bot always names one.
            and endpoint.status in ("InService", "Updating")
            and endpoint.type == inference_type
            and owned_by(endpoint.owners, roles, user)
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
                    allowed=self.config.owner_roles,
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
        # ESD checks neither that the payload was uploaded nor that the job was started before
        # (inferences/start_inference_job.py): a second start runs the job a second time.
        job.starts += 1
        job.realtime_error = None
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
        instances = self._instances.get(job.endpoint.name)
        if instances is not None:
            instances.let_through(job.id)
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

    def visible_jobs(self, rows: Sequence[JobRecord], username: str) -> list[JobRecord]:
        """ESD's `GET /inferences?username=`: rows owned by the user or one of its roles."""
        roles = self.user_roles(username)
        return [row for row in rows if owned_by((row.owner,), roles, username)]

    def visible_endpoints(
        self, rows: Sequence[EndpointRecord], requestor: str, username: str | None
    ) -> list[EndpointRecord]:
        """ESD's `list_endpoints.py`: with `sagemaker_endpoint:all` every row; with `:list`
        only rows owned by a role of the `username` query user, and nothing without one."""
        roles = self.user_roles(username) if username else []
        actions = self.permissions(requestor).get("sagemaker_endpoint", set())
        return [
            row
            for row in rows
            if (
                "list" in actions
                and row.owners
                and username
                and owned_by(row.owners, roles, username)
            )
            or "all" in actions
        ]

    def visible_checkpoints(
        self,
        rows: Sequence[Checkpoint],
        requestor: str,
        username: str | None,
        roles_filter: Sequence[str],
    ) -> list[Checkpoint]:
        """ESD's `list_checkpoints.py`: rows allowed to the `username` query user's roles (to
        `*` without one), or every row for a requestor holding `user:all`."""
        roles = self.user_roles(username) if username else ["*"]
        user_all = "all" in self.permissions(requestor).get("user", set())
        return [
            row
            for row in rows
            if not (roles_filter and set(roles_filter).isdisjoint(row.allowed))
            and (owned_by(row.allowed, roles, username) or user_all)
        ]

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
        instances = self._queue(job)
        if instances is None or not await instances.enter(job.id):
            await self._execute(job, outcome, seconds)
            return
        try:
            await self._execute(job, outcome, seconds)
        finally:
            instances.leave()

    def _queue(self, job: JobRecord) -> _Instances | None:
        """The queue of the job's endpoint, when its instances run a bounded number of jobs."""
        per_instance = self.config.invocations_per_instance
        if per_instance is None or job.inference_type != "Async" or job.hurry.is_set():
            return None
        endpoint = job.endpoint
        if endpoint.name not in self._instances:
            self._instances[endpoint.name] = _Instances(endpoint, per_instance)
        return self._instances[endpoint.name]

    async def _execute(self, job: JobRecord, outcome: JobOutcome, seconds: float) -> None:
        job.started = self.clock.now()  # the container writes startTime when it picks the job up
        await self._pause(job, seconds)
        if outcome is JobOutcome.FAIL and job.inference_type == "Async":
            # SageMaker's own failure (a crashed container): ESD's error-topic Lambda stores
            # `str(message)` of the notification, a Python repr (inference_async_events.py).
            notification = self._notification(job, "Failed")
            await self._notify(notification)
            self._fail(job, str(notification))
        else:
            out = None if outcome is JobOutcome.FAIL_SILENT else await self._container(job)
            if outcome is JobOutcome.FAIL:
                out = self._a1111_error(job, "OutOfMemoryError", "injected failure: fail_rate")
            if self.jobs.get(job.id) is not job:
                return  # deleted while running: store nothing
            if job.inference_type == "Async":
                # SageMaker reports the invocation done even when its output holds no images;
                # ESD's Lambda then fails the job (inference_async_events.py).
                await self._notify(self._notification(job, "Completed"))
                if self.jobs.get(job.id) is not job:
                    return
                self._async_result(job, out)
            else:
                self._realtime_result(job, out)
        _LOGGER.info("job %s ended %s", job.id, job.status.value)

    def _async_result(self, job: JobRecord, out: _ContainerOut) -> None:
        """ESD's `inference_async_events.py` + `parse_sagemaker_result`: a `null` output or
        one without images (A1111's error body) fails the job with no `sagemakerRaw`."""
        if isinstance(out, _Result):
            self._succeed(job, out)
        else:
            self._fail(job, None)

    def _realtime_result(self, job: JobRecord, out: _ContainerOut) -> None:
        """ESD's `real_time_inference`: an error body is stored as `str(out)` in `sagemakerRaw`
        and the row stays `created`; `null` leaves it `created` with nothing stored. Either way
        the start call answers 400 with the Lambda's exception text."""
        if isinstance(out, _Result):
            self._succeed(job, out)
        elif out is None:
            job.realtime_error = NULL_OUTPUT
        else:
            job.sagemaker_raw = str(out)
            job.realtime_error = str(out)

    async def _container(self, job: JobRecord) -> _ContainerOut:
        """The inference container: a result, A1111's error body, or `null` when it fails
        before A1111 answers (a payload it cannot read from S3, scripts/api.py)."""
        raw = (
            job.payload_string.encode()
            if job.payload_string is not None
            else self.storage.objects.get(job.input_key)
        )
        if raw is None:
            _LOGGER.info("job %s: no payload at %s", job.id, self.storage.s3_uri(job.input_key))
            return None
        try:
            return await asyncio.to_thread(self._work, job, raw)
        except PayloadError as exc:
            # A1111 refuses the request (422) and the container passes its body on.
            return self._a1111_error(job, "PayloadError", str(exc))
        except Exception as exc:  # CancelledError is not an Exception: it still propagates
            _LOGGER.warning("job %s: the preview engine failed", job.id, exc_info=True)
            return self._a1111_error(job, type(exc).__name__, f"preview engine error: {exc}")

    def _a1111_error(self, job: JobRecord, error: str, errors: str) -> dict[str, Any]:
        """A1111's error body (`modules/api/api.py` `api_error_handler`) as the container wraps
        it (`wrap_response` in scripts/api.py)."""
        return {
            "error": error,
            "detail": "",
            "body": "",
            "errors": errors,
            "start_time": esd_time(job.started),
            "endpoint_name": job.endpoint.name,
            "endpoint_instance_id": f"{job.endpoint.name}-instance-0",
        }

    async def _notify(self, notification: dict[str, Any]) -> None:
        if self.notifier is not None:
            await self.notifier.publish(notification)

    def _notification(self, job: JobRecord, status: str) -> dict[str, Any]:
        """SageMaker's asynchronous inference notification for the job: `failureReason` only
        on a failure, `responseParameters.outputLocation` only on success."""
        message: dict[str, Any] = {
            "awsRegion": "local",
            "eventTime": esd_time(self.clock.now()),
            "receivedTime": esd_time(job.created),
            "invocationStatus": status,
            "failureReason": _FAULT_REASON.format(endpoint=job.endpoint.name),
            "requestParameters": {
                "endpointName": job.endpoint.name,
                "inputLocation": self.storage.s3_uri(f"async-inputs/{job.id}"),
            },
            "inferenceId": job.id,
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }
        if status == "Completed":
            del message["failureReason"]
            message["responseParameters"] = {
                "contentType": "application/json",
                "outputLocation": self.storage.s3_uri(f"async-outputs/{job.id}.out"),
            }
        return message

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

    def _succeed(self, job: JobRecord, result: _Result) -> None:
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
            "sampler_name": params.sampler_name,
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
            owners=self.config.owner_roles,
            error="injected failure: configured as Failed" if spec.status == "Failed" else None,
        )
