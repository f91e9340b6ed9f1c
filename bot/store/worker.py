"""The one thread that talks to SQLite, and its group commit of new-job inserts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

# Results are handed back to the event loop at least this often during a long batch.
_HANDOFF_SECONDS: Final = 0.005


class Worker:
    """The one thread that talks to SQLite.

    It takes every call queued since it last looked, runs new-job inserts first (they gate an
    acknowledgement the user is waiting for; no queued call can depend on another caller's
    insert) in one group commit, then the rest in order, and hands the results back to the
    event loop a few milliseconds' worth at a time. Under a burst this costs one commit and a
    few loop wake-ups per batch instead of one of each per call; the inserts themselves are
    handed to one call of the store's group writer (`submit_group`), a few statements per table
    for the whole batch.
    """

    def __init__(self, group: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self._group = group
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sdbot-store", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], object], *, urgent: bool = False) -> asyncio.Future[object]:
        loop = asyncio.get_running_loop()
        call = _Call(loop, loop.create_future(), work, urgent)
        self._queue.put(call)
        return call.future

    def submit_group(
        self, run: Callable[[list[Any]], list[BaseException | None]], item: object
    ) -> asyncio.Future[object]:
        """Queue `item` for `run`, urgently: the items queued for the same `run` by the time the
        thread looks are handed to one call of it (a burst's inserts, written a few statements
        per table), which returns each item's outcome in order: None (the item's result), or
        the exception its caller gets."""
        loop = asyncio.get_running_loop()
        call = _Call(loop, loop.create_future(), None, True, run, item)
        self._queue.put(call)
        return call.future

    def stop(self) -> None:
        """Let the thread end after the calls already queued (it is a daemon either way)."""
        self._queue.put(None)

    def _grouped(self, calls: list[_Call]) -> list[tuple[_Call, object, BaseException | None]]:
        """Run calls in one transaction (each its own savepoint); nothing is handed back before
        the commit, so an acknowledged job is always a committed one."""
        try:
            with self._group():
                return _outcomes(calls)
        except BaseException as exc:  # the commit itself failed: none of them happened
            return [(call, None, exc) for call in calls]

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = None in batch
            calls = [c for c in batch if c is not None and not c.future.cancelled()]
            urgent = [c for c in calls if c.urgent]
            if len(urgent) > 1:
                _hand_back(self._grouped(urgent))
                calls = [c for c in calls if not c.urgent]
            else:
                calls.sort(key=lambda c: not c.urgent)  # stable: order kept within each kind
            done: list[tuple[_Call, object, BaseException | None]] = []
            handed = time.monotonic()
            for call in calls:
                if call.future.cancelled():  # cancelled while queued: never runs
                    continue
                done.append(_outcome(call))
                # Hand results back every few milliseconds, so the first callers of a long
                # batch do not wait for its last.
                if time.monotonic() - handed > _HANDOFF_SECONDS:
                    _hand_back(done)
                    done, handed = [], time.monotonic()
            _hand_back(done)


def _outcomes(calls: list[_Call]) -> list[tuple[_Call, object, BaseException | None]]:
    """Run `calls`: each plain one alone, in order; then the items of each group together."""
    done = [_outcome(call) for call in calls if call.group is None]
    groups: dict[Callable[[list[Any]], list[BaseException | None]], list[_Call]] = {}
    for call in calls:
        if call.group is not None:
            groups.setdefault(call.group, []).append(call)
    for run, members in groups.items():
        try:
            outcomes = run([call.item for call in members])
        except BaseException as exc:  # nothing of the group happened
            outcomes = [exc] * len(members)
        done += [(call, None, outcome) for call, outcome in zip(members, outcomes, strict=True)]
    return done


def _outcome(call: _Call) -> tuple[_Call, object, BaseException | None]:
    if call.group is not None:
        return _outcomes([call])[0]
    assert call.work is not None
    try:
        return (call, call.work(), None)
    except BaseException as exc:  # handed to the awaiting task, which re-raises
        return (call, None, exc)


def _hand_back(results: list[tuple[_Call, object, BaseException | None]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Call, object, BaseException | None]]] = {}
    for result in results:
        by_loop.setdefault(result[0].loop, []).append(result)
    for loop, settled in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, settled)


@dataclasses.dataclass(eq=False, slots=True)
class _Call:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[object]
    work: Callable[[], object] | None  # None for an item of a group (`submit_group`)
    urgent: bool
    group: Callable[[list[Any]], list[BaseException | None]] | None = None
    item: object = None


def _settle(results: list[tuple[_Call, object, BaseException | None]]) -> None:
    for call, value, error in results:
        if call.future.cancelled():
            continue
        if error is None:
            call.future.set_result(value)
        else:
            call.future.set_exception(error)
