"""`bot.retry`: the one retry policy (waits, caps, `Retry-After`, the loop)."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING

import pytest
from virtual_time import run

from bot.retry import RetryPolicy, TransientError, parse_retry_after

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


class Recorder:
    """Stands in for `asyncio.sleep`: the waits are values to check, not time to spend."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def failing(
    errors: list[Exception], result: str = "done"
) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls = [0]

    async def once() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return calls, once


def test_backoff_doubles_with_equal_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff=1.0, max_backoff=8.0)
    for attempt, ceiling in enumerate((1.0, 2.0, 4.0, 8.0, 8.0, 8.0)):
        waits = [policy.wait(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > 0  # jittered: concurrent callers spread out


def test_retry_after_is_a_minimum_and_scale_multiplies_every_wait() -> None:
    policy = RetryPolicy(backoff=0.5, max_retry_after=30.0)
    waits = [policy.wait(0, retry_after=7.0) for _ in range(200)]
    assert all(7.0 <= w <= 7.5 for w in waits)
    assert RetryPolicy(backoff=0.5, scale=0.001).wait(0, retry_after=7.0) <= 0.0075
    assert policy.honours(30.0) and policy.honours(None) and not policy.honours(30.5)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff=-0.1)
    with pytest.raises(ValueError):
        RetryPolicy(within=-1.0)


async def test_run_retries_transient_failures_and_returns_the_result() -> None:
    sleep = Recorder()
    calls, once = failing([TransientError("HTTP 503"), TransientError("HTTP 429", 2.0)])
    policy = RetryPolicy(attempts=3, backoff=0.1, max_backoff=1.0)
    assert await policy.run(once, sleep=sleep) == "done"
    assert calls == [3]
    assert 0.05 <= sleep.waits[0] <= 0.1  # no Retry-After: the back-off
    assert 2.0 <= sleep.waits[1] <= 2.1  # Retry-After: at least what the server asked


async def test_run_gives_up_after_the_attempts_with_the_last_error() -> None:
    sleep = Recorder()
    errors: list[Exception] = [TransientError(f"try {n}") for n in range(5)]
    calls, once = failing(errors)
    with pytest.raises(TransientError, match="try 2"):
        await RetryPolicy(attempts=2).run(once, sleep=sleep)
    assert calls == [3] and len(sleep.waits) == 2


async def test_run_does_not_wait_for_a_retry_after_over_the_cap() -> None:
    sleep = Recorder()
    calls, once = failing([TransientError("HTTP 429", retry_after=600.0)])
    with pytest.raises(TransientError):
        await RetryPolicy(max_retry_after=30.0).run(once, sleep=sleep)
    assert calls == [1] and sleep.waits == []


async def test_run_leaves_what_retry_if_refuses_alone() -> None:
    sleep = Recorder()
    calls, once = failing([ValueError("a bug, not an outage")])
    with pytest.raises(ValueError):
        await RetryPolicy().run(once, sleep=sleep)
    calls_if, once_if = failing([KeyError("retry me")])
    result = await RetryPolicy().run(
        once_if,
        retry_if=lambda exc: isinstance(exc, KeyError),
        sleep=sleep,
    )
    assert result == "done" and calls == [1] and calls_if == [2]


def test_retry_after_values_as_seconds_or_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    seconds = parse_retry_after(later)
    assert seconds is not None and 100 < seconds <= 120
    past = format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_within_bounds_the_retries_by_time_and_the_last_wait_ends_at_the_deadline() -> None:
    # The WebUI backend's reconnect wait: a count that never ends it, a time that does.
    policy = RetryPolicy(attempts=sys.maxsize, backoff=1.0, max_backoff=4.0, within=30.0)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    async def main() -> None:
        errors: list[Exception] = [TransientError(f"try {n}") for n in range(1000)]
        calls, once = failing(errors)
        with pytest.raises(TransientError) as raised:
            await policy.run(once, sleep=sleep)
        # Every retry was waited for, none after the deadline; the last try is the one made
        # at the deadline, and its error is the one raised.
        assert calls == [len(waits) + 1] and str(raised.value) == f"try {len(waits)}"
        assert 29.0 < sum(waits) <= 30.0 and waits[-1] <= 4.0

    run(main())


async def test_within_zero_tries_once() -> None:
    sleep = Recorder()
    calls, once = failing([TransientError("down"), TransientError("down")])
    with pytest.raises(TransientError):
        await RetryPolicy(attempts=5, within=0.0).run(once, sleep=sleep)
    assert calls == [1] and sleep.waits == []
