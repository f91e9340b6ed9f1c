"""Jobs for the store tests: a minimal one, one with every field set, and id lists."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from bot.leases import JobOwnership
from bot.model import (
    AttachmentRef,
    Caller,
    Conversation,
    Delivery,
    GenerationParams,
    InterrogateParams,
    Job,
    JobState,
    Platform,
)
from commands import Size
from commands.options import GenerateOptions, job_options
from commands.spec import Area, Fill, Method, Resize, Sampler, Scheduler

if TYPE_CHECKING:
    from collections.abc import Iterable

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
D = Platform("discord")
S, F, C, P, X = (
    JobState.SUCCEED,
    JobState.FAILED,
    JobState.CREATED,
    JobState.INPROGRESS,
    JobState.CANCELLED,
)


def make_job(
    job_id: str,
    *,
    server: str = "g1",
    user: str = "u1",
    platform: Platform = D,
    minute: float = 0,
    **fields: Any,
) -> Job:
    """A job with the required fields filled in; `minute` is its creation time after T0."""
    caller = Caller(platform, server, user, Conversation("c1"))
    values: dict[str, Any] = {
        "id": job_id,
        "command": "img2img",
        "caller": caller,
        "state": JobState.CREATED,
        "created_at": T0 + timedelta(minutes=minute),
    }
    values.update(fields)
    values.setdefault("options", job_options(values["command"], {}))
    return Job(**values)


def full_job(job_id: str = "k3x9q2m7ab") -> Job:
    """A job with every field set to something other than its default."""
    plus_two = timezone(timedelta(hours=2))
    return Job(
        id=job_id,
        command="inpaint-sketch",
        caller=Caller(
            platform=Platform("slack"),
            server="T0123",
            user="U42",
            conversation=Conversation("C77", "1700000000.000100"),
            is_admin=True,
            user_name="Ada “the” Lovelace ✓",
            roles=("r1", "r2"),
        ),
        state=JobState.SUCCEED,
        created_at=datetime(2026, 11, 25, 12, 1, 33, 123456, tzinfo=UTC),
        options=GenerateOptions(
            prompt="a cat, ünïcode",
            strength=0.35,
            steps=30,
            invert=True,
            size=Size(768, 512),
            sampler=Sampler.EULER_A,
            fill=Fill.LATENT_NOISE,
        ),
        params=GenerationParams(
            prompt="a cat",
            negative="blurry",
            strength=0.35,
            steps=30,
            cfg=6.5,
            sampler=Sampler.EULER_A,
            seed=1234567890123,
            width=768,
            height=512,
            count=3,
            resize=Resize.CROP,
            model="sd15.safetensors",
            vae="vae.pt",
            endpoint="ep-1",
            mask_blur=8,
            fill=Fill.LATENT_NOISE,
            area=Area.MASKED,
            padding=64,
            invert=True,
            batch_count=2,
            subseed=42,
            subseed_strength=0.25,
            restore_faces=True,
            tiling=True,
            clip_skip=2,
            image_cfg=1.25,
            noise_multiplier=0.9,
            scheduler=Scheduler.KARRAS,
            mask_alpha=30,
        ),
        interrogate=InterrogateParams(method=Method.DEEPBOORU, endpoint="ep-2"),
        backend_id="b-123",
        endpoint="ep-1",
        model="sd15.safetensors",
        attachments=(
            AttachmentRef("cat.png", "https://files/cat.png", 1234, "image/png", "image"),
            AttachmentRef("cat-sketch.jpg", "https://files/s.jpg", None, None, "sketch"),
        ),
        status_message="1700000000.000200",
        thread=Conversation("C77", "1700000000.000100"),
        # Not UTC on purpose: the store keeps the instant, in UTC.
        started_at=datetime(2026, 11, 25, 14, 1, 40, tzinfo=plus_two),
        finished_at=datetime(2026, 11, 25, 12, 2, 10, 5, tzinfo=UTC),
        error="CUDA out of memory",
        caption="a cat on a mat",
        infotext="Steps: 30, Sampler: Euler a, CFG scale: 6.5",
        notes=("first frame used", "mask resized"),
        delivery=Delivery.POSTING,
        parent_id="parent0001",
        result_count=3,
        results_expired=True,
        result_messages=("1700000000.000300", "1700000000.000400"),
        version=3,
        fence=2,
        attempts=1,
    )


def ids(jobs: Iterable[Job]) -> list[str]:
    return [job.id for job in jobs]


class HandClock:
    """`bot.ports.Clock` whose monotonic time moves only when the test moves it (a frozen
    process is a clock that jumped)."""

    def __init__(self) -> None:
        self.at = 1000.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return self.at

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


@dataclass
class HeldLease:
    """A job's lease held by replica "a" on a hand-moved clock (`held_lease`)."""

    clock: HandClock
    ownership: JobOwnership
    fence: int


async def held_lease(store: Any, job_id: str, ttl: float) -> HeldLease:
    """Replica "a" claims `job_id` in `store` (its `JobLeases` and `JobRepo`) under a lease of
    `ttl` seconds of a `HandClock`."""
    clock = HandClock()
    ownership = JobOwnership(store, store, "a", ttl, clock)
    claimed = await ownership.claim(job_id)
    assert claimed is not None
    return HeldLease(clock, ownership, claimed.fence)
