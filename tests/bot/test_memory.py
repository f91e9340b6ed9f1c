"""`GcFreezer`: survivors are frozen while jobs run, so full collections skip them; garbage
cycles among them are collected once the bot is idle (virtual time: intervals pass at once)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import TYPE_CHECKING

from virtual_time import run

from bot.memory import GcFreezer

if TYPE_CHECKING:
    import pytest


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_survivors_are_frozen_while_busy_and_cycles_collected_when_idle() -> None:
    async def main() -> tuple[bool, bool, bool]:
        busy = [True]
        freezer = GcFreezer(lambda: busy[0], interval=1.0)
        await freezer.start()
        try:
            cycle = _Cycle()
            alive = weakref.ref(cycle)
            await asyncio.sleep(1.5)  # a busy tick: the cycle, still in use, is frozen
            del cycle
            gc.collect()  # a full collection no longer walks frozen objects
            skipped = alive() is not None
            busy[0] = False
            await asyncio.sleep(1.0)  # an idle tick: unfrozen and collected once
            return skipped, alive() is None, gc.get_freeze_count() > 0
        finally:
            await freezer.aclose()

    skipped, collected, refrozen = run(main())
    assert skipped and collected and refrozen
    assert gc.get_freeze_count() == 0  # closing unfreezes everything


def test_a_busy_tick_does_not_walk_the_frozen_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # Counting the frozen set walks all of it: 50-150 ms with 10,000 jobs in flight (issue 11).
    walks: list[int] = []
    real = gc.get_freeze_count

    def counting() -> int:
        walks.append(1)
        return real()

    monkeypatch.setattr(gc, "get_freeze_count", counting)

    async def main() -> bool:
        freezer = GcFreezer(lambda: True, interval=1.0)
        await freezer.start()
        try:
            cycle = _Cycle()
            alive = weakref.ref(cycle)
            await asyncio.sleep(3.5)  # three busy ticks
            del cycle
            gc.collect()
            return alive() is not None  # frozen, so a full collection skipped it
        finally:
            await freezer.aclose()

    assert run(main())
    assert walks == []


def test_memory_grown_past_the_bound_while_busy_collects_everything_once() -> None:
    async def main() -> bool:
        freezer = GcFreezer(lambda: True, interval=1.0, max_growth=5_000)
        await freezer.start()
        try:
            cycles = [_Cycle() for _ in range(20_000)]
            alive = weakref.ref(cycles[0])
            await asyncio.sleep(1.5)  # a busy tick: they end up frozen
            del cycles  # garbage cycles among frozen objects: they hold their memory
            more = [_Cycle() for _ in range(20_000)]
            await asyncio.sleep(1.0)  # still busy, but memory in use grew past the bound
            del more
            return alive() is None
        finally:
            await freezer.aclose()

    assert run(main())


def test_the_collector_makes_no_full_collection_of_its_own_while_the_freezer_runs() -> None:
    # Under a burst every command's objects survive until its ack, and the collector's own
    # rule ran a full collection over them every tenth gen-1 collection (issue 11).
    generations: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    async def main() -> int:
        freezer = GcFreezer(lambda: True, interval=1000.0)
        await freezer.start()
        gc.callbacks.append(seen)
        try:
            survivors: list[list[int]] = [[] for _ in range(200_000)]  # ~28 gen-1 collections
            return len(survivors)
        finally:
            gc.callbacks.remove(seen)
            await freezer.aclose()

    before = gc.get_threshold()
    # What the collector counts as long-lived is what its last full collection left: nothing
    # here, as after a start-up freeze, so its own rule would start full collections at once.
    gc.freeze()
    gc.collect()
    gc.unfreeze()
    assert run(main()) == 200_000
    assert 1 in generations
    assert 2 not in generations
    assert gc.get_threshold() == before  # closing gives the collector its own rule back


def test_an_idle_tick_collects_cycles_as_the_collector_would() -> None:
    async def main() -> bool:
        freezer = GcFreezer(lambda: False, interval=1.0)
        await freezer.start()
        try:
            cycle = _Cycle()
            alive = weakref.ref(cycle)
            gc.collect(1)  # it survives into the oldest generation, then becomes garbage
            del cycle
            for _ in range(gc.get_threshold()[1] + 1):
                gc.collect(1)  # as many gen-1 collections as would start a full one
            still = alive() is not None
            await asyncio.sleep(1.5)  # an idle tick
            return still and alive() is None
        finally:
            await freezer.aclose()

    assert run(main())


def test_the_collectors_thresholds_come_back_when_the_last_freezer_closes() -> None:
    async def main() -> tuple[int, int]:
        first, second = GcFreezer(lambda: True), GcFreezer(lambda: True)
        await first.start()
        await second.start()
        await first.aclose()  # not in the order they started
        raised = gc.get_threshold()[2]
        await second.aclose()
        return raised, gc.get_threshold()[2]

    before = gc.get_threshold()
    raised, after = run(main())
    assert raised > before[2]  # the second still runs: full collections stay the freezer's
    assert after == before[2]
