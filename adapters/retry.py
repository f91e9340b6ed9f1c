"""How the adapters wait on a platform's rate limits and server errors (one policy for all)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long sdbot waits on Slack's rate limits and server errors.

    `scale` multiplies every wait (tests make it tiny so fault runs take seconds, production
    keeps 1.0 and honours Slack's `Retry-After` exactly).
    """

    attempts: int = 8  # retries after the first try, per call
    backoff: float = 0.5  # first server-error / missing-Retry-After wait, doubled each time
    max_wait: float = 120.0  # longest single wait; a longer Retry-After is not waited for
    scale: float = 1.0

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry `attempt` (0-based), with up to 10 % jitter."""
        base = retry_after if retry_after is not None else self.backoff * 2**attempt
        base = min(base, self.max_wait)
        return (base + random.uniform(0, base / 10)) * self.scale

    async def pause(self, attempt: int, retry_after: float | None = None) -> None:
        await asyncio.sleep(self.wait(attempt, retry_after))
