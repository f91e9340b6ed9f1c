"""`GcFreezer`: survivors are frozen while jobs run, so full collections skip them; garbage
cycles among them are collected once the bot is idle (virtual time: intervals pass at once)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from virtual_time import run

from bot.memory import GcFreezer


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
