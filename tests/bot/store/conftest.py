"""The store under test, on each engine: SQLite, then PostgreSQL (`pg_kit`: the machine's
server, a schema per test). `new_store()` makes an unstarted store on this test's database (each
call another store on the same database, so a test can reopen it); `store` is one started."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from pg_kit import fresh_schema

from bot.store import SqliteJobStore
from stores.postgres import PostgresJobStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from bot.ports import JobStore


@pytest.fixture(params=["sqlite", "postgres"])
async def new_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], JobStore]]:
    if request.param == "sqlite":
        path = tmp_path / "data" / "jobs.sqlite3"
        yield lambda: SqliteJobStore(path)
        return
    async with fresh_schema() as url:
        yield lambda: PostgresJobStore(url)


@pytest.fixture
async def store(new_store: Callable[[], JobStore]) -> AsyncIterator[JobStore]:
    opened = new_store()
    await opened.start()
    try:
        yield opened
    finally:
        await opened.aclose()
