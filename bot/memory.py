"""Short garbage collections with many long-lived jobs (issue 11).

CPython 3.11's full collection walks every object the collector tracks. With 10,000 jobs in
flight that is about a million objects, and the event loop stood still for 0.6–0.9 s several
times a minute (docs/benchmarks.md). `GcFreezer` collects the young generations every
`interval` seconds and moves the survivors to the permanent generation (`gc.freeze()`), so a full
collection walks only what was made since. Frozen objects are still freed by reference counting
when their job ends; only reference cycles among them wait, until the bot is idle (no job in
flight), when everything is unfrozen and collected once, or until the frozen set has grown by
`max_growth` objects since the last full collection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import TYPE_CHECKING

from bot.tasks import stop

if TYPE_CHECKING:
    from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)


class GcFreezer:
    """A background task that keeps the collector's work proportional to new objects."""

    def __init__(
        self,
        busy: Callable[[], bool],
        *,
        interval: float = 10.0,
        max_growth: int = 5_000_000,
    ) -> None:
        self._busy = busy  # True while jobs are in flight
        self._interval = interval
        self._max_growth = max_growth
        self._baseline = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("GC freezer already started")
        gc.collect(1)  # start-up's young garbage; then what start-up made is kept for good
        gc.freeze()
        self._baseline = gc.get_freeze_count()
        self._task = asyncio.create_task(self._run(), name="sdbot-gc")

    async def aclose(self) -> None:
        await stop(self._task)
        self._task = None
        gc.unfreeze()

    def _full(self) -> None:
        """Unfreeze and collect everything once, then freeze the survivors."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._baseline = gc.get_freeze_count()
        _LOGGER.debug(
            "full collection: %d unreachable, %d kept, %.0f ms",
            found,
            self._baseline,
            (time.perf_counter() - started) * 1000,
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            grown = gc.get_freeze_count() - self._baseline
            if grown > self._max_growth or (grown > 0 and not self._busy()):
                self._full()
            elif self._busy():
                gc.collect(1)  # young cycles die here rather than being frozen
                gc.freeze()
