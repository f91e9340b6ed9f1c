"""The store under test. `new_store()` makes an unstarted store on this test's database (each
call another store on the same database, so a test can reopen it); `store` is one started."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from bot.store import SqliteJobStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from bot.ports import JobStore


@pytest.fixture
def new_store(tmp_path: Path) -> Callable[[], JobStore]:
    path = tmp_path / "data" / "jobs.sqlite3"
    return lambda: SqliteJobStore(path)


@pytest.fixture
async def store(new_store: Callable[[], JobStore]) -> AsyncIterator[JobStore]:
    opened = new_store()
    await opened.start()
    try:
        yield opened
    finally:
        await opened.aclose()
