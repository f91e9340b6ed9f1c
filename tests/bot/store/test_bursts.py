"""`JobRepo.insert` under a burst: inserts that arrive together (written in one group by both
engines: SQLite's worker, `stores.postgres.inserts`) keep every insert's own outcome, and the
limits count the jobs admitted earlier in the same burst."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING

from store_kit import T0, D, S, ids, make_job

from bot.ports import Admission, AdmissionRefused, JobQuery, StoredImage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from bot.ports import JobStore


async def outcomes(calls: Sequence[Awaitable[None]]) -> list[str]:
    """Each call's outcome: "ok", the limit that refused it, or the exception's name."""
    found = []
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if result is None:
            found.append("ok")
        elif isinstance(result, AdmissionRefused):
            found.append(f"{result.limit} {result.count}")
        else:
            found.append(type(result).__name__)
    return found


async def test_a_burst_of_one_user_fits_the_running_limit_in_order(store: JobStore) -> None:
    limit = Admission(max_running=3)
    await store.insert(make_job("b0"), admission=limit)
    burst = [store.insert(make_job(f"b{n}", minute=n), admission=limit) for n in range(1, 6)]
    burst.append(store.insert(make_job("other", user="u2"), admission=limit))
    assert await outcomes(burst) == ["ok", "ok", "running 3", "running 3", "running 3", "ok"]
    assert ids(await store.query(JobQuery(D, "g1", user="u1"))) == ["b2", "b1", "b0"]
    # A job admitted as already finished does not count for the ones after it.
    finished = [
        store.insert(make_job("f1", user="u3", state=S), admission=Admission(max_running=1)),
        store.insert(make_job("f2", user="u3"), admission=Admission(max_running=1)),
        store.insert(make_job("f3", user="u3"), admission=Admission(max_running=1)),
    ]
    assert await outcomes(finished) == ["ok", "ok", "running 1"]


async def test_a_burst_fits_the_global_cap_and_the_daily_quota(store: JobStore) -> None:
    cap = Admission(max_running=None, max_in_flight=3)
    await store.insert(make_job("g0", user="u9"), admission=cap)
    burst = [store.insert(make_job(f"g{n}", user=f"u{n}"), admission=cap) for n in range(1, 5)]
    assert await outcomes(burst) == ["ok", "ok", "global 3", "global 3"]
    day = Admission(max_running=100, max_today=2, day_start=T0)
    quota = [
        store.insert(make_job("d0", user="u7", state=S, minute=-5), admission=day),  # yesterday's
        store.insert(make_job("d1", user="u7", state=S, minute=1), admission=day),
        store.insert(make_job("d2", user="u7", state=S, minute=2), admission=day),
        store.insert(make_job("d3", user="u7", state=S, minute=3), admission=day),
    ]
    assert await outcomes(quota) == ["ok", "ok", "ok", "daily 2"]


async def test_a_broken_or_taken_insert_fails_alone(store: JobStore) -> None:
    await store.insert(make_job("taken"))
    broken = StoredImage("mask", "m.png", None)  # type: ignore[arg-type]
    image = StoredImage("image", "a.png", b"A")
    burst = [
        store.insert(make_job("k1"), [image]),
        store.insert(make_job("k2"), [image, broken]),
        store.insert(make_job("taken")),
        store.insert(make_job("k3", status_message="s3"), [image]),
        store.insert(make_job("k3")),  # the same id twice in one burst
    ]
    found = await outcomes(burst)
    assert found[2] == found[4] == "KeyError"
    assert [found[0], found[3]] == ["ok", "ok"]
    assert found[1] in {"IntegrityError", "NotNullViolationError"}
    assert await store.get("k2") is None and await store.images("k2") == []
    assert await store.images("k1") == await store.images("k3") == [image]
    k3 = await store.get("k3")
    assert k3 is not None and k3.status_message == "s3"
    assert await store.by_message(D, "g1", "s3") == k3


async def test_a_burst_is_born_under_its_owners_lease(store: JobStore) -> None:
    await asyncio.gather(
        *(store.insert(make_job(f"o{n}", minute=n), owner="a", ttl=30) for n in range(5))
    )
    assert await store.claim_jobs("b", 30, 10, [D]) == []
    [again] = await store.claim_jobs("a", 30, 1, [D], own=True)
    assert (again.id, again.fence, again.attempts) == ("o0", 1, 1)


async def test_a_naive_time_fails_only_its_own_insert(store: JobStore) -> None:
    burst = [
        store.insert(make_job("n1")),
        store.insert(make_job("n2", created_at=datetime(2026, 1, 1))),
    ]
    assert await outcomes(burst) == ["ok", "ValueError"]
    assert await store.get("n1") is not None and await store.get("n2") is None


async def test_closing_lets_the_inserts_already_made_commit(
    new_store: Callable[[], JobStore],
) -> None:
    first = new_store()
    await first.start()
    calls = [asyncio.ensure_future(first.insert(make_job(f"c{n}", minute=n))) for n in range(5)]
    await asyncio.sleep(0)  # every call is under way
    await first.aclose()
    assert await outcomes(calls) == ["ok"] * 5
    again = new_store()
    await again.start()
    try:
        assert ids(await again.query(JobQuery(D, "g1"))) == [f"c{n}" for n in range(4, -1, -1)]
    finally:
        await again.aclose()
