"""Takeover after a replica is killed (issue 15): how long its jobs wait for another replica.

Two `sdbot run` processes, `a` and `b` (Slack HTTP mode against the loopback fake Slack, local
backend, one PostgreSQL schema on the test server), as the multi-replica test runs them
(`tests/kit/replica_kit.py`). Replica `a` accepts N jobs; the fake Slack holds its result uploads
unanswered, so every job ends on the backend and waits at `a` in the middle of its delivery,
its lease renewed. Then `a` is killed with SIGKILL and the clock starts. A job is *resumed* when
`b`, having taken its lease, makes its first call about it (the look in the job's thread for a
result `a` may have posted, or its status message shown again, which come before any post); it
is *delivered* when `b` has posted its result message. The target (issue 15) is the lease
length + 2 s for the last job resumed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kit"))

import asyncpg
from pg_kit import schema_on, server_url
from replica_kit import cluster, until
from scenario_kit import png

from stores.postgres import PostgresJobStore
from tests.slack.conftest import BOT_USER

if TYPE_CHECKING:
    from collections.abc import Sequence

Row = tuple[str, str, str, bool]
LEASE = 5.0  # seconds (the default is 30; the takeover scales with it)


class _Clock:
    """When `b` first looked into each job's thread, and posted each job's result, after the
    kill; what `a` was held at."""

    def __init__(self) -> None:
        self.killed: float | None = None
        self.held = 0  # `a`'s uploads held unanswered
        self.release = asyncio.Event()
        self.resumed: dict[str, float] = {}  # thread ts → seconds after the kill
        self.delivered: dict[str, float] = {}

    async def on_done(self, caller: str, method: str, params: dict[str, Any]) -> None:
        if caller == "a" and method == "files.getUploadURLExternal":
            self.held += 1
            await self.release.wait()
            return
        if caller != "b" or self.killed is None:
            return
        since = time.monotonic() - self.killed
        if method in ("chat.update", "conversations.replies"):
            # The status message shown again, or the thread searched: `ts` is the thread's.
            self.resumed.setdefault(str(params.get("ts")), since)
        elif method == "chat.postMessage" and params.get("thread_ts"):
            metadata = params.get("metadata") or {}
            if isinstance(metadata, str):
                metadata = json.loads(metadata)
            if str((metadata.get("event_payload") or {}).get("key", "")).startswith("result:"):
                self.delivered.setdefault(str(params["thread_ts"]), since)


async def _once(jobs: int) -> tuple[list[float], list[float]]:
    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp:
        async with schema_on(server_url(), prefix="sdbot_bench") as url:
            async with PostgresJobStore(url):  # the schema, migrated once
                pass
            settings = {
                "SDBOT_DATABASE_URL": url,
                "SDBOT_LEASE_SECONDS": str(LEASE),
                # Long enough for every status message to be posted before the first result
                # is held (a replica's connections to Slack are 100 at most).
                "SDBOT_LOCAL_DELAY": str(2 + jobs * 0.05),
                "SDBOT_USER_CONCURRENCY": str(jobs),
                "SDBOT_MAX_IN_FLIGHT": str(2 * jobs),
            }
            db = await asyncpg.connect(url)
            try:
                async with cluster(Path(tmp), ["a", "b"], settings) as (slack, replicas):
                    slack.fake.on_done = clock.on_done
                    picture = slack.fake.add_file("cat.png", png())
                    for n in range(jobs):
                        text = f"<@{BOT_USER}> img2img cat {n}"
                        body = slack.message_event(f"C{n}", text, [picture])
                        # Answered 503 when its job is not written in time: Slack sends it
                        # again (the first attempt's job is made once, whichever comes first).
                        for retry in range(4):
                            if await slack.deliver(replicas["a"], body, retry=retry) == 200:
                                break
                        else:
                            raise RuntimeError(f"replica a did not take event {n}")
                    # Every job done on the backend and being delivered by `a`.
                    async with asyncio.timeout(120):
                        while True:
                            posting = await db.fetchval(
                                "SELECT count(*) FROM jobs WHERE delivery = 'posting'"
                            )
                            if posting >= jobs:
                                break
                            await asyncio.sleep(0.05)
                    clock.killed = time.monotonic()
                    replicas["a"].signal(signal.SIGKILL)
                    clock.release.set()
                    await until(
                        lambda: len(clock.delivered) >= jobs,
                        LEASE + 180,
                        lambda: f"{len(clock.delivered)} of {jobs} delivered by b",
                    )
            finally:
                await db.close()
    return sorted(clock.resumed.values()), sorted(clock.delivered.values())


async def takeover(sizes: Sequence[int], runs: int) -> list[Row]:
    rows: list[Row] = []
    for jobs in sizes:
        results = [await _once(jobs) for _ in range(runs)]
        first = statistics.median(r[0][0] for r in results)
        last = statistics.median(r[0][-1] for r in results)
        delivered = statistics.median(r[1][-1] for r in results)
        worst = max(r[0][-1] for r in results)
        rows.append(
            (
                f"{jobs} jobs waiting at a replica killed with SIGKILL (lease {LEASE:g} s): "
                f"kill → first job resumed by another replica {first:.2f} s, → last job "
                f"delivered {delivered:.2f} s; worst run's last resumed {worst:.2f} s; "
                f"median of {runs} runs",
                f"last job resumed {last:.2f} s",
                f"≤ {LEASE + 2:g} s (lease + 2 s)",
                last <= LEASE + 2,
            )
        )
    return rows
