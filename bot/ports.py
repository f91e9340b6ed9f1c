"""The contracts the core depends on, as `typing.Protocol`s (fakes need not inherit).

- `Backend`: runs jobs (`cloud/`: the local preview backend, ESD over REST, SageMaker for
  interrogate).
- `ChatAdapter`: what the core asks of a chat platform for a job's life (threads, status
  messages, results, downloads), with its `PlatformTraits`; `ChatConnection`: its lifecycle.
  Adapters live in `adapters/`.
- `Responder`: the answer channel of one incoming event (ack, replies, private refusals).
- The store, in small ports so an engine can be written and tested one part at a time:
  `JobRepo` (job rows), `ImageStore` (their inputs and results), `SettingsStore`,
  `ClaimStore` (platform events acted on), `OperatorQueries` (admin figures, readiness),
  `JobLeases`, `LeaderLeases`, `Replicas` (which replica drives which job, and which one does
  the periodic work that must run once: docs/architecture.md "Ownership");
  `JobStore` is all of them on one database with its lifecycle (`bot.store` is the SQLite one).
- `Clock`: time, so tests and benchmarks control it.
- `Observer`: what the core reports for operators' metrics (`NullObserver` by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
    from datetime import datetime

    from bot.model import (
        AttachmentRef,
        BackendStatus,
        CloudJob,
        Conversation,
        Endpoint,
        GenerationParams,
        InterrogateParams,
        Job,
        JobOutput,
        JobState,
        Model,
        Platform,
        Submitted,
    )
    from bot.views import ResultImage, ResultView, StatusView


LOST_JOB = "the backend lost this job (it has no record of it; it may have restarted)"


@dataclass(frozen=True)
class PollTarget:
    """A job the poller asks the backend about."""

    backend_id: str
    interrogate: bool
    submitted_at: datetime


class StatusReader(Protocol):
    """What the poller needs of a backend: the state of the jobs it follows."""

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        """Batched status of many jobs; a job missing from the answer is unknown this round.

        A job the backend has no record of (deleted, or lost when the backend restarted) is
        reported `failed` with `LOST_JOB` as the reason.
        """
        ...


class Backend(StatusReader, Protocol):
    """Runs img2img-family and interrogate jobs (SPEC §4).

    Creating a job and starting it are two steps with the bot's record in between: `submit` and
    `interrogate` create the job, `await created(backend_id)` (the core writes the id down), and
    only then start it. If `created` raises, the job is not started (and is removed, best
    effort). So a bot killed at any point knows every job that may run: on resume it asks
    `statuses` about a recorded id whose start was never confirmed, follows it if the backend
    says it moved past `created`, and only otherwise removes it and submits again.
    """

    name: str

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def endpoints(self) -> Sequence[Endpoint]:
        """Every `sd` endpoint with its state as the backend reports it."""
        ...

    async def models(self, model_type: str | None = None) -> Sequence[Model]:
        """Active models, all types or one ESD type (`Stable-diffusion`, `Lora`, …)."""
        ...

    async def submit(
        self,
        job_id: str,
        params: GenerationParams,
        init_png: bytes,
        mask_png: bytes | None,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted:
        """Create an img2img job on `params.endpoint`, `await created(id)`, then start it."""
        ...

    async def interrogate(
        self,
        job_id: str,
        params: InterrogateParams,
        image_png: bytes,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted:
        """Create a caption job (CLIP sentence or DeepBooru tags), `await created(id)`, start it."""
        ...

    async def release(self, backend_id: str) -> None:
        """The bot has stored the job's results: drop whatever the backend keeps of it
        locally (result bytes, state files). The job stays in the backend's history."""
        ...

    async def results(self, backend_id: str) -> JobOutput:
        """Download a succeeded job's images / caption and infotext.

        Raises `ResultsExpiredError` when the result URLs the backend gave have expired.
        """
        ...

    async def refresh(self, backend_id: str) -> None:
        """Re-read the job so that its result URLs are fresh."""
        ...

    async def cancel(self, backend_id: str) -> None:
        """Delete the job on the backend, best effort (a started job may still run)."""
        ...

    async def history(self, task_type: str, limit: int) -> Sequence[CloudJob]:
        """The backend's own job history of one task type, newest first."""
        ...

    async def job(self, backend_id: str) -> CloudJob | None:
        """One job of the backend's own history by its id, whoever started it (the bot, or
        someone else on the same backend, such as a WebUI user); None when the backend has no
        record of it. `results` reads a succeeded one's images or caption."""
        ...


