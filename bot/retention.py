"""Retention (SPEC §3 "Retention"): a background task that deletes old inputs and results.

Every `interval` it removes the stored images of jobs older than the retention period, a batch
at a time so the store's one writer is never held for long. Job rows stay, and say their
images have expired.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from bot.tasks import Supervised, stop, supervise

if TYPE_CHECKING:
    import asyncio

    from bot.ports import ClaimStore, Clock, ImageStore

_LOGGER = logging.getLogger(__name__)


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
        interval: float = 3600.0,
    ) -> None:
        self._images = images
        self._claims = claims
        self._clock = clock
        self._age = timedelta(days=days)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.supervised: Supervised | None = None

    async def sweep(self, batch: int = 500) -> int:
        """Expire every job past the period, in batches; return how many jobs were swept."""
        cutoff = self._clock.now() - self._age
        total = 0
        while True:
            swept = await self._images.expire_images(cutoff, batch)
            total += len(swept)
            if len(swept) < batch:
                break
        if total:
            _LOGGER.info("retention: removed the stored images of %d job(s)", total)
        # Platforms retry an event for minutes; a day of claims is plenty.
        await self._claims.expire_claims(self._clock.now() - timedelta(days=1))
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
