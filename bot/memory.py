"""Short garbage collections with many long-lived jobs (issue 11).

CPython 3.11's full collection walks every object the collector tracks. With 10,000 jobs in
flight that is about a million objects, and the event loop stood still for 0.6–0.9 s several
times a minute (docs/benchmarks.md). `GcFreezer` collects the young generations every
`interval` seconds and moves the survivors to the permanent generation (`gc.freeze()`), so a full
collection walks only what was made since. Frozen objects are still freed by reference counting
when their job ends; only reference cycles among them wait, until the bot is idle (no job in
flight), when everything is unfrozen and collected once, or until memory in use has grown by
`max_growth` blocks since the last full collection.

The interval is short because what a tick collects is what was made since the last one and is
still alive, and because the collector's own young collections (gen 1) walk everything made
since the last freeze: with 10,000 jobs in flight and a 10 s tick, gen-1 collections took up
to 58 ms of CPU, with a 2 s tick up to 40 ms, and the loop's longest step fell from ~300 ms to
~56 ms (a per-callback timer, load average 5-9 on 2 cores; docs/benchmarks.md).

The collector's own full collections are off while the freezer runs (their threshold raised;
`start` and `aclose`): the freezer decides them. With everything older than a tick frozen, the
collector's rule (a full collection every tenth gen-1 collection, once what survived since the
last one is a quarter of what it left) fired over and over under a burst: a command's objects
all survive until its ack, so 5,000 commands at once ran 5-6 full collections over the burst's
own objects, 220-300 ms of a ~900 ms burst (issue 11). An idle tick applies the collector's
rule instead (`gc.get_count()`), so cycles made while idle are still collected.

That growth is read from the allocator (`sys.getallocatedblocks()`, well under a millisecond),
not by counting frozen objects: `gc.get_freeze_count()` walks the whole frozen set, and with
10,000 jobs in flight it stood the loop still for 50–150 ms every tick; counting only what each
tick froze (`gc.get_objects`) still took 30–50 ms. Memory held is also what garbage cycles
among frozen objects would cost.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import TYPE_CHECKING

from bot.tasks import stop

if TYPE_CHECKING:
    from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)

# The full-collection threshold while the freezer runs: never reached (gen-1 collections).
_NO_FULL = 2**30


class _Thresholds:
    """The collector's thresholds, raised for full collections while any freezer runs and
    given back when the last one closes (several apps in one process, such as tests, close in
    any order)."""

    own: tuple[int, int, int] | None = None  # the collector's, while any freezer runs
    running = 0

    @classmethod
    def raise_full(cls) -> tuple[int, int, int]:
        if cls.own is None:
            cls.own = gc.get_threshold()
            young, middle, _ = cls.own
            gc.set_threshold(young, middle, _NO_FULL)
        cls.running += 1
        return cls.own

    @classmethod
    def release(cls) -> None:
        cls.running -= 1
        if cls.running == 0 and cls.own is not None:
            gc.set_threshold(*cls.own)
            cls.own = None


class GcFreezer:
    """A background task that keeps the collector's work proportional to new objects."""

    def __init__(
        self,
        busy: Callable[[], bool],
        *,
        interval: float = 2.0,
        max_growth: int = 5_000_000,
    ) -> None:
        self._busy = busy  # True while jobs are in flight
        self._interval = interval
        self._max_growth = max_growth  # allocator blocks (small objects) since the last full
        self._baseline = 0
        self._frozen = False  # a tick froze something since the last full collection
        self._task: asyncio.Task[None] | None = None
        self._thresholds: tuple[int, int, int] | None = None  # the collector's, while running

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("GC freezer already started")
        gc.collect(1)  # start-up's young garbage; then what start-up made is kept for good
        gc.freeze()
        self._baseline = sys.getallocatedblocks()
        self._thresholds = _Thresholds.raise_full()
        self._task = asyncio.create_task(self._run(), name="sdbot-gc")

    async def aclose(self) -> None:
        await stop(self._task)
        self._task = None
        if self._thresholds is not None:
            _Thresholds.release()
            self._thresholds = None
        gc.unfreeze()

    def _full(self) -> None:
        """Unfreeze and collect everything once, then freeze the survivors."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._baseline = sys.getallocatedblocks()
        self._frozen = False
        _LOGGER.debug(
            "full collection: %d unreachable, %d blocks in use, %.0f ms",
            found,
            self._baseline,
            (time.perf_counter() - started) * 1000,
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            grown = sys.getallocatedblocks() - self._baseline
            busy = self._busy()
            if grown > self._max_growth or (self._frozen and not busy):
                self._full()
            elif busy:
                gc.collect(1)  # young cycles die here rather than being frozen
                gc.freeze()
                self._frozen = True
            elif self._thresholds is not None and gc.get_count()[2] > self._thresholds[2]:
                gc.collect()  # the collector's own rule, idle: only what is not frozen