class Responder(Protocol):
    """How the core answers the one event it is handling (not durable)."""

    async def accepted(self, job_id: str) -> None:
        """The job's row is committed: acknowledge inside the platform's 3-second window."""
        ...

    async def reply(
        self, text: str, *, private: bool = False, images: Sequence[ResultImage] = ()
    ) -> None:
        """Answer a query (`job`, `jobs`, `help`, …), with stored images where there are any."""
        ...

    async def refuse(self, message: str) -> None:
        """Refuse the request, privately where the platform allows (Discord/Slack ephemeral)."""
        ...


@dataclass(frozen=True)
class PostedStatus:
    """Where a job's status message went: its thread and the message id."""

    thread: Conversation
    message: str


@dataclass(frozen=True)
class PlatformTraits:
    """What the core needs to know about a platform besides its name; its adapter declares it.

    `attach_hint` tells users how to give an image on this platform (`{slot}` becomes the
    slot's name: image, mask, sketch). `local_files`: users name files on this machine
    (`image=PATH`, the console). `operator`: whoever types here runs the bot (the console): no
    allow-lists, no per-user limits, only the global cap.
    """

    attach_hint: str = "attach the file(s)"
    local_files: bool = False
    operator: bool = False


def traits_of(adapters: Mapping[Platform, ChatAdapter], platform: Platform) -> PlatformTraits:
    """The traits `platform`'s adapter declares; the defaults for a platform without one."""
    adapter = adapters.get(platform)
    return adapter.traits if adapter is not None else PlatformTraits()


class ChatAdapter(Protocol):
    """What the core asks of a chat platform during a job's life.

    Message and thread ids are the platform's own, opaque to the core, and stored durably so a
    restarted bot can edit and reply where it left off.
    """

    platform: Platform
    traits: PlatformTraits

    async def download(self, ref: AttachmentRef, max_bytes: int) -> bytes:
        """Fetch an attachment from the platform's own file hosts, at most `max_bytes`.

        Raises `ImageInputError` naming the file when it is too big, not on an allowed host, or
        the platform answers something that is not the file.
        """
        ...

    async def open_job_thread(
        self, where: Conversation, status: StatusView, *, again: bool = False
    ) -> PostedStatus:
        """Post a job's status message, starting a thread for the job from it when `where` is
        not already a thread. `again`: an earlier driver of the job (another replica, an earlier
        run) may have posted it already; that one is found and returned, not posted twice."""
        ...

    async def edit_status(self, thread: Conversation, message: str, status: StatusView) -> None:
        """Edit the status message in place."""
        ...

    async def post_result(self, thread: Conversation, result: ResultView) -> Sequence[str]:
        """Post a finished job's images / caption / failure with its actions; return message ids.

        Every message carries the job id (`result.marker`) so a restarted bot can find it.
        """
        ...

    async def post_text(self, thread: Conversation, text: str) -> str:
        """Post a plain notice in a thread (announcements, expired results …)."""
        ...

    async def find_marker(self, thread: Conversation, marker: str) -> Sequence[str]:
        """Ids of recent messages of the bot in `thread` that contain `marker`."""
        ...

    async def delete_messages(self, thread: Conversation, messages: Sequence[str]) -> None:
        """Delete the bot's own messages (the Delete action)."""
        ...


class ChatConnection(Protocol):
    """An adapter's own connection to its platform (Discord's gateway, Slack's socket or HTTP
    server); the composition root runs it beside the core.

    `start` connects; `wait_closed` returns when the connection has ended for good (raising
    `ConfigError` when the platform refused it); `stop` stops taking new requests but keeps the
    platform client usable (the core's jobs still post while they stop); `aclose` releases
    everything.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def wait_closed(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class StoredImage:
    """An image the bot keeps: a job input (slot image/mask/sketch) or a result (slot result)."""

    slot: str
    name: str
    data: bytes


@dataclass(frozen=True)
class Admission:
    """Limits a new job must fit in, counted in the insert's transaction (`JobRepo.insert`), so
    they hold across replicas sharing the store. None = no such limit."""

    max_running: int | None  # jobs of the user not yet terminal
    max_today: int | None = None  # jobs of the user created since `day_start`
    day_start: datetime | None = None
    max_in_flight: int | None = None  # jobs of everyone not yet terminal (the global cap)


class AdmissionRefused(Exception):
    """The job would exceed a limit: `limit` is "running", "daily" or "global", `count` the
    current use."""

    def __init__(self, limit: str, count: int) -> None:
        super().__init__(f"{limit} limit reached ({count})")
        self.limit = limit
        self.count = count


class EventClaimed(Exception):
    """`JobRepo.insert` refused: the platform event the job came from made a job already (a
    retry, or a duplicate delivered to another replica). Nothing was written; nobody is told."""

    def __init__(self, key: str) -> None:
        super().__init__(f"event {key} made a job already")
        self.key = key


class JobChanged(Exception):
    """`JobRepo.save` refused: the row was written by someone else since the job was read."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was changed by another writer")
        self.job_id = job_id


