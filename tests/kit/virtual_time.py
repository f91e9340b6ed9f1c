"""An event loop whose clock jumps over idle time, for tests of intervals and deadlines.

When no callback is ready and no I/O arrives within `GRACE` seconds of real time, the loop's
clock jumps to its next timer, so minutes of polling take a moment. Threads (SQLite, image
work) still run in real time; a jump while one works is the same as that work being slow,
which is exactly what the code under test must survive. Tests run a coroutine with `run(…)`
and assert outcomes, never durations.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine

T = TypeVar("T")

GRACE = 0.002  # real seconds the loop waits for I/O or a thread before jumping


class _Selector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout <= GRACE:
            return list(super().select(timeout))
        events = list(super().select(GRACE))
        if not events and timeout is not None:
            self.skipped += timeout - GRACE  # nothing happened: the timer is due now
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """`SelectorEventLoop` whose `time()` is real monotonic time plus every idle jump."""

    def __init__(self) -> None:
        self._virtual = _Selector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return time.monotonic() + self._virtual.skipped


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on a fresh `VirtualTimeLoop` and close it."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
