"""What PostgreSQL adds to the store contract (tests/bot/store runs that on both engines):
several replicas on one database. Two stores on one schema stand for two replicas."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from pg_kit import fresh_schema
from scenario_kit import clean_env, png
from store_kit import D, make_job

from bot.errors import StorageError
from bot.model import JobState
from bot.ports import Admission, AdmissionRefused, LeaseLost, StoredImage
from stores.postgres import PostgresJobStore, PostgresSettings, redact_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_schema() as found:
        yield found


@pytest.fixture
async def two(url: str) -> AsyncIterator[tuple[PostgresJobStore, PostgresJobStore]]:
    async with PostgresJobStore(url) as a, PostgresJobStore(url) as b:
        yield a, b


async def test_concurrent_claims_never_hand_one_job_to_two_replicas(
    two: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    a, b = two
    ids = [f"job{n:07d}" for n in range(300)]
    for job_id in ids:
        await a.insert(make_job(job_id))

    async def claimer(store: PostgresJobStore, owner: str) -> list[str]:
        taken: list[str] = []
        while batch := await store.claim_jobs(owner, 60.0, 7, [D]):
            taken += [job.id for job in batch]
        return taken

    found = await asyncio.gather(*(claimer(s, f"r{n}") for n, s in enumerate((a, b, a, b))))
    every = [job_id for taken in found for job_id in taken]
    assert sorted(every) == ids  # each job once, none lost
    assert all(found)  # every claimer got some (SKIP LOCKED: they did not queue on each other)


async def test_a_replica_that_lost_its_lease_cannot_write(
    two: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    a, b = two
    await a.insert(make_job("stale00001"))
    [mine] = await a.claim_jobs("ra", 0.05, 10, [D])
    await asyncio.sleep(0.2)  # ra pauses past its lease (the database's clock decides)
    [theirs] = await b.claim_jobs("rb", 60.0, 10, [D])
    assert theirs.fence == mine.fence + 1 and theirs.attempts == mine.attempts + 1
    with pytest.raises(LeaseLost):
        await a.save(dataclasses.replace(mine, state=JobState.FAILED, error="stale"))
    with pytest.raises(LeaseLost):
        await a.put_images(mine.id, [StoredImage("result", "r.png", b"x")], fence=mine.fence)
    assert await a.renew_jobs("ra", {mine.id: mine.fence}, 60.0) == set()
    saved = await b.save(dataclasses.replace(theirs, state=JobState.INPROGRESS))
    got = await a.get(mine.id)
    assert got == saved and got.error is None
    assert await b.renew_jobs("rb", {theirs.id: theirs.fence}, 60.0) == {theirs.id}


async def test_a_claim_at_start_respects_another_replicas_live_lease(
    two: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    a, b = two
    await a.insert(make_job("live000001"), owner="ra", ttl=60.0)
    await a.insert(make_job("dead000001", minute=1), owner="gone", ttl=0.01)
    await a.insert(make_job("mine000001", minute=2), owner="rb", ttl=60.0)
    await asyncio.sleep(0.1)
    taken = await b.claim_jobs("rb", 60.0, 10, [D], own=True)
    assert [job.id for job in taken] == ["dead000001", "mine000001"]
    assert await b.claim_job("live000001", "rb", 60.0) is None
    assert await a.claim_job("live000001", "ra", 60.0) is not None  # its owner may retake it


async def test_one_leader_at_a_time(two: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, b = two
    first = await a.lead("scan", "ra", 60.0)
    assert first is not None
    assert await b.lead("scan", "rb", 60.0) is None
    assert await a.lead("scan", "ra", 60.0) == first  # extended, same fence
    await a.resign("scan", "ra")
    assert await b.lead("scan", "rb", 60.0) == first + 1
    assert await a.lead("scan", "ra", 60.0) is None


async def test_limits_hold_across_replicas(
    two: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    a, b = two
    cap = Admission(max_running=None, max_in_flight=5)
    per_user = Admission(max_running=2, max_in_flight=100)

    async def admit(store: PostgresJobStore, job_id: str, admission: Admission) -> str | None:
        user = "u1" if admission is per_user else job_id
        try:
            await store.insert(make_job(job_id, user=user), admission=admission)
        except AdmissionRefused as refused:
            return refused.limit
        return None

    results = await asyncio.gather(*(admit((a, b)[n % 2], f"g{n:09d}", cap) for n in range(12)))
    assert results.count(None) == 5 and results.count("global") == 7
    for job in await a.unfinished():  # free the global cap for the per-user check
        await a.save(dataclasses.replace(job, state=JobState.SUCCEED))
    results = await asyncio.gather(*(admit((a, b)[n % 2], f"u{n:09d}", per_user) for n in range(8)))
    assert results.count(None) == 2 and results.count("running") == 6


async def test_ingress_claims_are_unique_across_replicas(
    two: tuple[PostgresJobStore, PostgresJobStore],
) -> None:
    a, b = two
    won = await asyncio.gather(*(s.claim("slack:T1:C1:1700000000.000100") for s in (a, b) * 3))
    assert won.count(True) == 1


def test_the_password_stays_out_of_reprs_checks_and_logs() -> None:
    url = "postgresql://sdbot:hunter2@db.internal:5432/jobs"
    settings = PostgresSettings(database_url=url)
    assert "hunter2" not in repr(settings)
    assert settings.secret_values() == ("hunter2",)
    store = PostgresJobStore(url)
    assert "hunter2" not in repr(store) and "hunter2" not in store.describe
    assert redact_url(url) == "postgresql://sdbot:***@db.internal:5432/jobs"


async def test_sdbot_runs_a_job_on_postgresql(url: str, tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(png())
    env = clean_env(SDBOT_DATABASE_URL=url, SDBOT_LOCAL_DELAY="0.05", SDBOT_REPLICA_ID="pg-1")
    ran = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "adapters.cli", "run"],
        cwd=tmp_path,
        input="img2img a cat image=in.png\njobs\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert ran.returncode == 0, ran.stderr
    job = ran.stdout.splitlines()[0].split()[1]
    assert f"saved sdbot-output/{job}/{job}-1.png" in ran.stdout
    assert not (tmp_path / "sdbot-data" / "sdbot.sqlite3").exists()  # nothing went to SQLite
    async with PostgresJobStore(url) as store:
        stored = await store.get(job)
        assert stored is not None and stored.state is JobState.SUCCEED
    checked = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "adapters.cli", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "store: PostgreSQL postgresql://postgres@127.0.0.1:5432/test" in checked.stdout
    assert "replica pg-1: seen " in checked.stdout


async def test_a_dropped_connection_heals_and_a_stuck_lock_is_a_storage_error(url: str) -> None:
    async with PostgresJobStore(url, statement_timeout=0.3) as store:
        await store.insert(make_job("drop000001"))
        async with store._conn() as conn:  # the pool's one idle connection
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        admin = await asyncpg.connect(url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)  # an admin, a failover
            await asyncio.sleep(0.5)
            job = await store.get("drop000001")  # the pool opened a new connection
            assert job is not None
            # Another replica stuck holding the row's lock: the write gives up after the
            # statement timeout with a storage error, not a driver exception.
            async with admin.transaction():
                await admin.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
                with pytest.raises(StorageError, match="job database"):
                    await store.save(dataclasses.replace(job, error="late"))
        finally:
            await admin.close()


async def test_naive_times_are_refused(two: tuple[PostgresJobStore, PostgresJobStore]) -> None:
    a, _ = two
    with pytest.raises(ValueError, match="naive"):
        await a.expire_claims(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        await a.replicas(datetime(2026, 1, 1))


async def test_a_replica_frozen_inside_a_transaction_loses_its_session(url: str) -> None:
    async with PostgresJobStore(url) as store, store._conn() as conn:
        assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "10s"


async def test_one_unreadable_row_fails_alone_at_a_claim(url: str) -> None:
    """As on SQLite (tests/test_restart.py): a damaged row fails that job; the others resume."""
    async with PostgresJobStore(url) as store:
        for n in range(3):
            await store.insert(make_job(f"row{n:07d}", minute=n))
        async with store._conn() as conn:
            await conn.execute("UPDATE jobs SET attachments = '[{' WHERE id = 'row0000001'")
        taken = await store.claim_jobs("r1", 60.0, 10, [D], own=True)
        assert [job.id for job in taken] == ["row0000000", "row0000002"]
        async with store._conn() as conn:
            row = await conn.fetchrow(
                "SELECT state, delivery, error, lease_owner FROM jobs WHERE id = 'row0000001'"
            )
        assert row is not None
        assert (row["state"], row["delivery"], row["lease_owner"]) == ("failed", "done", None)
        assert "stored row cannot be read" in row["error"]
