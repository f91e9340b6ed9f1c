"""Small helpers for the core's background tasks."""

from __future__ import annotations

import asyncio
import contextlib


async def stop(task: asyncio.Task[object] | asyncio.Task[None] | None) -> None:
    """Cancel a task and wait until it has ended; our own cancellation still propagates."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
