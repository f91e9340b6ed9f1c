"""`EsdBackend`: `bot.ports.Backend` on the REST API of ESD v1.5+ (SPEC §4, §4.1).

It owns the `EsdClient` (one aiohttp session), the `StatusBook` that answers the poller from
list pages, the per-endpoint cap on Real-time jobs in flight, short-lived lookups of endpoints
and network models made while submitting, and the results of jobs already read (a Real-time
start answers with the finished job). Interrogate goes through an `Interrogator`: over REST
where the server's `/ping` advertises it, else directly through SageMaker when `ESD_BUCKET` is
set (`cloud.esd.sagemaker`, whose jobs it reads itself), else a refusal that says what is
missing. Every failure arrives as a `bot.errors.BackendError` whose `user_message` reads well in
chat.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from bot.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    JobFailedError,
    ResultsExpiredError,
)
from bot.model import Endpoint, EndpointType, JobOutput, JobState, Submitted
from bot.recent import Recent
from bot.tasks import Supervised, stop, supervise
from cloud.esd.a1111 import (
    INTERROGATE_TASKS,
    hypernet_names,
    img2img_payload,
    lora_names,
    resolve_file,
)
from cloud.esd.client import EsdClient
from cloud.esd.config import EsdConfig
from cloud.esd.events import CompletionConsumer, EventQueue
from cloud.esd.interrogate import (
    JobReader,
    RestInterrogator,
    UnsupportedInterrogator,
    task_type,
)
from cloud.esd.launch import launch
from cloud.esd.payloads import NO_REASON, is_unlistable, parse_version
from cloud.esd.polling import StatusBook
from cloud.esd.sagemaker import SageMakerConfig, SageMakerInterrogator
from cloud.esd.sharing import SharedEvents, SharedScans
from cloud.esd.wire import CreateInference
from cloud.esd.wire import inference_type as wire_inference_type
from commands.spec import COMMANDS, MODEL_TYPES, Family

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import aiohttp

    from bot.config import Config
    from bot.model import BackendStatus, CloudJob, GenerationParams, InterrogateParams, Model
    from bot.ports import LeaderLeases, PollTarget, SharedReads
    from cloud.esd.config import EsdSettings
    from cloud.esd.interrogate import Interrogator
    from cloud.esd.payloads import EsdJob

_LOGGER = logging.getLogger(__name__)

MIN_VERSION = (1, 5)
ALL_MODEL_TYPES: tuple[str, ...] = tuple(MODEL_TYPES.values())
# Network models the prompt can name: LoRAs and hypernetworks by tag, embeddings by name.
_NETWORK_TYPES = ("Lora", "hypernetworks", "embeddings")
# Pages of a listing the client follows at most, so a server that loops cannot hang us.
_MAX_PAGES = 200
_MAX_PARAM_BYTES = 2_000_000
# Succeeded jobs whose rows (with result URLs) were already read, kept for `results`.
_MAX_KEPT = 1000
# Ids of interrogate jobs the `JobReader` follows, so `results` knows whom to ask.
_MAX_OWN = 10_000


class RealtimeSlots:
    """At most `limit` Real-time jobs in flight per endpoint (SPEC §4).

    A slot is taken before `POST inferences` and held by the ESD job id until the job is seen
    terminal, cancelled (the core cancels timed-out jobs too) or the launch fails, so a busy
    endpoint makes later submissions wait rather than overflow the container's queue.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # Bounded: one gate per endpoint of the deployment (names are checked before submit),
        # one held slot per job in flight (given back by `release`).
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._held: dict[str, str] = {}  # ESD job id → endpoint

    def _gate(self, endpoint: str) -> asyncio.Semaphore:
        gate = self._gates.get(endpoint)
        if gate is None:
            gate = self._gates[endpoint] = asyncio.Semaphore(self._limit)
        return gate

    async def acquire(self, endpoint: str) -> None:
        await self._gate(endpoint).acquire()

    def hand_back(self, endpoint: str) -> None:
        """Return a slot that no job came to hold (the launch failed)."""
        self._gate(endpoint).release()

    def hold(self, job_id: str, endpoint: str) -> None:
        self._held[job_id] = endpoint

    def release(self, job_id: str) -> None:
        """Free the job's slot; a no-op for jobs that hold none (Async, already freed)."""
        endpoint = self._held.pop(job_id, None)
        if endpoint is not None:
            self._gate(endpoint).release()

    def in_flight(self, endpoint: str) -> int:
        return sum(1 for e in self._held.values() if e == endpoint)


