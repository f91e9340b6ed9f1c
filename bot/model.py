"""The core's value types: identities, jobs, generation parameters and what backends report.

Everything here is a frozen dataclass or an enum, JSON-friendly, and free of platform types, so
adapters, backends and the store can all speak it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from commands.spec import Area, Fill, Method, Resize, Sampler, Scheduler, join_sampler

if TYPE_CHECKING:
    from datetime import datetime

    from commands.options import JobOptions


_PLATFORM_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class Platform(str):
    """Where a request came from: the name its adapter declares (`console`, `discord`, …).

    Platforms are open: each adapter declares its own (`ChatAdapter.platform`) and says what
    the core needs to know about it in `bot.ports.PlatformTraits`. The core compares platforms
    and stores them; it never names one. A platform is its name, a short lowercase word, and is
    stored, logged and labelled as that string.
    """

    __slots__ = ()

    def __new__(cls, name: str) -> Platform:
        if not _PLATFORM_NAME.fullmatch(name):
            raise ValueError(f"a platform name is a short lowercase word, not {name!r}")
        return super().__new__(cls, name)


@dataclass(frozen=True)
class Conversation:
    """Where messages go: a channel, and a thread in it when there is one.

    `channel` and `thread` are the platform's own ids (Discord channel / thread id, Slack channel
    id / thread parent ts, console: "console"). They are opaque to the core and stored as they are.
    """

    channel: str
    thread: str | None = None


@dataclass(frozen=True)
class Caller:
    """Who asked, and where. `server` is the Discord guild / Slack workspace (team) id.

    Jobs never cross `(platform, server)`: every store query is scoped by it.
    """

    platform: Platform
    server: str
    user: str
    conversation: Conversation
    is_admin: bool = False
    # A display name for lists; never used for permission checks.
    user_name: str = ""
    # Role ids (Discord) for allow-lists; empty elsewhere.
    roles: tuple[str, ...] = ()
    # The platform event the request came from, when the platform may deliver it again (Slack
    # retries, to any replica): claimed with the job's row, so it makes one job. Not stored.
    event_key: str | None = None


class JobState(enum.StrEnum):
    """A job's state as users see it: the backend's four plus the bot's own `cancelled`."""

    CREATED = "created"
    INPROGRESS = "inprogress"
    SUCCEED = "succeed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEED, JobState.FAILED, JobState.CANCELLED)


class Delivery(enum.StrEnum):
    """How far the bot got in posting a finished job's outcome (SPEC §3 step 8)."""

    PENDING = "pending"  # nothing posted yet
    POSTING = "posting"  # the bot has started posting; after a crash, check the thread first
    DONE = "done"


@dataclass(frozen=True)
class AttachmentRef:
    """A chat attachment as the platform describes it, durable enough to download after a crash.

    `url` is the platform's download URL (console: a local path). `slot` is "image", "mask" or
    "sketch" once the core has decided which input it is.
    """

    name: str
    url: str
    size: int | None = None
    content_type: str | None = None
    slot: str = ""  # "" = not yet known; the core assigns it (SPEC §2.3)


@dataclass(frozen=True)
class GenerationParams:
    """Fully resolved img2img parameters: every default applied, the seed concrete."""

    prompt: str
    negative: str
    strength: float
    steps: int
    cfg: float
    sampler: Sampler  # as chosen; `sampler_name` is what the backend is sent
    seed: int
    width: int
    height: int
    count: int
    resize: Resize
    model: str
    vae: str
    endpoint: str
    mask_blur: int = 4
    fill: Fill = Fill.ORIGINAL
    area: Area = Area.WHOLE
    padding: int = 32
    invert: bool = False
    # The rest of A1111's img2img panel (defaults = the WebUI's; older stored rows lack them).
    batch_count: int = 1  # A1111 `n_iter`: batches of `count` images, one after another
    subseed: int = -1  # concrete whenever subseed_strength > 0
    subseed_strength: float = 0.0
    restore_faces: bool = False
    tiling: bool = False
    clip_skip: int = 1
    image_cfg: float = 1.5
    noise_multiplier: float = 1.0
    scheduler: Scheduler = Scheduler.AUTOMATIC
    mask_alpha: int = 0  # inpaint-sketch only; applied to the mask and init image by the core

    @property
    def sampler_name(self) -> str:
        """The sampler name A1111 runs: the schedule written into it (`join_sampler`)."""
        return join_sampler(self.sampler, self.scheduler)

    @property
    def images(self) -> int:
        """How many images the job makes: batch size × batch count."""
        return self.count * self.batch_count

    def seeds(self, index: int) -> tuple[int, int]:
        """The seed and variation seed of image `index` (0-based), as A1111 numbers them.

        Without variation every image takes the next seed; with it, every image keeps the seed
        and takes the next variation seed (`processing.process_images_inner`).
        """
        if self.subseed_strength == 0:
            return self.seed + index, self.subseed
        return self.seed, self.subseed + index


