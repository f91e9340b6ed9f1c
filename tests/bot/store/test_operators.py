"""The store's read-only queries for operators (usage, failures, days, servers) and its
readiness write, on real SQLite."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from bot.model import Caller, Conversation, Job, JobState, Platform
from bot.ports import DayCount, Usage
from bot.store import SqliteJobStore
from commands.options import GenerateOptions

if TYPE_CHECKING:
    from pathlib import Path

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
D = Platform("discord")


def job(
    job_id: str,
    user: str,
    channel: str,
    day: int,
    state: JobState,
    run: float | None,
    error: str | None = None,
    server: str = "g1",
) -> Job:
    created = T0 + timedelta(days=day)
    started = created + timedelta(seconds=5) if run is not None else None
    return Job(
        id=job_id,
        command="img2img",
        caller=Caller(D, server, user, Conversation(channel), user_name=f"name-{user}"),
        state=state,
        created_at=created,
        options=GenerateOptions(),
        started_at=started,
        finished_at=started + timedelta(seconds=run) if started and run is not None else None,
        error=error,
    )


async def test_usage_failures_and_days(tmp_path: Path) -> None:
    async with SqliteJobStore(tmp_path / "s.sqlite3") as store:
        jobs = [
            job("a1", "u1", "c1", 0, JobState.SUCCEED, 12.5),
            job("a2", "u1", "c2", 1, JobState.FAILED, 2.0, "CUDA out of memory"),
            job("a3", "u2", "c1", 1, JobState.FAILED, None, "no such model"),
            job("a4", "u2", "c1", 1, JobState.FAILED, 1.0, "CUDA out of memory"),
            job("a5", "u3", "c1", 1, JobState.INPROGRESS, None),
            job("old", "u1", "c1", -10, JobState.SUCCEED, 100.0),
            job("x1", "u1", "c1", 0, JobState.SUCCEED, 50.0, server="g2"),
        ]
        for j in jobs:
            await store.insert(j)
        since = T0 - timedelta(days=1)
        by_user = await store.usage(D, "g1", "user", since)
        assert by_user == [
            Usage("u1", "name-u1", 2, 14.5),
            Usage("u2", "name-u2", 2, 1.0),
            Usage("u3", "name-u3", 1, 0.0),
        ]
        by_channel = await store.usage(D, "g1", "channel", since)
        assert by_channel == [Usage("c1", "c1", 4, 13.5), Usage("c2", "c2", 1, 2.0)]
        assert await store.failures(D, "g1", since) == [
            ("CUDA out of memory", 2),
            ("no such model", 1),
        ]
        assert await store.daily(D, "g1", since) == [
            DayCount("2026-11-25", 1, 0),
            DayCount("2026-11-26", 4, 3),
        ]
        # A user's current name is that of their newest job.
        await store.insert(
            replace(
                jobs[4],
                id="renamed",
                caller=replace(jobs[4].caller, user_name="New Name"),
                created_at=T0 + timedelta(days=2),
            )
        )
        [u3] = [u for u in await store.usage(D, "g1", "user", since) if u.key == "u3"]
        assert (u3.name, u3.jobs) == ("New Name", 2)
        # Most recently active first.
        assert await store.servers() == [(D, "g1"), (D, "g2")]
        await store.insert(replace(jobs[-1], id="late", created_at=T0 + timedelta(days=3)))
        assert await store.servers() == [(D, "g2"), (D, "g1")]
        assert await store.writable()
    assert not await store.writable()
