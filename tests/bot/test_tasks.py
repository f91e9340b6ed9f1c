"""`bot.tasks.TaskSet`: one-shot background work (a chat adapter's handling of one event) is
held until it ends, its failures are logged with their traceback, and closing stops it all."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import weakref

import pytest

from bot.errors import ChatDeliveryError
from bot.tasks import TaskSet


async def _forever(cancelled: list[str] | None = None) -> None:
    try:
        # A future nothing else refers to: only a held task keeps this coroutine alive.
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        if cancelled is not None:
            cancelled.append("cancelled")
        raise


async def test_a_spawned_task_is_held_until_it_ends() -> None:
    tasks = TaskSet("test")
    ref = weakref.ref(tasks.spawn(_forever(), "waiting"))
    for _ in range(3):
        await asyncio.sleep(0)
        gc.collect()
    task = ref()
    assert task is not None and not task.done() and len(tasks) == 1
    await tasks.aclose()
    assert task.cancelled() and len(tasks) == 0


async def test_a_failure_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    async def refused() -> None:
        raise ChatDeliveryError("Slack said no")

    tasks = TaskSet("test")
    await asyncio.gather(
        tasks.spawn(broken(), "broken"), tasks.spawn(refused(), "refused"), return_exceptions=True
    )
    await tasks.wait_idle()
    [failed] = [r for r in caplog.records if "broken failed" in r.getMessage()]
    assert failed.levelno == logging.ERROR and failed.exc_info is not None
    assert "boom" in caplog.text
    # An operational error is one line, as the core logs them.
    [stopped] = [r for r in caplog.records if "refused stopped" in r.getMessage()]
    assert "Slack said no" in stopped.getMessage() and stopped.exc_info is None


async def test_close_cancels_spawned_and_adopted_tasks_and_refuses_new_work() -> None:
    tasks = TaskSet("test")
    cancelled: list[str] = []
    tasks.spawn(_forever(cancelled), "spawned")
    elsewhere = asyncio.create_task(_forever(cancelled), name="a library's task")
    tasks.adopt(elsewhere)
    await asyncio.sleep(0)
    await tasks.aclose()
    assert cancelled == ["cancelled", "cancelled"] and elsewhere.cancelled()
    work = _forever()
    with pytest.raises(RuntimeError, match="test is closed"):
        tasks.spawn(work, "late")
    assert inspect.getcoroutinestate(work) == inspect.CORO_CLOSED  # not left unawaited


async def test_wait_idle_waits_for_every_task() -> None:
    tasks = TaskSet("test")
    gate = asyncio.Event()

    async def gated() -> None:
        await gate.wait()

    tasks.spawn(gated(), "gated")
    idle = asyncio.create_task(tasks.wait_idle())
    await asyncio.sleep(0)
    assert not idle.done()
    gate.set()
    await asyncio.wait_for(idle, 5)
    assert len(tasks) == 0