class LeaseLost(JobChanged):
    """A write refused because it carried an older fence than the row's: another replica took
    the job over (the writer's lease had expired). The writer must stop driving the job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.args = (f"job {job_id}: the lease was taken over by another replica",)


@dataclass(frozen=True)
class JobQuery:
    """A `jobs` query, always inside one (platform, server)."""

    platform: Platform
    server: str
    user: str | None = None  # None = everyone's (admins)
    states: tuple[JobState, ...] = ()
    command: str | None = None
    endpoint: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    backend_id: str | None = None  # the backend's id of the job (`jobs source=cloud` lists it)
    limit: int = 10
    offset: int = 0


class JobRepo(Protocol):
    """Durable job rows: the one way a job comes to exist, compare-and-set writes, lookups."""

    async def insert(
        self,
        job: Job,
        inputs: Sequence[StoredImage] = (),
        admission: Admission | None = None,
        *,
        owner: str | None = None,
        ttl: float = 0.0,
        claim: str | None = None,
    ) -> None:
        """Commit a new job row (and any inputs already at hand) in one transaction.

        With `admission`, the row is only written if the job fits the limits, counted in the
        same transaction (so two simultaneous requests cannot both slip under a limit);
        otherwise `AdmissionRefused` is raised. Raises `KeyError` when the id is taken. With
        `owner`, the job is born under that owner's lease (`JobLeases`) for `ttl` seconds, with
        the fence the job carries. With `claim`, the platform event's claim (`ClaimStore`) is
        recorded in the same transaction, and `EventClaimed` raised (nothing written) when it
        was already: a replica stopped between the two leaves neither.
        """
        ...

    async def save(self, job: Job) -> Job:
        """Write every field of an existing job, compare-and-set on `job.version`.

        Returns the saved job (with its next version). Raises `JobChanged` when the row was
        written since `job` was read (nothing is overwritten), `LeaseLost` (a `JobChanged`) when
        the row's fence is newer than `job.fence` (another replica took it over), `KeyError`
        when there is none.
        """
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def find(self, platform: Platform, server: str, prefix: str) -> Sequence[Job]:
        """Jobs of one server whose id starts with `prefix` (at most a few)."""
        ...

    async def query(self, query: JobQuery) -> Sequence[Job]:
        """The jobs `query` matches, newest first; a row that does not read as a job
        (`UnreadableJobError`) is left out and logged, so it never hides the others."""
        ...

    async def unfinished(self) -> Sequence[Job]:
        """Jobs not yet terminal, or terminal but not yet delivered (resumed on start)."""
        ...

    async def latest_in_thread(
        self, platform: Platform, server: str, thread: Conversation
    ) -> Job | None: ...

    async def by_message(self, platform: Platform, server: str, message: str) -> Job | None:
        """The job whose status or result message has this id."""
        ...

    async def recent_durations(self, endpoint: str, limit: int = 20) -> Sequence[float]:
        """Run times (seconds) of the latest succeeded jobs on an endpoint, for estimates."""
        ...


class ImageStore(Protocol):
    """A job's stored images: its inputs (slots image/mask/sketch) and results (slot result).

    Inputs at hand when a job is accepted go in with the row (`JobRepo.insert`); the rest
    arrive here. Images belong to a job row: putting images for an unknown job is a `KeyError`.
    """

    async def put_images(
        self, job_id: str, images: Sequence[StoredImage], *, fence: int | None = None
    ) -> None:
        """Store images for a job, replacing any earlier ones of the same slots.

        With `fence`, only while the job's lease still has it (else `LeaseLost`).
        """
        ...

    async def images(self, job_id: str, slot: str | None = None) -> Sequence[StoredImage]: ...

    async def delete_images(self, job_id: str) -> None: ...

    async def expire_images(self, before: datetime, limit: int = 500) -> Sequence[str]:
        """Retention: drop the images of jobs created before `before`; return their ids.

        Each job that had results is marked `results_expired` (a write: its version moves).
        """
        ...


class SettingsStore(Protocol):
    """Settings admins change with the `settings` command, per server or channel."""

    async def settings(self, platform: Platform, server: str, scope: str) -> dict[str, str]:
        """Stored settings of a server (`scope` "") or of one of its channels."""
        ...

    async def put_settings(
        self, platform: Platform, server: str, scope: str, values: Mapping[str, str | None]
    ) -> None:
        """Set (or, with None, remove) settings in one transaction."""
        ...


class ClaimStore(Protocol):
    """Platform events already acted on, so a retried or doubly delivered event makes one job."""

    async def claim(self, key: str) -> bool:
        """Record a platform event as acted on; False when it already was (a retry)."""
        ...

    async def expire_claims(self, before: datetime) -> int:
        """Forget event claims made before `before` (retention)."""
        ...


@dataclass(frozen=True)
class Usage:
    """One user's (or channel's) jobs and backend run time over a period."""

    key: str  # user id or channel id
    name: str  # the user's display name (the channel id for channels)
    jobs: int
    gpu_seconds: float


@dataclass(frozen=True)
class DayCount:
    day: str  # YYYY-MM-DD (UTC)
    jobs: int
    failed: int


class OperatorQueries(Protocol):
    """Read-only figures for operators (the admin page) and the readiness probe."""

    async def servers(self) -> Sequence[tuple[Platform, str]]:
        """Every (platform, server) with jobs, most recently active first."""
        ...

    async def usage(
        self, platform: Platform, server: str, by: Literal["user", "channel"], since: datetime
    ) -> Sequence[Usage]:
        """Jobs and backend run time per user (or per request channel) since `since`."""
        ...

    async def failures(
        self, platform: Platform, server: str, since: datetime
    ) -> Sequence[tuple[str, int]]:
        """Failed jobs since `since` grouped by their failure message, commonest first."""
        ...

    async def daily(self, platform: Platform, server: str, since: datetime) -> Sequence[DayCount]:
        """Jobs and failed jobs per UTC day (of creation) since `since`, oldest first."""
        ...

    async def writable(self) -> bool:
        """Whether a write commits now (readiness): False when closed, locked or failing."""
        ...

    @property
    def describe(self) -> str:
        """The engine and where its data is, for operators (`sdbot check`); no secrets."""
        ...

    async def schema_version(self) -> int:
        """The version of the schema the database is at (its migrations run)."""
        ...


class JobLeases(Protocol):
    """Ownership of unfinished jobs: each is driven by the one replica holding its lease.

    A lease has an owner (a replica id), an expiry on the store's clock and a fence
    (`Job.fence`) that grows on every claim. `JobRepo.save` and `ImageStore.put_images(fence=…)`
    refuse a write whose fence is older than the row's (`LeaseLost`), so a replica that lost its
    lease (paused, partitioned) cannot overwrite the new owner. A job whose lease expired is
    claimable by any replica; a released one (`release_job`) too, without counting an attempt.
    """

    async def claim_jobs(
        self,
        owner: str,
        ttl: float,
        limit: int,
        platforms: Collection[Platform],
        *,
        own: bool = False,
    ) -> Sequence[Job]:
        """Take up to `limit` unfinished jobs of `platforms` whose lease is free or expired
        (with `own`, also those `owner` itself holds: a restart under the same id), oldest first.

        Each comes back with its new fence; `attempts` has grown by one if the lease was taken
        from another driver rather than released. A row that does not read as a job
        (`bot.errors.UnreadableJobError`, raised by the row mapping) is not returned: that job
        alone is marked failed with the error's message (delivery done, lease let go) and
        logged, so one damaged row never stops a restart.
        """
        ...

    async def claim_job(self, job_id: str, owner: str, ttl: float) -> Job | None:
        """Take one job if it is unfinished and no other owner holds a live lease on it (the
        caller does not drive it: a lease `owner` holds is taken again); None otherwise."""
        ...

    async def renew_jobs(self, owner: str, fences: Mapping[str, int], ttl: float) -> set[str]:
        """Extend the leases `owner` still holds (job id → fence); return the ids extended."""
        ...

    async def release_job(self, job_id: str, owner: str, fence: int) -> None:
        """Let the job go (if still held with `fence`): claimable at once, no attempt counted."""
        ...


class LeaderLeases(Protocol):
    """Named leases for periodic work that must run on one replica at a time (retention, the
    ESD list scan): same rules as job leases, in a row per name (not advisory locks, which are
    tied to a connection and break behind connection poolers)."""

    async def lead(self, name: str, owner: str, ttl: float) -> int | None:
        """Take or extend the lease `name` for `ttl` seconds: its fence while `owner` holds it,
        None while another replica does."""
        ...

    async def resign(self, name: str, owner: str) -> None:
        """Give the lease up (if `owner` holds it), so another replica may take it at once."""
        ...


@dataclass(frozen=True)
class Posted:
    """What the replica that read for everyone posted about one key (`SharedReads`)."""

    value: str | None  # None: looked for and not found (beyond the pages read)
    at: datetime  # when it was posted, on the store's clock


@runtime_checkable
class SharedReads(Protocol):
    """Reads one replica makes for all, per topic and key: a backend's list scan done once
    across replicas (`cloud.esd.sharing`) under a leader lease, and a completion event taken
    from a shared queue by a replica that does not follow its job.

    The replicas that do not hold the lease `ask` for the keys they follow and get what was
    posted about them; the holder reads which keys are `wanted`, reads them once from the
    backend with its own, and `post`s what it read. A key nobody asked about for a while is
    dropped, so the rows stay bounded by the jobs in flight. Values are opaque to the store.
    A replica that must hear of a post soon looks for the `recent` ones.
    """

    async def ask(self, topic: str, keys: Collection[str]) -> Mapping[str, Posted]:
        """Mark `keys` wanted (now, on the store's clock); return what was posted for them."""
        ...

    async def wanted(self, topic: str, within: float) -> set[str]:
        """Keys asked for in the last `within` seconds (older ones are dropped)."""
        ...

    async def post(self, topic: str, values: Mapping[str, str | None]) -> None:
        """Post what was read about keys still asked for (others are ignored)."""
        ...

    async def unask(self, topic: str, keys: Collection[str]) -> None:
        """Keys no longer wanted (their job ended here)."""
        ...

    async def recent(self, topic: str, within: float) -> Mapping[str, Posted]:
        """What was posted about the topic's keys in the last `within` seconds (on the store's
        clock), whoever asked for them."""
        ...


@dataclass(frozen=True)
class Replica:
    """A replica that reported recently (`sdbot check`, the admin page)."""

    id: str
    started_at: datetime
    seen_at: datetime
    jobs: int  # job leases it holds
    stale_writes: int  # its writes refused for carrying an old fence


class Replicas(Protocol):
    """The replicas sharing the store, as they report themselves."""

    async def heartbeat(self, replica: str, *, stale_writes: int = 0) -> None:
        """Record that `replica` is alive, adding `stale_writes` refused writes to its count."""
        ...

    async def replicas(self, since: datetime) -> Sequence[Replica]:
        """Replicas seen since `since`, most recently seen first."""
        ...


class JobStore(
    JobRepo,
    ImageStore,
    SettingsStore,
    ClaimStore,
    OperatorQueries,
    JobLeases,
    LeaderLeases,
    Replicas,
    Protocol,
):
    """Every store port on one database, for wiring (`BotApp` opens and closes it).

    Code that uses the store depends on the narrowest of the ports above it needs; an engine
    (`bot.store` for SQLite) implements them all on one database.
    """

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class Clock(Protocol):
    """Wall time for records, monotonic time for intervals, and sleeping."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class Observer(Protocol):
    """What the core tells operators' metrics at the two seams no port wrapper can see.

    Everything else (jobs created and finished, time to submit, backend and chat calls, store
    latency) is measured by wrapping the ports at the composition root (`adapters.web.metrics`).
    Arguments are bounded values only: never user text, never job ids.
    """

    def refused(self, reason: str) -> None:
        """A request was refused; `reason` is a `UserInputError.reason` word."""
        ...

    def acknowledged(self, seconds: float) -> None:
        """A new job was committed and acknowledged `seconds` after `JobRunner.accept` began
        (access, option checks, limits, the insert and the platform's ack)."""
        ...


class NullObserver:
    """The default `Observer`: metrics off."""

    def refused(self, reason: str) -> None:
        pass

    def acknowledged(self, seconds: float) -> None:
        pass
