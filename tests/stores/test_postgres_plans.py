"""The plans PostgreSQL runs the store's hot statements with stay bounded as the tables grow:
checked on the generic plan, which a prepared statement (asyncpg prepares every statement) may
switch to after a few runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import pytest
from pg_kit import fresh_schema
from store_kit import make_job

from stores.postgres import PostgresJobStore
from stores.postgres import store as sql

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def conn() -> AsyncIterator[asyncpg.Connection]:
    async with fresh_schema() as url:
        async with PostgresJobStore(url) as store:
            for n in range(200):
                await store.insert(make_job(f"p{n:04d}", minute=n))
            await store.claim_jobs("a", 30, 100, [make_job("x").caller.platform])
        found = await asyncpg.connect(url)
        try:
            await found.execute("ANALYZE jobs")
            await found.execute("SET plan_cache_mode = force_generic_plan")
            yield found
        finally:
            await found.close()


async def generic_plan(conn: asyncpg.Connection, statement: str, args: str) -> str:
    await conn.execute(f"PREPARE probe AS {statement}")
    try:
        rows = await conn.fetch(f"EXPLAIN EXECUTE probe({args})")
    finally:
        await conn.execute("DEALLOCATE probe")
    return "\n".join(row[0] for row in rows)


async def test_an_id_prefix_reads_only_its_range(conn: asyncpg.Connection) -> None:
    plan = await generic_plan(conn, sql._SQL_FIND, "'p01', 'p02', 'discord', 'g1', 5")
    assert "Index Cond: ((id >= $1) AND (id < $2))" in plan, plan


@pytest.mark.parametrize("statement", ["_SQL_LATEST_IN_THREAD", "_SQL_LATEST_IN_CHANNEL"])
async def test_the_latest_job_of_a_thread_is_read_off_the_thread_index(
    conn: asyncpg.Connection, statement: str
) -> None:
    args = "'discord', 'g1', 'c1'" + (", 't1'" if statement == "_SQL_LATEST_IN_THREAD" else "")
    plan = await generic_plan(conn, getattr(sql, statement), args)
    assert "using jobs_by_thread on jobs" in plan, plan
    assert "job_thread" in plan.split("Index Cond:")[1].split("\n")[0], plan


async def test_a_claim_reads_free_and_expired_jobs_through_their_indexes(
    conn: asyncpg.Connection,
) -> None:
    for statement in (sql._SQL_CLAIM_JOBS, sql._SQL_CLAIM_OWN_JOBS):
        plan = await generic_plan(conn, statement, "'b', 30, ARRAY['discord'], 50")
        assert "Index Scan using jobs_free on jobs" in plan, plan
        assert "Index Scan using jobs_leased on jobs" in plan, plan
    plan = await generic_plan(conn, sql._SQL_CLAIM_JOBS, "'b', 30, ARRAY['discord'], 50")
    assert "Index Cond: (lease_until < now())" in plan, plan
