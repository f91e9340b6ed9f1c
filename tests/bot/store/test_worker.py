"""Inserts arriving together are committed as one group; each still succeeds or fails alone."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bot.model import Caller, Conversation, Job, JobState, Platform
from bot.ports import Admission, AdmissionRefused
from bot.store import SqliteJobStore
from commands.options import GenerateOptions


def job(job_id: str, user: str = "u1") -> Job:
    return Job(
        id=job_id,
        command="img2img",
        caller=Caller(Platform("discord"), "g1", user, Conversation("c1")),
        state=JobState.CREATED,
        created_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        options=GenerateOptions(prompt="x"),
    )


async def test_a_burst_commits_together_and_failures_stay_alone(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    async with SqliteJobStore(path) as store:
        await store.insert(job("taken"))
        burst = [job(f"j{n:03d}", user=f"u{n}") for n in range(50)]
        burst.insert(20, job("taken"))  # a duplicate in the middle of the group
        # One user over their limit in the middle of the group.
        admission = Admission(max_running=1)
        await store.insert(job("first", user="busy"), admission=admission)
        results = await asyncio.gather(
            *(store.insert(j) for j in burst),
            store.insert(job("second", user="busy"), admission=admission),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 2
        assert any(isinstance(e, KeyError) for e in errors)
        assert any(isinstance(e, AdmissionRefused) for e in errors)
    # Everything acknowledged is durable: reopen and find each job.
    async with SqliteJobStore(path) as store:
        for n in range(50):
            assert await store.get(f"j{n:03d}") is not None
        assert await store.get("second") is None
        stored = await store.get("taken")
        assert stored is not None and stored == replace(job("taken"))


async def test_a_large_burst_is_read_and_written_in_chunks_with_every_outcome_its_own(
    tmp_path: Path,
) -> None:
    """300 inserts at once are read and written in statements of 128, 32, 8 and 1 rows
    (`bot.store.jobs._SHAPES`): each user's count and each id must still reach its own job."""
    async with SqliteJobStore(tmp_path / "jobs.sqlite3") as store:
        await store.insert(job("taken", user="u0"))
        burst = [job(f"b{n:03d}", user=f"u{n % 150}") for n in range(299)] + [job("taken")]
        results = await asyncio.gather(
            *(store.insert(j, admission=Admission(max_running=2)) for j in burst),
            return_exceptions=True,
        )
        # u0 had one running job: its second in the burst is over the limit of 2.
        refused = [j.id for j, r in zip(burst, results, strict=True) if r is not None]
        assert refused == ["b150", "taken"]
        assert isinstance(results[150], AdmissionRefused) and results[150].count == 2
        assert isinstance(results[-1], KeyError)
        for n in range(299):
            assert (await store.get(f"b{n:03d}") is None) == (n == 150)
