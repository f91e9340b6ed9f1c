"""Ownership across replicas: the job leases one replica holds, and named leader leases.

Several replicas may share one store (PostgreSQL); each unfinished job is driven by the one
replica holding its lease (`bot.ports.JobLeases`): an owner, an expiry on the store's clock and a
fence that grows on every claim. `JobOwnership` is a replica's side of it: the leases it holds
(job id → fence, and until when by its own monotonic clock), their renewal, claims, and the
check made before anything is posted on a platform (`ensure`): a replica that was paused past
its lease learns it lost the job before posting, and its store writes carry the old fence and are
refused (`LeaseLost`) either way. On SQLite (one process) the same code runs with one owner.

Before every request a driver makes to a chat platform, the platform's HTTP connection asks
`check_before_post` and then `check_at_send` (`transport.leased`): the lease the driver's task
posts under (`JobOwnership.posting`) must be held with a margin left, renewed on the spot when
it runs short. A replica frozen while posting (SIGSTOP, a long GC pause, a VM migration) thus
finds out on waking, before its next request leaves, instead of posting what the job's new owner
has posted meanwhile.

`Leadership` is a named lease (`bot.ports.LeaderLeases`) for periodic work that must run on one
replica at a time: retention, the ESD list scan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.ports import LeaseLost

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Mapping, Sequence

    from bot.model import Job, Platform
    from bot.ports import Clock, JobLeases, LeaderLeases, Replicas

_LOGGER = logging.getLogger(__name__)

# Jobs taken at most per claim.
CLAIM_BATCH = 50
# A request to a platform leaves only with more than this share of a lease left on this
# replica's clock: the time the request has to reach the platform and be done there before
# another replica may take the job, look in the thread and post.
SEND_MARGIN = 1 / 6


def default_replica_id() -> str:
    """This process's id among replicas: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class NotHeld(LeaseLost):
    """The replica found (without writing) that it no longer holds the job's lease."""


@dataclass
class _Held:
    fence: int
    until: float  # by this process's monotonic clock: conservative (measured before the call)
    lost: bool = False  # a renewal found it taken over: its driver stops at its next step


