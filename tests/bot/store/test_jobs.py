"""`JobRepo` contract: insert, compare-and-set save, get, find, query, the jobs to resume, and
the lookups by thread and message; run times for estimates."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_kit import T0, C, D, F, P, S, X, ids, make_job

from bot.model import (
    Conversation,
    Delivery,
    Job,
    JobState,
    Platform,
)
from bot.ports import JobQuery, JobStore, StoredImage
from bot.store import SqliteJobStore
from stores.postgres import PostgresJobStore

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# -- insert / save / get -------------------------------------------------------------------


async def test_insert_of_a_taken_id_raises_key_error_and_changes_nothing(
    store: JobStore,
) -> None:
    first = make_job("dup0000001", command="img2img")
    await store.insert(first, [StoredImage("image", "a.png", b"A")])
    with pytest.raises(KeyError):
        await store.insert(
            make_job("dup0000001", command="inpaint"), [StoredImage("mask", "m.png", b"M")]
        )
    assert await store.get("dup0000001") == first
    assert await store.images("dup0000001") == [StoredImage("image", "a.png", b"A")]


async def test_insert_is_one_transaction(store: JobStore) -> None:
    # The second input breaks a NOT NULL constraint after the row and the first input are
    # written: nothing of the job may remain.
    broken = StoredImage("mask", "m.png", None)  # type: ignore[arg-type]
    with pytest.raises((sqlite3.IntegrityError, asyncpg.NotNullViolationError)):
        await store.insert(make_job("atomic0001"), [StoredImage("image", "a.png", b"A"), broken])
    assert await store.get("atomic0001") is None
    assert await store.images("atomic0001") == []
    await store.insert(make_job("atomic0001"))  # the id is free


async def test_save_of_an_unknown_job_raises_key_error(store: JobStore) -> None:
    with pytest.raises(KeyError):
        await store.save(make_job("nosuchjob1"))
    assert await store.get("nosuchjob1") is None


async def test_get_of_an_unknown_id_is_none(store: JobStore) -> None:
    assert await store.get("nosuchjob1") is None


async def test_concurrent_calls_are_all_served(store: JobStore) -> None:
    jobs = [make_job(f"c{n:09d}", minute=n) for n in range(50)]
    await asyncio.gather(*(store.insert(job) for job in jobs))
    got = await asyncio.gather(*(store.get(job.id) for job in jobs))
    assert got == jobs


# -- find ----------------------------------------------------------------------------------


async def test_find_by_prefix_stays_in_its_server(store: JobStore) -> None:
    for job in [
        make_job("abcd000001"),
        make_job("abcd000002"),
        make_job("abce000003"),
        make_job("abcd000004", server="g2"),
        make_job("abcd000005", platform=Platform("slack")),  # same server id, other platform
    ]:
        await store.insert(job)
    assert ids(await store.find(D, "g1", "abcd")) == ["abcd000001", "abcd000002"]
    assert ids(await store.find(D, "g1", "abc")) == ["abcd000001", "abcd000002", "abce000003"]
    assert ids(await store.find(D, "g1", "abcd000002")) == ["abcd000002"]
    assert ids(await store.find(D, "g2", "abcd")) == ["abcd000004"]
    assert ids(await store.find(Platform("slack"), "g1", "abcd")) == ["abcd000005"]
    assert await store.find(D, "g1", "abcf") == []
    assert await store.find(D, "g3", "abcd") == []


async def test_find_returns_at_most_five(store: JobStore) -> None:
    for n in range(8):
        await store.insert(make_job(f"same{n:06d}"))
    assert ids(await store.find(D, "g1", "same")) == [f"same{n:06d}" for n in range(5)]


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", ["az", "a\ud7ffz", "a\U0010ffffb", "a\U0010ffff\U0010ffff", "\ue000"]),
        ("a", ["az", "a\ud7ffz", "a\U0010ffffb", "a\U0010ffff\U0010ffff"]),
        ("a\U0010ffff", ["a\U0010ffffb", "a\U0010ffff\U0010ffff"]),
        ("a\ud7ff", ["a\ud7ffz"]),  # the next code point is a surrogate
        ("\U0010ffff", []),
    ],
)
async def test_find_handles_prefixes_at_the_ends_of_unicode(
    store: JobStore, prefix: str, expected: list[str]
) -> None:
    for job_id in ["a\U0010ffff\U0010ffff", "a\U0010ffffb", "a\ud7ffz", "az", "\ue000"]:
        await store.insert(make_job(job_id))
    assert ids(await store.find(D, "g1", prefix)) == expected


# -- query ---------------------------------------------------------------------------------


# (id, server, user, command, state, endpoint, model, minute)
QUERY_ROWS = [
    ("q01", "g1", "u1", "img2img", S, "e1", "m1", 0),
    ("q02", "g1", "u1", "inpaint", F, "e1", "m2", 1),
    ("q03", "g1", "u2", "img2img", S, "e2", "m1", 2),
    ("q04", "g1", "u2", "interrogate", C, "e2", None, 3),
    ("q05", "g1", "u1", "img2img", P, "e1", "m1", 4),
    ("q06", "g1", "u1", "img2img", S, "e1", "m1", 4),  # same time as q05: id breaks the tie
    ("q07", "g1", "u3", "sketch", X, None, None, 5),
    ("q08", "g2", "u1", "img2img", S, "e1", "m1", 6),  # another server
]


def query_job(row: tuple[str, str, str, str, JobState, str | None, str | None, int]) -> Job:
    job_id, server, user, command, state, endpoint, model, minute = row
    return make_job(
        job_id,
        server=server,
        user=user,
        command=command,
        state=state,
        endpoint=endpoint,
        model=model,
        minute=minute,
    )


@pytest.fixture
async def query_store(store: JobStore) -> JobStore:
    for row in QUERY_ROWS:
        await store.insert(query_job(row))
    # The same ids' shape on another platform with the same server id must never show up.
    await store.insert(make_job("q99", platform=Platform("slack"), minute=9))
    return store


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["q07", "q06", "q05", "q04", "q03", "q02", "q01"]),
        ({"user": "u1"}, ["q06", "q05", "q02", "q01"]),
        ({"user": "nobody"}, []),
        ({"states": (S,)}, ["q06", "q03", "q01"]),
        ({"states": (S, F)}, ["q06", "q03", "q02", "q01"]),
        ({"states": (S, S)}, ["q06", "q03", "q01"]),
        ({"command": "img2img"}, ["q06", "q05", "q03", "q01"]),
        ({"endpoint": "e2"}, ["q04", "q03"]),
        ({"model": "m1"}, ["q06", "q05", "q03", "q01"]),
        ({"since": T0 + timedelta(minutes=2)}, ["q07", "q06", "q05", "q04", "q03"]),
        ({"until": T0 + timedelta(minutes=2)}, ["q02", "q01"]),
        (
            {"since": T0 + timedelta(minutes=1), "until": T0 + timedelta(minutes=4)},
            ["q04", "q03", "q02"],
        ),
        ({"user": "u1", "states": (S,)}, ["q06", "q01"]),
        ({"user": "u1", "command": "img2img", "states": (S, P)}, ["q06", "q05", "q01"]),
        ({"user": "u2", "endpoint": "e2", "model": "m1"}, ["q03"]),
        (
            {
                "user": "u1",
                "states": (S, F, P),
                "command": "img2img",
                "endpoint": "e1",
                "model": "m1",
                "since": T0 + timedelta(minutes=1),
                "until": T0 + timedelta(minutes=5),
            },
            ["q06", "q05"],
        ),
        ({"limit": 2}, ["q07", "q06"]),
        ({"limit": 2, "offset": 2}, ["q05", "q04"]),
        ({"limit": 10, "offset": 6}, ["q01"]),
        ({"limit": 10, "offset": 7}, []),
        ({"limit": 0}, []),
    ],
)
async def test_query_filters_and_orders(
    query_store: JobStore, filters: dict[str, Any], expected: list[str]
) -> None:
    assert ids(await query_store.query(JobQuery(D, "g1", **filters))) == expected


async def test_query_sees_only_its_server(query_store: JobStore) -> None:
    assert ids(await query_store.query(JobQuery(D, "g2"))) == ["q08"]
    assert ids(await query_store.query(JobQuery(Platform("slack"), "g1"))) == ["q99"]
    assert await query_store.query(JobQuery(D, "g3")) == []


async def test_query_returns_whole_jobs(query_store: JobStore) -> None:
    [job] = await query_store.query(JobQuery(D, "g1", endpoint="e2", states=(C,)))
    assert job == query_job(QUERY_ROWS[3])


async def test_query_refuses_negative_paging(store: JobStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.query(JobQuery(D, "g1", limit=-1))
    with pytest.raises(ValueError, match="offset"):
        await store.query(JobQuery(D, "g1", offset=-1))


async def damage(store: JobStore, job_id: str) -> None:
    """Break a stored column below the row mapping, as a bad disk or a hand edit would."""
    sql = "UPDATE jobs SET attachments = '[{' WHERE id = "
    if isinstance(store, SqliteJobStore):
        with contextlib.closing(sqlite3.connect(store.path)) as db, db:
            db.execute(sql + "?", (job_id,))
    else:
        assert isinstance(store, PostgresJobStore)
        async with store._conn() as conn:
            await conn.execute(sql + "$1", job_id)


async def test_a_listing_leaves_out_an_unreadable_row_alone(
    query_store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    await damage(query_store, "q05")
    with caplog.at_level(logging.ERROR):
        listed = await query_store.query(JobQuery(D, "g1"))
    assert ids(listed) == ["q07", "q06", "q04", "q03", "q02", "q01"]
    [record] = [r for r in caplog.records if "q05" in r.getMessage()]
    assert "left out 1 job(s)" in record.getMessage()
    assert "stored row cannot be read" in record.getMessage()
    assert ids(await query_store.query(JobQuery(D, "g1", user="u1"))) == ["q06", "q02", "q01"]


def reference_query(jobs: Sequence[Job], q: JobQuery) -> list[str]:
    """What `query` should answer, computed the slow way."""
    hits = [
        job
        for job in jobs
        if job.caller.platform == q.platform
        and job.caller.server == q.server
        and (q.user is None or job.caller.user == q.user)
        and (not q.states or job.state in q.states)
        and (q.command is None or job.command == q.command)
        and (q.endpoint is None or job.endpoint == q.endpoint)
        and (q.model is None or job.model == q.model)
        and (q.since is None or job.created_at >= q.since)
        and (q.until is None or job.created_at < q.until)
    ]
    hits.sort(key=lambda job: (job.created_at, job.id), reverse=True)
    return ids(hits[q.offset : q.offset + q.limit])


def test_query_agrees_with_a_reference_filter(new_store: Callable[[], JobStore]) -> None:
    minutes = st.integers(min_value=-1, max_value=10).map(lambda m: T0 + timedelta(minutes=m))
    queries = st.builds(
        JobQuery,
        platform=st.just(D),
        server=st.sampled_from(["g1", "g2"]),
        user=st.none() | st.sampled_from(["u1", "u2", "u3"]),
        states=st.lists(st.sampled_from(JobState), max_size=3).map(tuple),
        command=st.none() | st.sampled_from(["img2img", "inpaint", "sketch"]),
        endpoint=st.none() | st.sampled_from(["e1", "e2"]),
        model=st.none() | st.sampled_from(["m1", "m2"]),
        since=st.none() | minutes,
        until=st.none() | minutes,
        limit=st.integers(min_value=0, max_value=8),
        offset=st.integers(min_value=0, max_value=8),
    )
    jobs = [query_job(row) for row in QUERY_ROWS]
    with asyncio.Runner() as runner:
        store = new_store()
        runner.run(store.start())
        try:
            for job in jobs:
                runner.run(store.insert(job))

            @settings(max_examples=300, deadline=None)
            @given(queries)
            def check(q: JobQuery) -> None:
                assert ids(runner.run(store.query(q))) == reference_query(jobs, q)

            check()
        finally:
            runner.run(store.aclose())


# -- unfinished, latest_in_thread, by_message -------------------------------------------------


async def test_unfinished_lists_jobs_to_resume_oldest_first(store: JobStore) -> None:
    cases = [
        ("u05", C, Delivery.PENDING, "g1", 5),
        ("u04", P, Delivery.PENDING, "g2", 4),  # every server: the bot resumes them all
        ("u03", S, Delivery.PENDING, "g1", 3),
        ("u02", F, Delivery.POSTING, "g1", 2),
        ("u01", X, Delivery.PENDING, "g1", 1),
        ("d01", S, Delivery.DONE, "g1", 0),
        ("d02", F, Delivery.DONE, "g1", 0),
        ("d03", X, Delivery.DONE, "g1", 0),
        ("u00", P, Delivery.DONE, "g1", 0),  # not terminal: resumed whatever the delivery says
    ]
    for job_id, state, delivery, server, minute in cases:
        job = make_job(job_id, state=state, delivery=delivery, server=server, minute=minute)
        await store.insert(job)
    assert ids(await store.unfinished()) == ["u00", "u01", "u02", "u03", "u04", "u05"]

    done = await store.get("u03")
    assert done is not None
    await store.save(dataclasses.replace(done, delivery=Delivery.DONE))
    assert "u03" not in ids(await store.unfinished())


async def test_latest_in_thread(store: JobStore) -> None:
    t1 = Conversation("c1", "t1")
    channel_only = Conversation("c1")
    for job in [
        make_job("l1", thread=t1, minute=0),
        make_job("l2", thread=t1, minute=1),
        make_job("l3", thread=Conversation("c1", "t2"), minute=2),
        make_job("l4", thread=channel_only, minute=3),
        make_job("l5", thread=None, minute=4),
        make_job("l6", thread=t1, minute=5, server="g2"),
        make_job("l7", thread=t1, minute=6, platform=Platform("slack")),
    ]:
        await store.insert(job)
    latest = await store.latest_in_thread(D, "g1", t1)
    assert latest is not None
    assert latest.id == "l2"
    latest = await store.latest_in_thread(D, "g1", channel_only)
    assert latest is not None
    assert latest.id == "l4"
    assert await store.latest_in_thread(D, "g1", Conversation("c2", "t1")) is None
    assert await store.latest_in_thread(D, "g3", t1) is None

    # A job moved into the thread later (its thread set by `save`) is found.
    moved = make_job("l5", thread=t1, minute=4)
    moved = await store.save(moved)
    assert await store.latest_in_thread(D, "g1", t1) == moved


async def test_by_message_finds_status_and_result_messages(store: JobStore) -> None:
    job = make_job("m1", status_message="s1", result_messages=("r1", "r2"))
    await store.insert(job)
    await store.insert(make_job("m2", server="g2", status_message="s2"))
    assert await store.by_message(D, "g1", "s1") == job
    assert await store.by_message(D, "g1", "r2") == job
    assert await store.by_message(D, "g1", "nope") is None
    assert await store.by_message(D, "g2", "s1") is None  # never across servers
    assert await store.by_message(Platform("slack"), "g1", "s1") is None

    # `save` keeps the message table in step with the job.
    posted = dataclasses.replace(job, status_message="s1b", result_messages=("r3", "r3"))
    posted = await store.save(posted)
    assert await store.by_message(D, "g1", "r1") is None
    assert await store.by_message(D, "g1", "s1") is None
    assert await store.by_message(D, "g1", "s1b") == posted
    assert await store.by_message(D, "g1", "r3") == posted


async def test_by_message_prefers_the_newest_job_on_a_shared_id(store: JobStore) -> None:
    await store.insert(make_job("old", status_message="x", minute=0))
    await store.insert(make_job("new", result_messages=("x",), minute=1))
    found = await store.by_message(D, "g1", "x")
    assert found is not None
    assert found.id == "new"


# -- recent_durations ----------------------------------------------------------------------


async def test_recent_durations_of_succeeded_jobs_newest_first(store: JobStore) -> None:
    def timed(job_id: str, state: JobState, endpoint: str, seconds: float, finish: int) -> Job:
        finished = T0 + timedelta(minutes=finish)
        return make_job(
            job_id,
            state=state,
            endpoint=endpoint,
            started_at=finished - timedelta(seconds=seconds),
            finished_at=finished,
        )

    for job in [
        timed("r1", S, "e1", 10.5, 1),
        timed("r2", S, "e1", 20, 3),
        timed("r3", S, "e1", 30, 2),
        timed("r4", F, "e1", 99, 4),  # failed: no estimate from it
        timed("r5", S, "e2", 77, 5),  # another endpoint
        make_job("r6", state=S, endpoint="e1", finished_at=T0 + timedelta(minutes=6)),
        # Another server's job counts too: run times are the endpoint's, not the server's.
        dataclasses.replace(timed("r7", S, "e1", 40, 7), caller=make_job("x", server="g9").caller),
    ]:
        await store.insert(job)
    assert await store.recent_durations("e1") == [40, 20, 30, 10.5]
    assert await store.recent_durations("e1", limit=2) == [40, 20]
    assert await store.recent_durations("e3") == []
