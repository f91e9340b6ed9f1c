"""The job store on PostgreSQL beside SQLite (issue 15): acknowledgement of a command burst
through the real core on each engine, and claims per second by several replicas at once.

PostgreSQL is the test server (`SDBOT_TEST_DATABASE_URL`, else 127.0.0.1:5432 database
`test`); each run works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from bench.machine import percentile
from bench.scenarios import burst_latencies, burst_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kit"))

from pg_kit import schema_on, server_url
from scenario_kit import default_backend
from scenario_kit import fast_config as _fast_config

from bot.app import BotApp
from bot.model import AttachmentRef, Caller, Conversation, Job, JobState, Platform
from bot.store import SqliteJobStore
from bot.store.rows import JOB_COLUMNS
from commands.options import job_options
from stores.postgres import PostgresJobStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from bot.ports import JobStore

Row = tuple[str, str, str, bool]
ENGINES = ("SQLite", "PostgreSQL")


def _pg_schema() -> contextlib.AbstractAsyncContextManager[str]:
    """A URL whose tables go to a new schema on the test server, dropped on exit."""
    return schema_on(server_url(), prefix="sdbot_bench")


@contextlib.asynccontextmanager
async def _stores(engine: str, tmp: Path) -> AsyncIterator[Callable[[], JobStore]]:
    """Unstarted stores of one engine, all on one database."""
    if engine == "SQLite":
        yield lambda: SqliteJobStore(tmp / "jobs.sqlite3")
        return
    async with _pg_schema() as url:
        yield lambda: PostgresJobStore(url)


# -- Acknowledgement of a burst ---------------------------------------------------------------


async def _pg_floor(url: str, callers: Sequence[Caller], refs: Sequence[AttachmentRef]) -> float:
    """Parse, build the rows and insert them in one transaction on one connection, in ms: no
    bot on this server could acknowledge the burst faster."""
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        rows = burst_rows(callers, refs)
        async with conn.transaction():
            await conn.copy_records_to_table(
                "jobs",
                records=[tuple(row[name] for name in JOB_COLUMNS) for row in rows],
                columns=JOB_COLUMNS,
            )
        return (time.perf_counter() - t0) * 1000
    finally:
        await conn.close()


async def _ack_once(engine: str, burst: int) -> tuple[float, float, float | None]:
    """p50 and p99 of one burst's acknowledgements in ms, and PostgreSQL's floor."""
    with tempfile.TemporaryDirectory() as tmp:
        config = _fast_config(Path(tmp), local_delay=600.0, max_in_flight=burst + 10)
        async with _stores(engine, Path(tmp)) as new_store:
            app = BotApp(config.core, backend=default_backend(config), store=new_store())
            latencies, callers, refs = await burst_latencies(app, burst)
        floor = None
        if engine == "PostgreSQL":
            async with _pg_schema() as url:
                async with PostgresJobStore(url):  # the schema, migrated
                    pass
                floor = await _pg_floor(url, callers, refs)
    return statistics.median(latencies), percentile(latencies, 99), floor


async def ack_burst(sizes: Sequence[int], runs: int) -> list[Row]:
    rows: list[Row] = []
    for burst in sizes:
        p99s: dict[str, float] = {}
        for engine in ENGINES:
            results = [await _ack_once(engine, burst) for _ in range(runs)]
            p50 = statistics.median(r[0] for r in results)
            p99s[engine] = p99 = statistics.median(r[1] for r in results)
            floors = [r[2] for r in results if r[2] is not None]
            floor = (
                f"; floor {statistics.median(floors):.1f} ms (rows built and COPYed in "
                "one transaction)"
                if floors
                else ""
            )
            rows.append(
                (
                    f"{engine}: acknowledgement of {burst:,} commands arriving at once through "
                    f"the core (access, limits, insert, ack): p50 {p50:.1f} ms{floor}; median "
                    f"of {runs} runs",
                    f"p99 {p99:.1f} ms",
                    "–" if engine == "SQLite" else "≤ 2× SQLite's p99",
                    engine == "SQLite" or p99 <= 2 * p99s["SQLite"],
                )
            )
    return rows


# -- Claims per second by several replicas ---------------------------------------------------


async def _fill(store: JobStore, count: int) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    caller = Caller(Platform("discord"), "g1", "u1", Conversation("c1"))
    options = job_options("img2img", {})
    batch = 500
    for first in range(0, count, batch):
        await asyncio.gather(
            *(
                store.insert(
                    Job(
                        id=f"j{n:09d}",
                        command="img2img",
                        caller=caller,
                        state=JobState.CREATED,
                        created_at=start + timedelta(microseconds=n),
                        options=options,
                    )
                )
                for n in range(first, min(first + batch, count))
            )
        )


async def _claims_once(engine: str, jobs: int, replicas: int, batch: int) -> tuple[float, int]:
    """Seconds for `replicas` stores to claim every one of `jobs` jobs, `batch` at a time, and
    how many were handed out (more than `jobs` would be a job given twice)."""
    with tempfile.TemporaryDirectory() as tmp:
        async with _stores(engine, Path(tmp)) as new_store:
            stores = [new_store() for _ in range(replicas)]
            for store in stores:
                await store.start()
            try:
                await _fill(stores[0], jobs)
                taken: list[list[str]] = [[] for _ in stores]

                async def drain(n: int) -> None:
                    while claimed := await stores[n].claim_jobs(
                        f"r{n}", 60, batch, [Platform("discord")]
                    ):
                        taken[n].extend(job.id for job in claimed)

                t0 = time.perf_counter()
                await asyncio.gather(*(drain(n) for n in range(replicas)))
                seconds = time.perf_counter() - t0
            finally:
                for store in stores:
                    await store.aclose()
    handed = [job_id for ids in taken for job_id in ids]
    if len(set(handed)) != jobs:
        raise RuntimeError(f"{engine}: {len(set(handed))} of {jobs} jobs claimed")
    return seconds, len(handed)


async def claims(sizes: Sequence[int], runs: int, batch: int = 50) -> list[Row]:
    rows: list[Row] = []
    for jobs in sizes:
        for engine, replicas in (("SQLite", 1), ("PostgreSQL", 1), ("PostgreSQL", 4)):
            results = [await _claims_once(engine, jobs, replicas, batch) for _ in range(runs)]
            seconds = statistics.median(r[0] for r in results)
            handed = max(r[1] for r in results)
            who = "one process" if replicas == 1 else f"{replicas} replicas (a pool each)"
            rows.append(
                (
                    f"{engine}, {who}: claims of {jobs:,} unfinished jobs, {batch} per claim, "
                    f"until none is left; jobs handed out {handed:,} (a job twice would show); "
                    f"median of {runs} runs ({seconds:.2f} s)",
                    f"{jobs / seconds:,.0f} claims/s",
                    "every job once",
                    handed == jobs,
                )
            )
    return rows
