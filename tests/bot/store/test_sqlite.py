"""SQLite-only: durability across reopening, the schema and its migrations, the lifecycle, and
the query plans that keep it fast."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from store_kit import T0, C, D, F, P, S, full_job, ids, make_job

from bot.errors import ConfigError
from bot.model import (
    Conversation,
    Delivery,
    JobState,
    Platform,
)
from bot.ports import JobQuery, StoredImage
from bot.store import SqliteJobStore
from bot.store.images import SQL_IMAGES, SQL_IMAGES_OF_SLOT
from bot.store.jobs import (
    SQL_BY_MESSAGE,
    SQL_FIND,
    SQL_FIND_FROM,
    SQL_GET,
    SQL_LATEST_IN_THREAD,
    SQL_RECENT_DURATIONS,
    SQL_UNFINISHED,
    query_sql,
)
from bot.store.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from commands import Size
from commands.options import GenerateOptions
from commands.spec import Sampler

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    async with SqliteJobStore(tmp_path / "data" / "jobs.sqlite3") as opened:
        yield opened


def raw(path: Path | str) -> contextlib.closing[sqlite3.Connection]:
    """A plain connection for looking under the store, closed after the `with`."""
    return contextlib.closing(sqlite3.connect(path))


# -- Durability, schema, lifecycle ----------------------------------------------------------


async def test_reopening_the_file_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    job = dataclasses.replace(full_job(), fence=0, attempts=0)
    image = StoredImage("image", "in.png", b"in")
    async with SqliteJobStore(path) as first:
        await first.insert(make_job(job.id), [image])
        job = await first.save(dataclasses.replace(job, version=0))
        await first.put_images(job.id, [StoredImage("result", "r.png", b"r")])
    async with SqliteJobStore(path) as second:
        assert await second.get(job.id) == job
        assert await second.images(job.id) == [image, StoredImage("result", "r.png", b"r")]
        assert await second.by_message(Platform("slack"), "T0123", "1700000000.000300") == job
        assert ids(await second.unfinished()) == [job.id]


async def test_options_are_stored_typed_and_versioned(
    store: SqliteJobStore, tmp_path: Path
) -> None:
    options = GenerateOptions(steps=30, size=Size(512, 768), sampler=Sampler.EULER_A)
    await store.insert(make_job("opt1", options=options))
    with raw(tmp_path / "data" / "jobs.sqlite3") as conn:
        row = conn.execute("SELECT options FROM jobs WHERE id = 'opt1'").fetchone()
    assert json.loads(row[0]) == {
        "v": 2,
        "options": {"steps": 30, "size": {"width": 512, "height": 768}, "sampler": "Euler a"},
    }
    got = await store.get("opt1")
    assert got is not None and got.options == options
    assert got.options.sampler is Sampler.EULER_A


async def test_a_platform_is_stored_as_its_name(store: SqliteJobStore, tmp_path: Path) -> None:
    await store.insert(make_job("plat1", platform=Platform("teams")))
    await store.put_settings(Platform("teams"), "g1", "", {"steps": "5"})
    with raw(tmp_path / "data" / "jobs.sqlite3") as conn:
        stored = conn.execute(
            "SELECT typeof(platform), platform FROM jobs WHERE id = 'plat1'"
            " UNION ALL SELECT typeof(platform), platform FROM settings"
        ).fetchall()
    assert stored == [("text", "teams"), ("text", "teams")]
    got = await store.get("plat1")
    assert got is not None and got.caller.platform == Platform("teams")
    assert ids(await store.query(JobQuery(Platform("teams"), "g1"))) == ["plat1"]


async def test_start_sets_schema_version_and_pragmas(store: SqliteJobStore) -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    with raw(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"jobs", "images", "messages", "jobs_by_user", "jobs_unfinished"} <= tables


def test_migrations_run_in_order_once(tmp_path: Path) -> None:
    extra = ("CREATE TABLE later (x TEXT)", "INSERT INTO later VALUES ('v2')")
    with raw(tmp_path / "m.sqlite3") as conn:
        conn.isolation_level = None
        assert migrate(conn) == 0
        assert migrate(conn) == SCHEMA_VERSION  # nothing left to do
        assert migrate(conn, [*MIGRATIONS, extra]) == SCHEMA_VERSION
        assert migrate(conn, [*MIGRATIONS, extra]) == SCHEMA_VERSION + 1
        assert conn.execute("SELECT x FROM later").fetchall() == [("v2",)]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_a_failing_migration_changes_nothing(tmp_path: Path) -> None:
    broken = ("CREATE TABLE half (x TEXT)", "THIS IS NOT SQL")
    with raw(tmp_path / "m.sqlite3") as conn:
        conn.isolation_level = None
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, [*MIGRATIONS, broken])
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


async def test_a_database_from_a_newer_sdbot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with raw(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SqliteJobStore(path)
    with pytest.raises(ConfigError, match="newer"):
        await store.start()
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("x")


async def test_an_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path)  # a directory
    with pytest.raises(ConfigError, match="cannot open the job database"):
        await store.start()


async def test_memory_database_works() -> None:
    async with SqliteJobStore(":memory:") as store:
        await store.insert(full_job())
        assert await store.get(full_job().id) == full_job()


async def test_lifecycle_errors(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    with pytest.raises(RuntimeError, match="not started"):
        await store.get("x")
    await store.start()
    with pytest.raises(RuntimeError, match="starts once"):
        await store.start()
    await store.insert(make_job("life1"))
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("life1")
    with pytest.raises(RuntimeError, match="closed"):
        await store.insert(make_job("life2"))
    with pytest.raises(RuntimeError, match="closed"):
        await store.start()


async def test_calls_queued_before_close_complete(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.start()
    pending = [asyncio.ensure_future(store.insert(make_job(f"p{n}"))) for n in range(20)]
    await asyncio.sleep(0)  # let them queue
    await store.aclose()
    await asyncio.gather(*pending)
    async with SqliteJobStore(tmp_path / "jobs.sqlite3") as again:
        assert len(await again.query(JobQuery(D, "g1", limit=100))) == 20


async def test_closing_a_store_never_started_is_fine(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await store.start()


# -- Query plans ---------------------------------------------------------------------------


def plan(
    conn: sqlite3.Connection, sql: str, params: Sequence[object] | dict[str, object]
) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh", "analyzed"])
async def test_every_query_shape_uses_an_index(tmp_path: Path, analyzed: bool) -> None:
    path = tmp_path / "jobs.sqlite3"
    states = list(JobState)
    async with SqliteJobStore(path) as store:
        for n in range(1200):
            state = states[n % len(states)]
            await store.insert(
                make_job(
                    f"j{n:09d}",
                    server=f"g{n % 3}",
                    user=f"u{n % 20}",
                    minute=n,
                    command=["img2img", "inpaint", "interrogate"][n % 3],
                    state=state,
                    delivery=Delivery.DONE if state.terminal and n % 50 else Delivery.PENDING,
                    endpoint=f"e{n % 2}",
                    model=f"m{n % 4}",
                    thread=Conversation("c1", f"t{n % 100}"),
                    status_message=f"s{n}",
                    result_messages=(f"r{n}",),
                    started_at=T0,
                    finished_at=T0 + timedelta(seconds=n),
                ),
                [StoredImage("image", "in.png", b"in")],
            )
    find = {"low": "j00", "high": "j01", "platform": "discord", "server": "g1", "limit": 5}
    shapes: dict[str, tuple[str, Sequence[object] | dict[str, object]]] = {
        "get": (SQL_GET, ("j000000001",)),
        "find": (SQL_FIND, find),
        "find from": (SQL_FIND_FROM, find),
        "latest_in_thread": (SQL_LATEST_IN_THREAD, ("discord", "g1", "c1", "t1")),
        "latest_in_channel": (SQL_LATEST_IN_THREAD, ("discord", "g1", "c1", None)),
        "by_message": (SQL_BY_MESSAGE, ("discord", "g1", "s1")),
        "recent_durations": (SQL_RECENT_DURATIONS, ("e1", 20)),
        "images": (SQL_IMAGES, ("j000000001",)),
        "images of slot": (SQL_IMAGES_OF_SLOT, ("j000000001", "result")),
    }
    filter_sets: dict[str, dict[str, Any]] = {
        "server": {},
        "user": {"user": "u1"},
        "state": {"states": (S,)},
        "states": {"states": (C, P)},
        "command": {"command": "inpaint"},
        "endpoint": {"endpoint": "e1"},
        "model": {"model": "m1"},
        "since-until": {"since": T0 + timedelta(minutes=100), "until": T0 + timedelta(hours=9)},
        "user-state": {"user": "u1", "states": (F,)},
        "user-command-since": {"user": "u1", "command": "inpaint", "since": T0},
        "all": {
            "user": "u1",
            "states": (S, F),
            "command": "img2img",
            "endpoint": "e1",
            "model": "m1",
            "since": T0,
            "until": T0 + timedelta(days=1),
        },
    }
    for name, filters in filter_sets.items():
        shapes[f"query {name}"] = query_sql(JobQuery(D, "g1", offset=10, **filters))

    with raw(path) as conn:
        if analyzed:
            conn.execute("ANALYZE")
        plans = {name: plan(conn, sql, params) for name, (sql, params) in shapes.items()}
        unfinished = plan(conn, SQL_UNFINISHED, ())

    for name, steps in plans.items():
        assert not [step for step in steps if step.startswith("SCAN")], (name, steps)
        assert any("USING" in step for step in steps), (name, steps)
    # Newest-first pages come straight off an index, with no sort of the whole server.
    for name in ["query server", "query user", "query since-until", "latest_in_thread"]:
        assert not [step for step in plans[name] if "TEMP B-TREE" in step], (name, plans[name])
    # `unfinished` reads its partial index, which holds only the jobs to resume.
    assert unfinished == ["SCAN jobs USING INDEX jobs_unfinished"]
