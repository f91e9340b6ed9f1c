"""The core's background tasks: one supervision mechanism, and stopping a task.

`supervise` runs a long-running body (the poller, retention, a job's driver) in a task that
restarts it after an unexpected exception, with the traceback logged and an exponential
back-off, the way discord.py's `tasks.loop` reconnects: a bug or an outage in one round never
silently ends the work. Cancellation ends it; a body that returns ends it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Pauses before restarting a failed body: `first`, doubling, at most `cap` seconds."""

    first: float = 1.0
    cap: float = 60.0

    def pause(self, failures: int) -> float:
        return float(min(self.cap, self.first * 2.0 ** max(0, failures - 1)))


# The back-off of `supervise` when the caller names none (tests shorten it).
DEFAULT_BACKOFF = Backoff()


class Supervised:
    """A body run by `supervise`; `restarts` counts the unexpected exceptions it survived."""

    def __init__(self, name: str, task: asyncio.Task[None]) -> None:
        self.name = name
        self.task = task
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return not self.task.done()


def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_restart: Callable[[BaseException], None] | None = None,
) -> Supervised:
    """Run `body()` in a task named `name`, again after every unexpected exception."""
    loop = asyncio.get_running_loop()

    async def run() -> None:
        pauses = backoff or DEFAULT_BACKOFF
        failures = 0
        while True:
            began = loop.time()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if loop.time() - began > pauses.cap:
                    failures = 0  # it had been running well: start the back-off over
                failures += 1
                supervised.restarts += 1
                pause = pauses.pause(failures)
                _LOGGER.exception("%s failed; restarting in %.3g s", name, pause)
                if on_restart is not None:
                    on_restart(exc)
                await sleep(pause)

    supervised = Supervised(name, asyncio.create_task(run(), name=name))
    return supervised


async def stop(task: asyncio.Task[object] | asyncio.Task[None] | None) -> None:
    """Cancel a task and wait until it has ended.

    The task's own `CancelledError` is absorbed; the caller's is not: a caller cancelled while
    it waits here is cancelled (and the task is still cancelled).
    """
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
