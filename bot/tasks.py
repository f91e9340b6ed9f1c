"""Background tasks: one supervision mechanism for long-running work, one for one-shot work,
and stopping a task.

`supervise` runs a long-running body (the poller, retention, a job's driver) in a task that
restarts it after an unexpected exception, with the traceback logged and an exponential
back-off (a `bot.retry.RetryPolicy`'s waits: the one back-off of sdbot), the way
discord.py's `tasks.loop` reconnects: a bug or an outage in one round never silently ends the
work. Cancellation ends it; a body that returns ends it.

`TaskSet` holds one-shot work that must not be restarted (a chat adapter's handling of one
event: running it twice would run a command twice): every task is named and held until it ends
(asyncio keeps only weak references, so an unheld task can be garbage-collected mid-flight), an
unexpected exception is logged with its traceback, and `aclose` cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, TypeVar

from bot.errors import SdbotError
from bot.retry import RetryPolicy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")


# The pauses of `supervise` when the caller names none (tests shorten them): about 1 s,
# doubling, at most a minute, jittered. Only the waits are used: restarts never run out.
DEFAULT_BACKOFF = RetryPolicy(backoff=1.0, max_backoff=60.0)


class Supervised:
    """A body run by `supervise`; `restarts` counts the unexpected exceptions it survived.

    Its state lives in slots rather than a closure: every job in flight has one (issue 11).
    """

    __slots__ = ("_backoff", "_body", "_on_restart", "_sleep", "name", "restarts", "task")

    def __init__(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        backoff: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]],
        on_restart: Callable[[BaseException], None] | None,
    ) -> None:
        self.name = name
        self.restarts = 0
        self._body = body
        self._backoff = backoff
        self._sleep = sleep
        self._on_restart = on_restart
        self.task = asyncio.create_task(self._run(), name=name)

    @property
    def alive(self) -> bool:
        return not self.task.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pauses = self._backoff
        failures = 0
        while True:
            began = loop.time()
            try:
                await self._body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if loop.time() - began > pauses.max_backoff:
                    failures = 0  # it had been running well: start the back-off over
                failures += 1
                self.restarts += 1
                pause = pauses.wait(failures - 1)
                _LOGGER.exception("%s failed; restarting in %.3g s", self.name, pause)
                if self._on_restart is not None:
                    self._on_restart(exc)
                await self._sleep(pause)


def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    backoff: RetryPolicy | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_restart: Callable[[BaseException], None] | None = None,
) -> Supervised:
    """Run `body()` in a task named `name`, again after every unexpected exception."""
    return Supervised(name, body, backoff or DEFAULT_BACKOFF, sleep, on_restart)


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


class TaskSet:
    """One-shot background tasks of one owner, tracked from start to end (see the module)."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, _T], name: str) -> asyncio.Task[_T]:
        """Run `work` in a task named `name`, held until it ends."""
        if self._closed:
            work.close()
            raise RuntimeError(f"{self._owner} is closed")
        task = asyncio.create_task(work, name=name)
        self.adopt(task)
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Track a task started elsewhere (a library's task running this owner's handler):
        held, its unexpected exception logged, and cancelled by `aclose`."""
        if task in self._tasks or task.done():
            return
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, SdbotError):
            _LOGGER.error("%s: %s stopped: %s", self._owner, task.get_name(), exc)
        elif exc is not None:
            _LOGGER.error("%s: %s failed", self._owner, task.get_name(), exc_info=exc)

    async def wait_idle(self) -> None:
        """Return once no task of the set is running."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Refuse new work, cancel every task and wait until all have ended."""
        self._closed = True
        current = asyncio.current_task()
        while tasks := [t for t in self._tasks if t is not current]:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