class JobOwnership:
    """The job leases this replica holds, and the store calls that take, keep and give them up.

    `ttl` is the lease length; leases are renewed every `ttl / 3` (`renew`), and a lease with less
    than `ttl / 3` left by this process's clock is renewed on the spot before anything is posted
    (`ensure`), so a paused replica finds out on waking, before it posts.
    """

    def __init__(
        self, store: JobLeases, replicas: Replicas, owner: str, ttl: float, clock: Clock
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"a lease lasts a positive number of seconds, got {ttl!r}")
        self._store = store
        self._replicas = replicas
        self.owner = owner
        self.ttl = ttl
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._unreported = 0  # stale writes not yet added to this replica's count
        self.stale_writes = 0  # writes of this replica refused for an old fence

    def fence(self, job_id: str) -> int | None:
        """The fence of the lease held on the job (None if none, or it was lost)."""
        held = self._held.get(job_id)
        return None if held is None or held.lost else held.fence

    def driven(self, job_id: str) -> bool:
        """Whether this replica has a lease on the job, held or found lost (its driver has
        not stopped yet)."""
        return job_id in self._held

    @property
    def held(self) -> int:
        return sum(1 for held in self._held.values() if not held.lost)

    def _hold(self, job: Job, began: float) -> Job:
        self._held[job.id] = _Held(job.fence, began + self.ttl)
        return job

    def held_from(self, job: Job, began: float) -> None:
        """Record the lease a new job was inserted under (`JobRepo.insert(owner=…)`), asked
        for at monotonic time `began`."""
        self._hold(job, began)

    async def claim(self, job_id: str) -> Job | None:
        """Take one job (free or expired); None when another replica drives it."""
        began = self._clock.monotonic()
        job = await self._store.claim_job(job_id, self.owner, self.ttl)
        return None if job is None else self._hold(job, began)

    async def claim_batch(
        self, limit: int, platforms: Collection[Platform], *, own: bool = False
    ) -> Sequence[Job]:
        """Take up to `limit` claimable jobs of `platforms` (`own`: also this owner's own)."""
        if limit <= 0 or not platforms:
            return []
        began = self._clock.monotonic()
        jobs = await self._store.claim_jobs(self.owner, self.ttl, limit, platforms, own=own)
        return [self._hold(job, began) for job in jobs]

    async def renew(self) -> list[str]:
        """Extend every lease held; return the ids of those lost (taken over meanwhile).

        A lost lease stays known as lost until its driver stops: the driver learns it at its
        next step, from a write refused for its fence or from `ensure` before it posts.
        """
        fences = {job_id: held.fence for job_id, held in self._held.items() if not held.lost}
        began = self._clock.monotonic()
        if fences:
            renewed = await self._store.renew_jobs(self.owner, fences, self.ttl)
        else:
            renewed = set()
        lost = []
        for job_id, fence in fences.items():
            held = self._held.get(job_id)
            if held is None or held.fence != fence:
                continue  # let go or claimed again meanwhile
            if job_id in renewed:
                held.until = began + self.ttl
            else:
                held.lost = True
                lost.append(job_id)
        await self._replicas.heartbeat(self.owner, stale_writes=self._unreported)
        self._unreported = 0
        return lost

    async def ensure(self, job: Job) -> None:
        """Before posting on a platform: make sure the lease is ours with a third of it left,
        renewing it now if less is left; `NotHeld` when it was taken over."""
        await self._ensure(job.id, job.fence)

    async def _ensure(self, job_id: str, fence: int) -> None:
        held = self._held.get(job_id)
        if held is None or held.lost or held.fence != fence:
            raise NotHeld(job_id)
        now = self._clock.monotonic()
        if held.until - now >= self.ttl / 3:
            return
        renewed = await self._store.renew_jobs(self.owner, {job_id: fence}, self.ttl)
        if job_id not in renewed:
            self.drop(job_id, fence)
            raise NotHeld(job_id)
        held.until = now + self.ttl

    def _check_margin(self, job_id: str, fence: int) -> None:
        held = self._held.get(job_id)
        if held is None or held.lost or held.fence != fence:
            raise NotHeld(job_id)
        if held.until - self._clock.monotonic() <= self.ttl * SEND_MARGIN:
            # Not renewed in time (the renewal is late, or this process was frozen): the job
            # may be someone else's by the time the request lands. It is let go (taken over
            # once the lease expires) rather than posted twice.
            self.drop(job_id, fence)
            raise NotHeld(job_id)

    @contextlib.contextmanager
    def posting(self, job_id: str, fence: int) -> Iterator[None]:
        """Every platform request the current task makes meanwhile is made under this lease
        (`check_before_post`, `check_at_send`)."""
        token = _POSTING.set(_Posting(self, job_id, fence))
        try:
            yield
        finally:
            _POSTING.reset(token)

    def drop(self, job_id: str, fence: int) -> None:
        """Stop renewing a lease (it expires; the next claim counts an attempt)."""
        held = self._held.get(job_id)
        if held is not None and held.fence == fence:
            del self._held[job_id]

    async def release(self, job_id: str, fence: int) -> None:
        """Give a lease up: the job is claimable at once and no attempt is counted."""
        self.drop(job_id, fence)
        await self._store.release_job(job_id, self.owner, fence)

    def holding(self) -> dict[str, int]:
        """The leases held now: job id → fence."""
        return {job_id: held.fence for job_id, held in self._held.items() if not held.lost}

    async def release_all(self, leases: Mapping[str, int]) -> None:
        """Give these leases up (at shutdown, after their drivers stopped); report stale
        writes one last time."""
        for job_id, fence in leases.items():
            try:
                await self.release(job_id, fence)
            except Exception as exc:  # it expires instead
                _LOGGER.warning("job %s: could not let its lease go: %r", job_id, exc)
        try:
            await self._replicas.heartbeat(self.owner, stale_writes=self._unreported)
        except Exception as exc:
            _LOGGER.warning("could not report this replica a last time: %r", exc)
        else:
            self._unreported = 0

    def refused(self, job_id: str) -> None:
        """Count a write of ours the store refused for its old fence."""
        self.stale_writes += 1
        self._unreported += 1
        _LOGGER.warning("job %s: another replica took it over; a stale write was refused", job_id)


@dataclass(frozen=True)
class _Posting:
    ownership: JobOwnership
    job_id: str
    fence: int


_POSTING: ContextVar[_Posting | None] = ContextVar("sdbot_posting_lease", default=None)


async def check_before_post() -> None:
    """Before a platform request (outside a job driver, nothing): the lease the task posts
    under is held with a third of it left, renewed now if less is; else `NotHeld`."""
    posting = _POSTING.get()
    if posting is not None:
        await posting.ownership._ensure(posting.job_id, posting.fence)


def check_at_send() -> None:
    """The last check, with no wait between it and the request's bytes leaving: the lease is
    held with more than `SEND_MARGIN` of it left by this process's clock; else `NotHeld`.

    What is left: a freeze that begins after this check and before the kernel has the request,
    and lasts longer than the margin plus the takeover (the lease running out, a claim, the new
    owner's look in the thread). The adapters make it in the step that writes the request
    (`transport.leased`), so the two are microseconds apart.
    """
    posting = _POSTING.get()
    if posting is not None:
        posting.ownership._check_margin(posting.job_id, posting.fence)


class Leadership:
    """A named lease (`LeaderLeases`) for periodic work one replica does at a time.

    `acquire` takes or extends it: the fence while this replica holds it, None while another
    does. Work runs only after a successful `acquire`, which is called again between batches.
    """

    def __init__(self, leases: LeaderLeases, name: str, owner: str, ttl: float) -> None:
        self._leases = leases
        self.name = name
        self.owner = owner
        self.ttl = ttl

    async def acquire(self) -> int | None:
        fence = await self._leases.lead(self.name, self.owner, self.ttl)
        if fence is None:
            _LOGGER.debug("%s: another replica holds the lease", self.name)
        return fence

    async def resign(self) -> None:
        await self._leases.resign(self.name, self.owner)
