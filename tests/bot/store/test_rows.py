"""The row mapping (`bot.store.rows`) through a real store: every field of a job round-trips,
stored forms (times, option values), and what is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_kit import D, full_job, make_job

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
from bot.ports import JobChanged, JobQuery, JobStore, StoredImage
from bot.store.rows import encode_time
from commands import COMMANDS, Family, Size
from commands.options import GenerateOptions
from commands.spec import Area, Fill, Method, Resize, Sampler, Scheduler

if TYPE_CHECKING:
    from collections.abc import Callable

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
        if field.name == "event_key":
            continue  # not a column: it is claimed with the row (`JobRepo.insert(claim=…)`)
        if field.default is not dataclasses.MISSING:
            assert getattr(job.caller, field.name) != field.default, field.name


async def test_insert_then_get_returns_every_field(store: JobStore) -> None:
    job = full_job()
    await store.insert(job)
    got = await store.get(job.id)
    assert got == job
    assert got is not None
    assert got.started_at is not None
    assert got.started_at.utcoffset() == timedelta(0)  # read back in UTC


async def test_save_writes_every_field(store: JobStore) -> None:
    await store.insert(make_job("k3x9q2m7ab"))
    # Fence and attempts belong to claims (`claim_jobs`): `save` leaves them as they are.
    job = dataclasses.replace(full_job("k3x9q2m7ab"), fence=0, attempts=0)
    saved = await store.save(dataclasses.replace(job, version=0))
    assert saved == dataclasses.replace(job, version=1)
    assert await store.get(job.id) == saved
    # And back to the defaults: NULLs and empty lists survive too.
    plain = make_job("k3x9q2m7ab")
    saved = await store.save(dataclasses.replace(plain, version=1))
    assert await store.get(job.id) == saved == dataclasses.replace(plain, version=2)


async def test_save_never_writes_over_a_change_it_has_not_seen(store: JobStore) -> None:
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


async def test_naive_datetimes_are_refused(store: JobStore) -> None:
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


# NUL is the one character a PostgreSQL text column refuses (see test_nul_in_a_text_column).
_texts = st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=12)
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


async def test_nul_in_a_text_column(store: JobStore) -> None:
    """SQLite keeps a NUL; PostgreSQL's text cannot hold one, so it stores U+FFFD there. A
    prompt keeps it on both (options are JSON, which escapes it)."""
    job = make_job("nul0000001", error="bad\x00byte")
    await store.insert(job)
    found = await store.get(job.id)
    assert found is not None
    kept = "bad\x00byte" if store.describe.startswith("SQLite") else "bad\ufffdbyte"
    assert found.error == kept
    # The same for the other text a user can put in: an image's file name, a setting, an
    # event's key. None of them fails the write.
    await store.put_images(job.id, [StoredImage("result", "bad\x00byte.png", b"r")])
    [image] = await store.images(job.id)
    assert image.name == f"{kept}.png"
    await store.put_settings(D, "g1", "", {"bad\x00byte": "bad\x00byte"})
    assert await store.settings(D, "g1", "") == {kept: kept}
    assert await store.claim("bad\x00byte")
    assert not await store.claim("bad\x00byte")


def test_any_job_round_trips(new_store: Callable[[], JobStore]) -> None:
    numbers = itertools.count()
    with asyncio.Runner() as runner:
        store = new_store()
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
