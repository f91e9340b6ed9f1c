"""Tests of `bot.store.SqliteJobStore`: round-trips, every query, images, durability, the schema
and its migrations, the lifecycle, and the query plans that keep it fast."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import ConfigError
from bot.model import (
    AttachmentRef,
    Caller,
    Conversation,
    Delivery,
    GenerationParams,
    InterrogateParams,
    Job,
    JobState,
    Platform,
)
from bot.ports import JobChanged, JobQuery, StoredImage
from bot.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SQL_BY_MESSAGE,
    SQL_FIND,
    SQL_FIND_FROM,
    SQL_GET,
    SQL_IMAGES,
    SQL_IMAGES_OF_SLOT,
    SQL_LATEST_IN_THREAD,
    SQL_RECENT_DURATIONS,
    SQL_UNFINISHED,
    SqliteJobStore,
    encode_time,
    migrate,
    query_sql,
)
from commands import COMMANDS, Family, Size
from commands.options import GenerateOptions, job_options
from commands.spec import Area, Fill, Method, Resize, Sampler, Scheduler

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Sequence
    from pathlib import Path

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
D = Platform("discord")


def make_job(
    job_id: str,
    *,
    server: str = "g1",
    user: str = "u1",
    platform: Platform = D,
    minute: float = 0,
    **fields: Any,
) -> Job:
    """A job with the required fields filled in; `minute` is its creation time after T0."""
    caller = Caller(platform, server, user, Conversation("c1"))
    values: dict[str, Any] = {
        "id": job_id,
        "command": "img2img",
        "caller": caller,
        "state": JobState.CREATED,
        "created_at": T0 + timedelta(minutes=minute),
    }
    values.update(fields)
    values.setdefault("options", job_options(values["command"], {}))
    return Job(**values)


def full_job(job_id: str = "k3x9q2m7ab") -> Job:
    """A job with every field set to something other than its default."""
    plus_two = timezone(timedelta(hours=2))
    return Job(
        id=job_id,
        command="inpaint-sketch",
        caller=Caller(
            platform=Platform("slack"),
            server="T0123",
            user="U42",
            conversation=Conversation("C77", "1700000000.000100"),
            is_admin=True,
            user_name="Ada “the” Lovelace ✓",
            roles=("r1", "r2"),
        ),
        state=JobState.SUCCEED,
        created_at=datetime(2026, 11, 25, 12, 1, 33, 123456, tzinfo=UTC),
        options=GenerateOptions(
            prompt="a cat, ünïcode",
            strength=0.35,
            steps=30,
            invert=True,
            size=Size(768, 512),
            sampler=Sampler.EULER_A,
            fill=Fill.LATENT_NOISE,
        ),
        params=GenerationParams(
            prompt="a cat",
            negative="blurry",
            strength=0.35,
            steps=30,
            cfg=6.5,
            sampler=Sampler.EULER_A,
            seed=1234567890123,
            width=768,
            height=512,
            count=3,
            resize=Resize.CROP,
            model="sd15.safetensors",
            vae="vae.pt",
            endpoint="ep-1",
            mask_blur=8,
            fill=Fill.LATENT_NOISE,
            area=Area.MASKED,
            padding=64,
            invert=True,
            batch_count=2,
            subseed=42,
            subseed_strength=0.25,
            restore_faces=True,
            tiling=True,
            clip_skip=2,
            image_cfg=1.25,
            noise_multiplier=0.9,
            scheduler=Scheduler.KARRAS,
            mask_alpha=30,
        ),
        interrogate=InterrogateParams(method=Method.DEEPBOORU, endpoint="ep-2"),
        backend_id="b-123",
        endpoint="ep-1",
        model="sd15.safetensors",
        attachments=(
            AttachmentRef("cat.png", "https://files/cat.png", 1234, "image/png", "image"),
            AttachmentRef("cat-sketch.jpg", "https://files/s.jpg", None, None, "sketch"),
        ),
        status_message="1700000000.000200",
        thread=Conversation("C77", "1700000000.000100"),
        # Not UTC on purpose: the store keeps the instant, in UTC.
        started_at=datetime(2026, 11, 25, 14, 1, 40, tzinfo=plus_two),
        finished_at=datetime(2026, 11, 25, 12, 2, 10, 5, tzinfo=UTC),
        error="CUDA out of memory",
        caption="a cat on a mat",
        infotext="Steps: 30, Sampler: Euler a, CFG scale: 6.5",
        notes=("first frame used", "mask resized"),
        delivery=Delivery.POSTING,
        parent_id="parent0001",
        result_count=3,
        results_expired=True,
        result_messages=("1700000000.000300", "1700000000.000400"),
        version=3,
    )


def ids(jobs: Iterable[Job]) -> list[str]:
    return [job.id for job in jobs]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    async with SqliteJobStore(tmp_path / "data" / "jobs.sqlite3") as opened:
        yield opened


def raw(path: Path | str) -> contextlib.closing[sqlite3.Connection]:
    """A plain connection for looking under the store, closed after the `with`."""
    return contextlib.closing(sqlite3.connect(path))


# -- Round trips ---------------------------------------------------------------------------


def test_full_job_sets_every_field() -> None:
    # Guards the round-trip test: a field added to Job must be set here to be tested there.
    job = full_job()
    for field in dataclasses.fields(Job):
        if field.default is not dataclasses.MISSING:
            assert getattr(job, field.name) != field.default, field.name
    for field in dataclasses.fields(GenerationParams):
        if field.default is not dataclasses.MISSING:
            assert getattr(job.params, field.name) != field.default, field.name
    for field in dataclasses.fields(Caller):
        if field.default is not dataclasses.MISSING:
            assert getattr(job.caller, field.name) != field.default, field.name


async def test_insert_then_get_returns_every_field(store: SqliteJobStore) -> None:
    job = full_job()
    await store.insert(job)
    got = await store.get(job.id)
    assert got == job
    assert got is not None
    assert got.started_at is not None
    assert got.started_at.utcoffset() == timedelta(0)  # read back in UTC


async def test_save_writes_every_field(store: SqliteJobStore) -> None:
    await store.insert(make_job("k3x9q2m7ab"))
    job = full_job("k3x9q2m7ab")
    saved = await store.save(dataclasses.replace(job, version=0))
    assert saved == dataclasses.replace(job, version=1)
    assert await store.get(job.id) == saved
    # And back to the defaults: NULLs and empty lists survive too.
    plain = make_job("k3x9q2m7ab")
    saved = await store.save(dataclasses.replace(plain, version=1))
    assert await store.get(job.id) == saved == dataclasses.replace(plain, version=2)


async def test_save_never_writes_over_a_change_it_has_not_seen(store: SqliteJobStore) -> None:
    # Two writers read the same row (the driver and a cancel): the second write is refused
    # instead of silently undoing the first.
    await store.insert(make_job("cas0000001"))
    read = await store.get("cas0000001")
    assert read is not None
    cancelled = await store.save(dataclasses.replace(read, state=JobState.CANCELLED))
    with pytest.raises(JobChanged):
        await store.save(dataclasses.replace(read, state=JobState.SUCCEED, result_count=2))
    assert await store.get("cas0000001") == cancelled
    # Retention's targeted update counts as a write too.
    await store.put_images("cas0000001", [StoredImage("result", "r.png", b"R")])
    marked = await store.save(dataclasses.replace(cancelled, result_count=1))
    await store.expire_images(marked.created_at + timedelta(days=1))
    with pytest.raises(JobChanged):
        await store.save(dataclasses.replace(marked, error="late"))


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
    assert got.options.sampler is Sampler.EULER_A  # type: ignore[union-attr]


async def test_naive_datetimes_are_refused(store: SqliteJobStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        await store.insert(make_job("naive1", created_at=datetime(2026, 1, 1)))
    assert await store.get("naive1") is None
    with pytest.raises(ValueError, match="naive"):
        await store.query(JobQuery(D, "g1", since=datetime(2026, 1, 1)))


@settings(max_examples=200)
@given(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=st.just(UTC)),
)
def test_stored_times_sort_as_text_in_time_order(a: datetime, b: datetime) -> None:
    ea, eb = encode_time(a), encode_time(b)
    assert len(ea) == len(eb) == len("2026-11-25T12:01:33.000000+00:00")
    assert (ea < eb) == (a < b)


def test_stored_times_are_utc() -> None:
    local = datetime(2026, 11, 25, 14, 1, 33, tzinfo=timezone(timedelta(hours=2)))
    assert encode_time(local) == "2026-11-25T12:01:33.000000+00:00"


_texts = st.text(max_size=12)
# Finite: the grammar refuses others, and JSON has no infinity.
_finite = st.floats(allow_nan=False, allow_infinity=False)
_aware = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)
_conversations = st.builds(Conversation, _texts, st.none() | _texts)
_jobs = st.builds(
    Job,
    id=st.just("placeholder"),
    command=st.sampled_from([c.name for c in COMMANDS.values() if c.family is Family.GENERATE]),
    caller=st.builds(
        Caller,
        platform=st.sampled_from([Platform(n) for n in ("console", "discord", "slack", "teams")]),
        server=_texts,
        user=_texts,
        conversation=_conversations,
        is_admin=st.booleans(),
        user_name=_texts,
        roles=st.lists(_texts, max_size=3).map(tuple),
    ),
    state=st.sampled_from(JobState),
    created_at=_aware,
    options=st.builds(
        GenerateOptions,
        prompt=st.none() | _texts,
        strength=st.none() | _finite,
        steps=st.none() | st.integers(),
        sampler=st.none() | st.sampled_from(Sampler),
        size=st.none() | st.builds(Size, st.integers(), st.integers()),
        resize=st.none() | st.sampled_from(Resize),
        fill=st.none() | st.sampled_from(Fill),
        area=st.none() | st.sampled_from(Area),
        invert=st.none() | st.booleans(),
        scheduler=st.none() | st.sampled_from(Scheduler),
    ),
    params=st.none()
    | st.builds(
        GenerationParams,
        prompt=_texts,
        negative=_texts,
        strength=_finite,
        steps=st.integers(),
        cfg=_finite,
        sampler=st.sampled_from(Sampler),
        seed=st.integers(),
        width=st.integers(),
        height=st.integers(),
        count=st.integers(),
        resize=st.sampled_from(Resize),
        model=_texts,
        vae=_texts,
        endpoint=_texts,
        mask_blur=st.integers(),
        fill=st.sampled_from(Fill),
        area=st.sampled_from(Area),
        padding=st.integers(),
        invert=st.booleans(),
        scheduler=st.sampled_from(Scheduler),
    ),
    interrogate=st.none() | st.builds(InterrogateParams, st.sampled_from(Method), _texts),
    backend_id=st.none() | _texts,
    endpoint=st.none() | _texts,
    model=st.none() | _texts,
    attachments=st.lists(
        st.builds(
            AttachmentRef,
            _texts,
            _texts,
            st.none() | st.integers(min_value=0),
            st.none() | _texts,
            _texts,
        ),
        max_size=3,
    ).map(tuple),
    status_message=st.none() | _texts,
    thread=st.none() | _conversations,
    started_at=st.none() | _aware,
    finished_at=st.none() | _aware,
    error=st.none() | _texts,
    caption=st.none() | _texts,
    infotext=st.none() | _texts,
    notes=st.lists(_texts, max_size=3).map(tuple),
    delivery=st.sampled_from(Delivery),
    parent_id=st.none() | _texts,
    result_count=st.integers(min_value=0, max_value=2**62),
    results_expired=st.booleans(),
    result_messages=st.lists(_texts, max_size=3).map(tuple),
)


def test_any_job_round_trips(tmp_path: Path) -> None:
    numbers = itertools.count()
    with asyncio.Runner() as runner:
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        runner.run(store.start())
        try:

            @settings(max_examples=150, deadline=None)
            @given(_jobs)
            def check(job: Job) -> None:
                job = dataclasses.replace(job, id=f"h{next(numbers):09d}")
                runner.run(store.insert(job))
                assert runner.run(store.get(job.id)) == job
                job = runner.run(store.save(job))
                assert runner.run(store.get(job.id)) == job

            check()
        finally:
            runner.run(store.aclose())


# -- insert / save / get -------------------------------------------------------------------


async def test_insert_of_a_taken_id_raises_key_error_and_changes_nothing(
    store: SqliteJobStore,
) -> None:
    first = make_job("dup0000001", command="img2img")
    await store.insert(first, [StoredImage("image", "a.png", b"A")])
    with pytest.raises(KeyError):
        await store.insert(
            make_job("dup0000001", command="inpaint"), [StoredImage("mask", "m.png", b"M")]
        )
    assert await store.get("dup0000001") == first
    assert await store.images("dup0000001") == [StoredImage("image", "a.png", b"A")]


async def test_insert_is_one_transaction(store: SqliteJobStore) -> None:
    # The second input breaks a NOT NULL constraint after the row and the first input are
    # written: nothing of the job may remain.
    broken = StoredImage("mask", "m.png", None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        await store.insert(make_job("atomic0001"), [StoredImage("image", "a.png", b"A"), broken])
    assert await store.get("atomic0001") is None
    assert await store.images("atomic0001") == []
    await store.insert(make_job("atomic0001"))  # the id is free


async def test_save_of_an_unknown_job_raises_key_error(store: SqliteJobStore) -> None:
    with pytest.raises(KeyError):
        await store.save(make_job("nosuchjob1"))
    assert await store.get("nosuchjob1") is None


async def test_get_of_an_unknown_id_is_none(store: SqliteJobStore) -> None:
    assert await store.get("nosuchjob1") is None


async def test_concurrent_calls_are_all_served(store: SqliteJobStore) -> None:
    jobs = [make_job(f"c{n:09d}", minute=n) for n in range(50)]
    await asyncio.gather(*(store.insert(job) for job in jobs))
    got = await asyncio.gather(*(store.get(job.id) for job in jobs))
    assert got == jobs


# -- find ----------------------------------------------------------------------------------


async def test_find_by_prefix_stays_in_its_server(store: SqliteJobStore) -> None:
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


async def test_find_returns_at_most_five(store: SqliteJobStore) -> None:
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
    store: SqliteJobStore, prefix: str, expected: list[str]
) -> None:
    for job_id in ["a\U0010ffff\U0010ffff", "a\U0010ffffb", "a\ud7ffz", "az", "\ue000"]:
        await store.insert(make_job(job_id))
    assert ids(await store.find(D, "g1", prefix)) == expected


# -- query ---------------------------------------------------------------------------------

S, F, C, P, X = (
    JobState.SUCCEED,
    JobState.FAILED,
    JobState.CREATED,
    JobState.INPROGRESS,
    JobState.CANCELLED,
)

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
async def query_store(store: SqliteJobStore) -> SqliteJobStore:
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
    query_store: SqliteJobStore, filters: dict[str, Any], expected: list[str]
) -> None:
    assert ids(await query_store.query(JobQuery(D, "g1", **filters))) == expected


async def test_query_sees_only_its_server(query_store: SqliteJobStore) -> None:
    assert ids(await query_store.query(JobQuery(D, "g2"))) == ["q08"]
    assert ids(await query_store.query(JobQuery(Platform("slack"), "g1"))) == ["q99"]
    assert await query_store.query(JobQuery(D, "g3")) == []


async def test_query_returns_whole_jobs(query_store: SqliteJobStore) -> None:
    [job] = await query_store.query(JobQuery(D, "g1", endpoint="e2", states=(C,)))
    assert job == query_job(QUERY_ROWS[3])


async def test_query_refuses_negative_paging(store: SqliteJobStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.query(JobQuery(D, "g1", limit=-1))
    with pytest.raises(ValueError, match="offset"):
        await store.query(JobQuery(D, "g1", offset=-1))


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


def test_query_agrees_with_a_reference_filter(tmp_path: Path) -> None:
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
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
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


async def test_unfinished_lists_jobs_to_resume_oldest_first(store: SqliteJobStore) -> None:
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


async def test_latest_in_thread(store: SqliteJobStore) -> None:
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


async def test_by_message_finds_status_and_result_messages(store: SqliteJobStore) -> None:
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


async def test_by_message_prefers_the_newest_job_on_a_shared_id(store: SqliteJobStore) -> None:
    await store.insert(make_job("old", status_message="x", minute=0))
    await store.insert(make_job("new", result_messages=("x",), minute=1))
    found = await store.by_message(D, "g1", "x")
    assert found is not None
    assert found.id == "new"


# -- images --------------------------------------------------------------------------------


async def test_images_put_replace_get_delete(store: SqliteJobStore) -> None:
    image = StoredImage("image", "in.png", b"\x89PNG image")
    mask = StoredImage("mask", "mask.png", b"\x00\xff mask")
    await store.insert(make_job("i1"), [image, mask])
    await store.insert(make_job("i2"), [StoredImage("image", "other.png", b"other")])
    assert await store.images("i1") == [image, mask]

    results = [StoredImage("result", f"{n}.png", bytes([n]) * 3) for n in range(3)]
    await store.put_images("i1", results)
    assert await store.images("i1") == [image, mask, *results]  # by slot, then position
    assert await store.images("i1", "result") == results
    assert await store.images("i1", "mask") == [mask]
    assert await store.images("i1", "sketch") == []

    fewer = [StoredImage("result", "new.png", b"new")]
    await store.put_images("i1", fewer)
    assert await store.images("i1") == [image, mask, *fewer]  # only the given slot replaced

    await store.delete_images("i1")
    assert await store.images("i1") == []
    assert await store.images("i2") == [StoredImage("image", "other.png", b"other")]
    assert await store.get("i1") is not None  # rows are kept, only images go


async def test_put_images_for_an_unknown_job_raises_key_error(store: SqliteJobStore) -> None:
    with pytest.raises(KeyError):
        await store.put_images("nosuchjob1", [StoredImage("result", "r.png", b"r")])
    assert await store.images("nosuchjob1") == []


async def test_put_images_with_nothing_changes_nothing(store: SqliteJobStore) -> None:
    image = StoredImage("image", "in.png", b"in")
    await store.insert(make_job("i3"), [image])
    await store.put_images("i3", [])
    assert await store.images("i3") == [image]


# -- recent_durations ----------------------------------------------------------------------


async def test_recent_durations_of_succeeded_jobs_newest_first(store: SqliteJobStore) -> None:
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


# -- Durability, schema, lifecycle ----------------------------------------------------------


async def test_reopening_the_file_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    job = full_job()
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
