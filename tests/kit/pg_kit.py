"""PostgreSQL for the tests: the machine's server (127.0.0.1:5432, trust auth, database `test`)
or `SDBOT_TEST_DATABASE_URL`, each test in a schema of its own, dropped afterwards.

Without a reachable server the PostgreSQL tests are skipped and the run ends with one loud
line saying so (`tests/conftest.py`); under `CI=true` a missing server fails them instead, so
they can never silently stop running.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

DEFAULT_URL: Final = "postgresql://postgres@127.0.0.1:5432/test"
_reachable: dict[str, str | None] = {}


def server_url() -> str:
    return os.environ.get("SDBOT_TEST_DATABASE_URL") or DEFAULT_URL


async def _why_unreachable(url: str) -> str | None:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), 10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def unreachable_reason() -> str | None:
    """Why the test server cannot be used (None when it can); asked once per run."""
    return _reachable.get(server_url())


async def require_server() -> str:
    """The server's URL; skips (fails under CI=true) the test when it is unreachable."""
    url = server_url()
    if url not in _reachable:
        _reachable[url] = await _why_unreachable(url)
    reason = _reachable[url]
    if reason is not None:
        message = f"PostgreSQL at {url} is unreachable ({reason})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must run the PostgreSQL tests")
        pytest.skip(message)
    return url


def in_schema(url: str, schema: str) -> str:
    """`url` with `search_path` set to `schema` (asyncpg passes it to the server)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
    return urlunsplit(parts._replace(query=query))


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A database URL whose tables live in a new, empty schema, dropped on exit."""
    async with schema_on(await require_server()) as url:
        yield url


@asynccontextmanager
async def schema_on(url: str, prefix: str = "sdbot_test") -> AsyncIterator[str]:
    """`url` in a new, empty schema of that server, dropped on exit (benchmarks too)."""
    schema = f"{prefix}_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield in_schema(url, schema)
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