@dataclass(frozen=True)
class InterrogateParams:
    """What an interrogate job needs besides its image."""

    method: Method
    endpoint: str


@dataclass(frozen=True)
class Job:
    """One job as the store keeps it."""

    id: str
    command: str
    caller: Caller
    state: JobState
    created_at: datetime
    # The options the user gave, typed (`commands.options`); the base of re-generation.
    options: JobOptions
    # Filled once the job has been validated.
    params: GenerationParams | None = None
    interrogate: InterrogateParams | None = None
    backend_id: str | None = None
    endpoint: str | None = None
    model: str | None = None
    attachments: tuple[AttachmentRef, ...] = ()
    status_message: str | None = None  # platform message id of the status message
    thread: Conversation | None = None  # where the job's messages go
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    caption: str | None = None
    infotext: str | None = None
    notes: tuple[str, ...] = ()  # pipeline remarks shown in the status ("first frame used", …)
    delivery: Delivery = Delivery.PENDING
    parent_id: str | None = None  # the job this one re-generates
    result_count: int = 0
    results_expired: bool = False
    result_messages: tuple[str, ...] = field(default=())
    # Bumped by every store write; `JobStore.save` only writes over the version it read.
    version: int = 0
    # Ownership (`bot.ports.JobLeases`): the fence of the lease this row was read under (it
    # grows on every claim; a save carrying an older one is refused) and how many times a
    # replica took the job over from a driver that had stopped without letting it go.
    fence: int = 0
    attempts: int = 0


# -- What backends report -------------------------------------------------------------------


class EndpointType(enum.StrEnum):
    """How an endpoint runs jobs (ESD's `endpoint_type` and `inference_type`,
    reference/esd-api.md §4): queued (`Async`), or within the start request (`Real-time`)."""

    ASYNC = "Async"
    REAL_TIME = "Real-time"


@dataclass(frozen=True)
class Endpoint:
    """A backend endpoint (ESD `GET /endpoints`, `service_type` sd)."""

    name: str
    status: str  # InService, Creating, Updating, Failed, … as the backend says
    type: EndpointType
    instance_type: str
    instance_count: int | None  # current instances; 0 = scaled to zero (cold start ahead)
    min_instances: int | None = None
    max_instances: int | None = None

    @property
    def in_service(self) -> bool:
        return self.status == "InService"


@dataclass(frozen=True)
class Model:
    """A model file on the backend. `type` is the ESD type (Stable-diffusion, Lora, VAE, …)."""

    name: str
    type: str


@dataclass(frozen=True)
class Submitted:
    """What the backend said when it took a job."""

    backend_id: str
    endpoint: str
    cold_start: bool = False  # the endpoint had no instance running when the job was sent
    # The backend's answer to the start said the job is `inprogress` (ESD's Async start), so
    # the job is recorded that way at once instead of at the first status read.
    started: bool = False


@dataclass(frozen=True)
class BackendStatus:
    """A job's state on the backend, from a (batched) status call."""

    backend_id: str
    state: JobState
    reason: str | None = None  # failure reason when the backend gave one
    cold_start: bool = False  # waiting for the endpoint to scale out from zero
    # What a backend that runs jobs itself can say while a job is on its way (A1111):
    queue_position: int | None = None  # 1 = next to run, in the backend's own queue
    progress: float | None = None  # 0..1, measured by the backend (not estimated)
    preview: bytes | None = None  # a live preview image of the running job
    note: str | None = None  # something to tell the user; kept in the job's notes


@dataclass(frozen=True)
class JobOutput:
    """A finished job's results, downloaded."""

    images: tuple[bytes, ...] = ()  # PNG bytes
    infotext: str | None = None
    caption: str | None = None


@dataclass(frozen=True)
class CloudJob:
    """A row of the backend's own history (`jobs source=cloud`)."""

    backend_id: str
    task_type: str
    state: str
    created_at: datetime | None
    endpoint: str | None = None
    model: str | None = None
    owner: str | None = None
    reason: str | None = None  # why it failed, when the backend says
