"""The one retry policy of sdbot: how every repeated call waits, whoever makes it.

The chat adapters (Slack's Web API, file hosts and upload URLs, Discord's CDN) and the backends
(ESD's API and its presigned storage) all repeat a failed call the same way: a server's
`Retry-After` is honoured (never retried sooner; a wait longer than the policy accepts ends the
retries, so a caller's own slower loop takes over), otherwise an exponential back-off with
"equal jitter" (half fixed, half random, so concurrent callers spread out and a wait is never
zero), at most `attempts` retries and, when `within` is set, none started later than that
after the first try. `RetryPolicy.run` is the loop; `RetryPolicy.pause` serves libraries and
loops that repeat on their own (slack_sdk's retry handlers, the ESD events consumer). Pure
asyncio, so the core and both outer layers share it; which failures are worth another try is
the caller's to say.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")


class TransientError(Exception):
    """A failed attempt worth another try; `retry_after` is what the server asked for."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a failed call is tried again.

    `scale` multiplies every wait (tests make it tiny so fault runs take seconds; production
    keeps 1.0 and honours `Retry-After` exactly).
    """

    attempts: int = 8  # retries after the first try, per call
    backoff: float = 0.5  # first wait when the server names none, doubled each retry
    max_backoff: float = 120.0  # the longest computed wait
    max_retry_after: float = 120.0  # the longest `Retry-After` waited for; longer ends retries
    scale: float = 1.0
    # Seconds after the first try in which a retry may start (the last wait is cut short to
    # end there: one more try at the deadline); None: no time bound.
    within: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError("RetryPolicy.attempts must not be negative")
        waits = (self.backoff, self.max_backoff, self.max_retry_after, self.scale)
        if min(waits) < 0 or (self.within is not None and self.within < 0):
            raise ValueError("RetryPolicy waits must not be negative")

    def honours(self, retry_after: float | None) -> bool:
        """Whether a server's `Retry-After` (seconds) is worth waiting for here."""
        return retry_after is None or retry_after <= self.max_retry_after

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt` (0-based).

        `Retry-After` is honoured as a minimum, plus up to one `backoff` of jitter; without it
        the wait is `backoff · 2^attempt` capped at `max_backoff`, with equal jitter.
        """
        if retry_after is not None:
            base = min(retry_after, self.max_retry_after)
            return (base + random.uniform(0, self.backoff)) * self.scale
        ceiling = min(self.max_backoff, self.backoff * 2.0**attempt)
        return (ceiling / 2 + random.uniform(0, ceiling / 2)) * self.scale

    async def pause(self, attempt: int, retry_after: float | None = None) -> None:
        await asyncio.sleep(self.wait(attempt, retry_after))

    async def run(
        self,
        once: Callable[[], Awaitable[T]],
        *,
        retry_if: Callable[[Exception], bool] = lambda exc: isinstance(exc, TransientError),
        what: str = "",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> T:
        """`await once()`, again after each exception `retry_if` accepts, while attempts (and
        the time `within`, by the event loop's clock) last.

        An exception's `retry_after` attribute (seconds), when it has one, is the server's
        `Retry-After`. The last exception propagates unchanged, as does one `retry_if` refuses
        or whose `Retry-After` is longer than `max_retry_after`. `what` names the call in the
        log line of each retry; `sleep` is how it waits (tests record the waits).
        """
        loop = asyncio.get_running_loop()
        deadline = None if self.within is None else loop.time() + self.within
        attempt = 0
        while True:
            try:
                return await once()
            except Exception as exc:
                retry_after = retry_after_of(exc)
                if attempt >= self.attempts or not retry_if(exc) or not self.honours(retry_after):
                    raise
                delay = self.wait(attempt, retry_after)
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise
                    delay = min(delay, left)
                attempt += 1
                _LOGGER.info(
                    "%s: %s; retry %d/%d in %.2f s",
                    what or "a call",
                    exc,
                    attempt,
                    self.attempts,
                    delay,
                )
                await sleep(delay)


def retry_after_of(exc: BaseException) -> float | None:
    """The `retry_after` an exception carries (seconds), or None."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header value asks for: delay-seconds or an HTTP-date (RFC 9110
    §10.2.3); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())
