"""Retention (SPEC §3 "Retention"): a background task that deletes old inputs and results.

Every `interval` it removes the stored images of jobs older than the retention period, a batch
at a time so the store's one writer is never held for long. Job rows stay, and say their
images have expired. With several replicas on one store, the sweep runs on the one holding the
`retention` leader lease (`bot.leases.Leadership`), taken for a little more than an interval and
extended before every batch, so a sweep runs once per interval across replicas and a replica
that lost the lease stops between batches.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Final

from bot.tasks import Supervised, stop, supervise

if TYPE_CHECKING:
    import asyncio

    from bot.leases import Leadership
    from bot.ports import ClaimStore, Clock, ImageStore

_LOGGER = logging.getLogger(__name__)

# The default interval between sweeps, and the leader lease that covers one (a little longer,
# so the holder's next round extends it before anyone else may take it).
INTERVAL: Final = 3600.0
RETENTION_LEASE: Final = INTERVAL + 60.0


class Retention:
    """Deletes images older than `days`, and event claims older than a day, now and then every
    `interval` seconds."""

    def __init__(
        self,
        images: ImageStore,
        claims: ClaimStore,
        clock: Clock,
        *,
        days: float,
        interval: float = INTERVAL,
        leader: Leadership | None = None,
    ) -> None:
        self._images = images
        self._claims = claims
        self._clock = clock
        self._age = timedelta(days=days)
        self._interval = interval
        self._leader = leader
        self._task: asyncio.Task[None] | None = None
        self.supervised: Supervised | None = None

    async def _leading(self) -> bool:
        return self._leader is None or await self._leader.acquire() is not None

    async def sweep(self, batch: int = 500) -> int:
        """Expire every job past the period, in batches; return how many jobs were swept."""
        cutoff = self._clock.now() - self._age
        total = 0
        while await self._leading():
            swept = await self._images.expire_images(cutoff, batch)
            total += len(swept)
            if len(swept) < batch:
                # Platforms retry an event for minutes; a day of claims is plenty.
                await self._claims.expire_claims(self._clock.now() - timedelta(days=1))
                break
        if total:
            _LOGGER.info("retention: removed the stored images of %d job(s)", total)
        return total

    async def start(self) -> None:
        if self._task is None:
            self.supervised = supervise("sdbot-retention", self._run, sleep=self._clock.sleep)
            self._task = self.supervised.task

    async def aclose(self) -> None:
        await stop(self._task)
        self._task = None

    async def _run(self) -> None:
        # Supervised: a failed sweep is logged and retried after a back-off.
        while True:
            await self.sweep()
            await self._clock.sleep(self._interval)