class EsdBackend:
    """The ESD REST backend; implements `bot.ports.Backend`."""

    name = "esd"

    def __init__(
        self,
        config: EsdConfig,
        *,
        interrogator: Interrogator | None = None,
        sagemaker: SageMakerConfig | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """`interrogator` overrides the choice `start()` makes; `sagemaker` enables the
        SageMaker path for deployments whose `/ping` does not advertise REST interrogate."""
        self._config = config
        self._client = EsdClient(config, trace_configs)
        self._interrogator = interrogator
        self._sagemaker = sagemaker
        self._owned: SageMakerInterrogator | None = None  # made here, so closed here
        self._reader: JobReader | None = None
        self._own: Recent[str, None] = Recent(_MAX_OWN)
        self._slots = RealtimeSlots(config.realtime_max_in_flight)
        self._book = StatusBook(
            self._client,
            on_terminal=self._terminal,
            # Nobody asks about it any more: whatever it does, it no longer holds a slot.
            on_dropped=self._slots.release,
            instances=self._instance_count,
            list_interval=config.list_interval,
        )
        self._kept: Recent[str, EsdJob] = Recent(_MAX_KEPT)
        self._endpoint_cache: tuple[float, dict[str, Endpoint]] | None = None
        self._network_cache: tuple[float, dict[str, tuple[str, ...]]] | None = None
        self._lookup_lock = asyncio.Lock()
        self.version: str | None = None  # ESD's `x-api-version`, once `/ping` answered
        self.events: CompletionConsumer | None = None
        self._handed: Supervised | None = None  # looks for events other replicas hand over
        self._started = False
        if config.events_queue_url:
            queue = EventQueue(
                config.events_queue_url,
                sagemaker or SageMakerConfig(bucket=None),
                wait_seconds=config.events_wait,
            )
            self.events = CompletionConsumer(
                queue, self._book.complete, on_health=self._book.events_flowing
            )
            self._book.follow_events(
                backstop_interval=config.events_backstop,
                backstop_pages_per_second=config.events_pages_per_second,
            )
        if isinstance(interrogator, JobReader):
            self._use_reader(interrogator)

    @classmethod
    def from_config(
        cls,
        esd: EsdSettings,
        config: Config,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> EsdBackend:
        """The backend of its settings section (and the core's): the REST API and, with
        `ESD_BUCKET`, the SageMaker path for interrogate. `trace_configs` observe its HTTP
        requests."""
        return cls(
            EsdConfig.from_config(esd, config),
            sagemaker=SageMakerConfig.from_config(esd),
            trace_configs=trace_configs,
        )

    @property
    def config(self) -> EsdConfig:
        return self._config

    @property
    def interrogator(self) -> Interrogator | None:
        """The interrogator in use; None until `/ping` has answered."""
        return self._interrogator

    @property
    def slots(self) -> RealtimeSlots:
        return self._slots

    # -- Lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session and check the deployment: version, key and user.

        A wrong key or user or an ESD older than v1.5 fails start-up with a `ConfigError`;
        an unreachable ESD is only logged, so the bot can start first and catch up later.
        """
        await self._client.start()
        try:
            await self._probe()
            if self.events is not None:
                await self.events.start()
        except BaseException:
            await self._client.aclose()
            raise
        self._started = True
        self._look_for_handed_events()

    def _look_for_handed_events(self) -> None:
        if self._started and self._handed is None and self._book.shares_events:
            self._handed = supervise("esd-events-handed", self._book.run_handed_events)

    def notify_changes(self, on_change: Callable[[str], None]) -> None:
        """`on_change(backend_id)` is called when a completion event ends a job, so the
        core's poller asks about it at once instead of at its next turn."""
        self._book.on_change = on_change

    def share_scans(self, reads: SharedReads, leases: LeaderLeases, replica: str) -> None:
        """Several replicas share the store: list scans run once across them, on the replica
        leading each, and with completion events an event taken by a replica that does not
        follow its job is handed over to the one that does (`cloud.esd.sharing`); call before
        the first submit or poll."""
        keep = max(300.0, 4 * self._config.events_backstop) if self.events else 300.0
        self._book.share_scans(SharedScans(reads, leases, replica, keep=keep))
        if self.events is not None:
            self._book.share_events(SharedEvents(reads))
            self._look_for_handed_events()

    async def _probe(self) -> None:
        try:
            ping = await self._client.ping()
        except BackendUnavailableError as exc:
            _LOGGER.warning("ESD is not reachable at start-up (%s); jobs will retry", exc)
            return
        except BackendError as exc:
            raise ConfigError(exc.user_message or str(exc)) from None
        self.version = ping.version
        version = parse_version(ping.version)
        if version is None:
            _LOGGER.warning("ESD did not say its version (no x-api-version header)")
        elif version[:2] < MIN_VERSION:
            raise ConfigError(unsupported_version(version))
        if self._interrogator is None:
            self._choose_interrogator(advertised=ping.interrogate)
        try:
            await self._client.list_endpoints(limit=1)
        except BackendUnavailableError as exc:
            _LOGGER.warning("ESD endpoints could not be listed at start-up: %s", exc)
        except BackendError as exc:
            raise ConfigError(exc.user_message or str(exc)) from None

    def _choose_interrogator(self, *, advertised: bool) -> Interrogator:
        """REST where the server advertises it, else SageMaker when a bucket is set."""
        interrogator: Interrogator
        if advertised:
            interrogator = RestInterrogator(self._client)
        elif self._sagemaker is not None and self._sagemaker.bucket is not None:
            self._owned = SageMakerInterrogator(self._sagemaker, endpoint=self._endpoint)
            self._use_reader(self._owned)
            interrogator = self._owned
        else:
            interrogator = UnsupportedInterrogator()
        self._interrogator = interrogator
        return interrogator

    def _use_reader(self, reader: JobReader) -> None:
        self._reader = reader
        self._book.read_interrogations_with(reader)

    async def aclose(self) -> None:
        owned, self._owned = self._owned, None
        handed, self._handed = self._handed, None
        try:
            if self.events is not None:
                await self.events.aclose()
            await stop(handed.task if handed is not None else None)
            await self._book.aclose()
            if owned is not None:
                await owned.aclose()
        finally:
            await self._client.aclose()

    async def __aenter__(self) -> EsdBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- Catalogue -----------------------------------------------------------------------------

    async def endpoints(self) -> Sequence[Endpoint]:
        found = await list_endpoints(self._client)
        self._endpoint_cache = (time.monotonic(), {e.name: e for e in found})
        return found

    async def models(self, model_type: str | None = None) -> Sequence[Model]:
        types = (model_type,) if model_type is not None else ALL_MODEL_TYPES
        return await list_models(self._client, types)

    async def _endpoint(self, name: str, max_age: float | None = None) -> Endpoint | None:
        """The endpoint as listed at most `max_age` (default `catalog_ttl`) seconds ago."""
        age = self._config.catalog_ttl if max_age is None else max_age
        async with self._lookup_lock:
            cached = self._endpoint_cache
            if cached is None or time.monotonic() - cached[0] >= age:
                await self.endpoints()
                cached = self._endpoint_cache
            return cached[1].get(name) if cached else None

    async def _instance_count(self, name: str) -> int | None:
        endpoint = await self._endpoint(name, self._config.cold_check_interval)
        return endpoint.instance_count if endpoint is not None else None

    async def _networks(self) -> dict[str, tuple[str, ...]]:
        """File names of the Active LoRAs, hypernetworks and embeddings, by type."""
        async with self._lookup_lock:
            cached = self._network_cache
            if cached is None or time.monotonic() - cached[0] >= self._config.catalog_ttl:
                by_type: dict[str, list[str]] = {t: [] for t in _NETWORK_TYPES}
                for model in await list_models(self._client, _NETWORK_TYPES):
                    by_type.setdefault(model.type, []).append(model.name)
                cached = (time.monotonic(), {t: tuple(n) for t, n in by_type.items()})
                self._network_cache = cached
            return cached[1]

    async def _models_for(self, params: GenerationParams) -> dict[str, list[str]]:
        """`models` of `POST inferences`: checkpoint, VAE, the prompt's networks, embeddings."""
        networks = await self._networks()
        models: dict[str, list[str]] = {
            "Stable-diffusion": [params.model],
            "VAE": [params.vae or "Automatic"],
        }
        for esd_type, names, label in (
            ("Lora", lora_names(params.prompt), "LoRA"),
            ("hypernetworks", hypernet_names(params.prompt), "hypernetwork"),
        ):
            files = []
            for name in names:
                file = resolve_file(name, networks.get(esd_type, ()))
                if file is None:
                    kind = "lora" if esd_type == "Lora" else "hypernetwork"
                    raise BackendError(
                        f"{label} {name!r} is not an Active {esd_type} model on ESD",
                        status=400,
                        user_message=f"{label} not found on the backend: `{name}` "
                        f"(see `models type={kind}`)",
                    )
                files.append(file)
            if files:
                models[esd_type] = files
        embeddings = named_embeddings(
            networks.get("embeddings", ()), params.prompt, params.negative
        )
        if embeddings:
            models["embeddings"] = embeddings
        return models

    # -- Jobs ----------------------------------------------------------------------------------

    async def submit(
        self,
        job_id: str,
        params: GenerationParams,
        init_png: bytes,
        mask_png: bytes | None,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted:
        endpoint = await self._endpoint(params.endpoint)
        # ESD starts the job the way `inference_type` says; it must match the endpoint.
        inference_type = self._config.inference_type if endpoint is None else endpoint.type
        realtime = inference_type is EndpointType.REAL_TIME
        cold = not realtime and endpoint is not None and endpoint.instance_count == 0
        body = CreateInference(
            task_type="img2img",
            inference_type=wire_inference_type(inference_type),
            models=await self._models_for(params),
            # Always named: ESD's own pick is random and takes `Updating` endpoints too.
            sagemaker_endpoint_name=params.endpoint,
        )
        payload = await asyncio.to_thread(
            lambda: json.dumps(img2img_payload(params, init_png, mask_png))
        )
        submitted_at = datetime.now(UTC)
        if realtime:
            await self._slots.acquire(params.endpoint)
        started: list[str] = []

        async def recorded(backend_id: str) -> None:
            started.append(backend_id)
            # From here until `track` below, an event about it waits rather than being taken
            # for a stranger's (the start answer can come after a short job's end).
            await self._book.launching(backend_id)
            if created is not None:
                await created(backend_id)

        try:
            launched = await launch(
                self._client, body, payload, realtime=realtime, label=job_id, on_created=recorded
            )
        except BaseException:
            if realtime:
                self._slots.hand_back(params.endpoint)
            for backend_id in started:
                self._book.launched(backend_id)
            raise
        if realtime:
            self._slots.hold(launched.job_id, params.endpoint)
        finished = launched.finished if _terminal(launched.finished) else None
        for backend_id in started:
            self._book.launched(backend_id)
        self._book.track(
            launched.job_id,
            "img2img",
            submitted_at=submitted_at,
            endpoint=params.endpoint,
            cold=cold,
            finished=finished,
        )
        if finished is not None:
            self._terminal(finished)  # a Real-time job that ran within the start call
        _LOGGER.info(
            "bot job %s is ESD job %s on %s (%s%s)",
            job_id,
            launched.job_id,
            params.endpoint,
            inference_type,
            ", cold start" if cold else "",
        )
        return Submitted(
            launched.job_id,
            launched.endpoint or params.endpoint,
            cold_start=cold,
            started=launched.started and finished is None,
        )

    async def interrogate(
        self,
        job_id: str,
        params: InterrogateParams,
        image_png: bytes,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted:
        task = task_type(params.method)
        interrogator = self._interrogator
        if interrogator is None:
            # `/ping` did not answer at start-up: ask now whether the server captions over REST.
            ping = await self._client.ping()
            interrogator = self._choose_interrogator(advertised=ping.interrogate)
        submitted_at = datetime.now(UTC)
        submitted = await interrogator.interrogate(job_id, params, image_png, created=created)
        # Every interrogator that reads its own jobs was made the book's reader when chosen.
        own = isinstance(interrogator, JobReader)
        if own:
            self._own[submitted.backend_id] = None
        self._book.track(
            submitted.backend_id,
            task,
            submitted_at=submitted_at,
            endpoint=submitted.endpoint,
            cold=submitted.cold_start,
            own=own,
        )
        return submitted

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        if self._interrogator is None and any(t.interrogate for t in targets):
            # Jobs resumed after a restart while ESD was unreachable: decide who reads them.
            try:
                ping = await self._client.ping()
            except BackendError as exc:
                _LOGGER.info("interrogate jobs are read over REST for now: %s", exc)
            else:
                self._choose_interrogator(advertised=ping.interrogate)
        if self._reader is not None:
            for target in targets:
                if target.interrogate:
                    self._own[target.backend_id] = None
        return await self._book.statuses(targets)

    def _terminal(self, job: EsdJob) -> None:
        """A job reached `succeed` / `failed`: free its slot, keep a read row for `results`."""
        self._slots.release(job.id)
        if job.state is JobState.SUCCEED and (job.image_urls or job.caption):
            self._kept[job.id] = job

    async def results(self, backend_id: str) -> JobOutput:
        job = self._kept.pop(backend_id, None) or await self._read_job(backend_id)
        if job.state is JobState.FAILED:
            raise JobFailedError(
                f"ESD job {backend_id} failed: {job.reason or NO_REASON}",
                user_message=job.reason or NO_REASON,
            )
        if job.state is not JobState.SUCCEED:
            raise BackendError(f"ESD job {backend_id} has no results: it is {job.status!r}")
        if job.task_type.startswith("interrogate"):
            if job.caption is None:
                raise BackendError(
                    f"ESD job {backend_id} succeeded without a caption",
                    user_message="the backend reported success but gave no caption",
                )
            return JobOutput(caption=job.caption)
        urls = _unique_objects(job.image_urls)
        # Every download runs to its end, so none is left behind when one fails; an expiry
        # wins over other failures because a refresh cures it.
        fetched = await asyncio.gather(*(self._image(url) for url in urls), return_exceptions=True)
        images: list[bytes] = []
        failures: list[BaseException] = []
        for item in fetched:
            if isinstance(item, BaseException):
                failures.append(item)
            else:
                images.append(item)
        if failures:
            expired = [f for f in failures if isinstance(f, ResultsExpiredError)]
            raise (expired or failures)[0]
        infotext = await self._infotext(job)
        return JobOutput(images=tuple(images), infotext=infotext)

    async def _fetch(self, url: str, max_bytes: int) -> bytes:
        status, body = await self._client.download(url, max_bytes)
        if status == 403 or (status == 400 and b"expired" in body.lower()):
            # S3 answers 403 AccessDenied "Request has expired" once a presigned URL is old.
            raise ResultsExpiredError("the result URLs ESD gave have expired")
        if status >= 300:
            raise BackendError(
                f"result download answered {status}",
                status=status,
                user_message=f"ESD's storage did not have a result file ({status})",
            )
        return body

    async def _image(self, url: str) -> bytes:
        data = await self._fetch(url, self._config.max_result_bytes)
        return await asyncio.to_thread(_as_png, data)

    async def _infotext(self, job: EsdJob) -> str | None:
        """`json.loads(info)["infotexts"][0]` of the job's `_param.json` (§4.4), if readable."""
        if not job.param_urls:
            return None
        try:
            raw = await self._fetch(job.param_urls[0], _MAX_PARAM_BYTES)
        except BackendError as exc:
            # The infotext is a courtesy; the images are the result.
            _LOGGER.warning("ESD job %s: no parameters file: %s", job.id, exc)
            return None
        try:
            document = json.loads(raw)
            info = document.get("info") if isinstance(document, dict) else None
            info = json.loads(info) if isinstance(info, str) else info
            texts = info.get("infotexts") if isinstance(info, dict) else None
            first = texts[0] if isinstance(texts, list) and texts else None
        except ValueError:
            first = None
        if not isinstance(first, str):
            _LOGGER.warning("ESD job %s: the parameters file has no infotext", job.id)
            return None
        return first

    async def _read_job(self, backend_id: str) -> EsdJob:
        """The job's row: from the interrogator's reader for its own jobs, else over REST."""
        if self._reader is not None and backend_id in self._own:
            found = await self._reader.read([backend_id])
            if backend_id in found:
                return found[backend_id]
        return await self._client.get_inference(backend_id)

    async def release(self, backend_id: str) -> None:
        """The bot stored the results: forget the job's kept row (ESD keeps the job)."""
        self._kept.pop(backend_id, None)
        self._book.forget(backend_id)
        if self._reader is not None:
            self._reader.forget(backend_id)

    async def refresh(self, backend_id: str) -> None:
        """Read the job again; its fresh result URLs serve the next `results`."""
        self._kept.pop(backend_id, None)
        job = await self._read_job(backend_id)
        self._kept[job.id] = job

    async def cancel(self, backend_id: str) -> None:
        self._slots.release(backend_id)
        self._book.forget(backend_id)
        self._kept.pop(backend_id, None)
        if self._reader is not None:
            self._reader.forget(backend_id)
        # Rows the SageMaker path wrote live in ESD's table, so ESD's own delete removes them
        # with their input and output objects.
        await self._client.delete_inferences([backend_id])

    async def history(self, task_type: str, limit: int) -> Sequence[CloudJob]:
        """ESD's own list, newest first. `task_type` is a command or an ESD task type: the
        img2img family is `img2img`, `interrogate` both interrogate task types."""
        rows: list[CloudJob] = []
        for esd_type in esd_task_types(task_type):
            rows.extend(await self._history_of(esd_type, limit))
        oldest = datetime.min.replace(tzinfo=UTC)
        rows.sort(key=lambda row: row.created_at or oldest, reverse=True)
        return rows[: max(limit, 0)]

    async def job(self, backend_id: str) -> CloudJob | None:
        """`GET /inferences/{id}` (`reference/esd-api.md` §4.4): any user's job, the WebUI's
        included (the route checks no permission); ESD answers 404 for an id it has no row of."""
        try:
            return (await self._read_job(backend_id)).cloud_job()
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise

    async def _history_of(self, task_type: str, limit: int) -> list[CloudJob]:
        rows: list[CloudJob] = []
        key: str | None = None
        for _ in range(_MAX_PAGES):
            if len(rows) >= limit:
                break
            try:
                # No `username`: admins see every user's jobs, the WebUI's included (§4.5).
                page = await self._client.list_inferences(
                    task_type, limit=min(self._config.page_size, limit - len(rows)), start_key=key
                )
            except BackendError as exc:
                if not is_unlistable(exc):
                    raise
                raise BackendError(
                    f"ESD cannot list its {task_type} jobs: {exc}",
                    status=400,
                    user_message=f"ESD cannot list its {task_type} jobs: its list route fails "
                    "(400) on every page that holds an interrogate job with a caption. Look at "
                    "one job with `job <id>`.",
                ) from None
            rows.extend(job.cloud_job() for job in page.jobs if job.task_type in ("", task_type))
            if page.next_key is None or page.next_key == key:
                break
            key = page.next_key
        return rows


def esd_task_types(name: str) -> tuple[str, ...]:
    """The ESD task types a `jobs type=` value means."""
    command = COMMANDS.get(name)
    if command is not None and command.family is Family.GENERATE:
        return ("img2img",)
    if command is not None and command.family is Family.INTERROGATE:
        return tuple(INTERROGATE_TASKS.values())
    return (name,)


async def list_endpoints(client: EsdClient) -> list[Endpoint]:
    """Every `sd` endpoint, following `last_evaluated_key` through all pages."""
    found: list[Endpoint] = []
    key: str | None = None
    for _ in range(_MAX_PAGES):
        page = await client.list_endpoints(limit=50, start_key=key)
        found.extend(page.endpoints)
        if page.next_key is None or page.next_key == key:
            break
        key = page.next_key
    return found


async def list_models(client: EsdClient, types: Sequence[str]) -> list[Model]:
    """Every Active checkpoint of `types`, through all pages."""
    found: list[Model] = []
    page = 1
    while page <= _MAX_PAGES:
        answer = await client.list_checkpoints(types, page=page, per_page=100)
        found.extend(answer.models)
        if answer.page >= answer.pages or not answer.models:
            break
        page += 1
    return found


def named_embeddings(files: Sequence[str], *texts: str) -> list[str]:
    """The embedding files whose name (the file name without its extension) the prompt or the
    negative prompt uses, as A1111 finds them: a whole word, in any case.

    ESD's create Lambda looks every name in `models` up with one scan of its checkpoint table
    each, inside API Gateway's 29 s (inferences/create_inference_job.py); sending every Active
    embedding with every job, as the WebUI does, makes a large library time out.
    """
    text = "\n".join(texts)
    found = []
    for file in files:
        stem = file.rsplit(".", 1)[0] if "." in file else file
        pattern = rf"(?<![a-z0-9]){re.escape(stem)}(?![a-z0-9])"
        if stem and re.search(pattern, text, re.IGNORECASE):
            found.append(file)
    return found


def _terminal(job: EsdJob | None) -> bool:
    return job is not None and job.state is not None and job.state.terminal


def unsupported_version(version: tuple[int, ...]) -> str:
    shown = ".".join(str(v) for v in version[:2])
    return f"ESD v{shown} is not supported: upgrade to v1.5 or later"


def _unique_objects(urls: Sequence[str]) -> list[str]:
    """One URL per stored object: ESD's retries can list the same image twice (§10.2)."""
    seen: dict[str, str] = {}
    for url in urls:
        seen.setdefault(url.split("?", 1)[0], url)
    return list(seen.values())


def _as_png(data: bytes) -> bytes:
    """A result as PNG bytes; JPEG (ESD v1.3 and older) is converted, anything else refused."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            if kind == "PNG":
                return data
            if kind == "JPEG":
                buffer = io.BytesIO()
                image.save(buffer, "PNG")
                return buffer.getvalue()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        kind = None
    raise BackendError(
        f"a result file is not a PNG or JPEG image ({kind or 'unreadable'})",
        user_message="the backend returned a file that is not an image",
    )
