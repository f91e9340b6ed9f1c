"""`JobLeases`, `LeaderLeases` and `Replicas`: the contract every store engine keeps.

Takeovers here happen the way they do between replicas: a lease taken for a negative time is
already expired, so another owner may claim it. (What SQLite adds for its one process, a start
taking every lease, is in tests/bot/test_ownership.py.)
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from store_kit import make_job

from bot.model import Delivery, Job, JobState, Platform
from bot.ports import JobChanged, LeaseLost, StoredImage

if TYPE_CHECKING:
    from bot.ports import JobStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ON_DISCORD = Platform("discord")
DISCORD = [Platform("discord")]
EXPIRED = -1.0  # a lease that has already run out


def job(job_id: str, platform: Platform = ON_DISCORD, **fields: Any) -> Job:
    return make_job(job_id, platform=platform, **({"created_at": NOW} | fields))


async def test_claims_take_unfinished_jobs_of_the_platforms_served(store: JobStore) -> None:
    await store.insert(job("d1"))
    await store.insert(job("s1", Platform("slack")))
    await store.insert(job("d2", state=JobState.SUCCEED, delivery=Delivery.DONE))
    claimed = await store.claim_jobs("a", 30, 10, DISCORD)
    assert [(j.id, j.fence, j.attempts) for j in claimed] == [("d1", 1, 0)]
    # Held and alive: not claimable by anyone's claim loop …
    assert await store.claim_jobs("a", 30, 10, DISCORD) == []
    assert await store.claim_jobs("b", 30, 10, DISCORD) == []
    # … but its owner restarting under the same id takes it back, as a takeover.
    [again] = await store.claim_jobs("a", 30, 10, DISCORD, own=True)
    assert (again.fence, again.attempts) == (2, 1)
    [slack] = await store.claim_jobs("b", 30, 10, [Platform("slack")])
    assert slack.id == "s1"


async def test_claims_take_the_oldest_first_up_to_the_limit(store: JobStore) -> None:
    for n in range(5):
        await store.insert(job(f"o{n}", created_at=NOW + timedelta(seconds=5 - n)))
    first = await store.claim_jobs("a", 30, 2, DISCORD)
    assert sorted(j.id for j in first) == ["o3", "o4"]
    rest = await store.claim_jobs("b", 30, 10, DISCORD)
    assert sorted(j.id for j in rest) == ["o0", "o1", "o2"]


async def test_a_write_with_an_old_fence_is_refused(store: JobStore) -> None:
    await store.insert(job("j1"))
    [mine] = await store.claim_jobs("a", EXPIRED, 10, DISCORD)
    mine = await store.save(dataclasses.replace(mine, state=JobState.INPROGRESS))
    # The lease ran out (the owner was paused): another replica takes the job over.
    [theirs] = await store.claim_jobs("b", 30, 10, DISCORD)
    assert (theirs.fence, theirs.attempts, theirs.version) == (2, 1, mine.version)
    with pytest.raises(LeaseLost):
        await store.save(dataclasses.replace(mine, state=JobState.SUCCEED))
    with pytest.raises(LeaseLost):
        await store.put_images("j1", [StoredImage("result", "r.png", b"r")], fence=mine.fence)
    assert await store.images("j1") == []
    stored = await store.get("j1")
    assert stored is not None and stored.state is JobState.INPROGRESS
    # The new owner writes; a second write from the same read is an ordinary conflict.
    saved = await store.save(dataclasses.replace(theirs, state=JobState.SUCCEED))
    with pytest.raises(JobChanged) as refused:
        await store.save(dataclasses.replace(theirs, state=JobState.FAILED))
    assert not isinstance(refused.value, LeaseLost)
    await store.put_images("j1", [StoredImage("result", "r.png", b"r")], fence=saved.fence)
    assert len(await store.images("j1")) == 1


async def test_renewal_release_and_attempts(store: JobStore) -> None:
    for n in range(3):
        await store.insert(job(f"r{n}"))
    claimed = {j.id: j.fence for j in await store.claim_jobs("a", 30, 10, DISCORD)}
    assert await store.renew_jobs("a", claimed, 30) == {"r0", "r1", "r2"}
    assert await store.renew_jobs("a", {"r0": 7}, 30) == set()  # not with that fence
    assert await store.renew_jobs("b", claimed, 30) == set()  # nor by another owner
    await store.release_job("r0", "a", claimed["r0"])
    assert await store.renew_jobs("a", claimed, EXPIRED) == {"r1", "r2"}  # they run out now
    # Let go: taken without counting an attempt. Run out: counted.
    taken = {j.id: j for j in await store.claim_jobs("b", 30, 10, DISCORD)}
    assert {k: (j.fence, j.attempts) for k, j in taken.items()} == {
        "r0": (2, 0),
        "r1": (2, 1),
        "r2": (2, 1),
    }
    assert await store.renew_jobs("a", claimed, 30) == set()  # the old owner lost them all
    assert await store.claim_job("r1", "c", 30) is None  # held by b, alive
    one = await store.claim_job("r1", "b", 30)  # its holder takes it again (a new driver)
    assert one is not None and (one.fence, one.attempts) == (3, 2)
    finished = await store.save(dataclasses.replace(one, state=JobState.FAILED))
    await store.save(dataclasses.replace(finished, delivery=Delivery.DONE))
    assert await store.claim_job("r1", "b", 30) is None  # nothing left to drive


async def test_leader_leases_keep_their_fence_while_held(store: JobStore) -> None:
    assert await store.lead("retention", "a", 60) == 1
    assert await store.lead("retention", "a", 60) == 1  # extended
    assert await store.lead("retention", "a", EXPIRED) == 1  # extended, to the past
    assert await store.lead("retention", "b", 60) == 2  # run out: taken over
    await store.resign("retention", "b")
    assert await store.lead("retention", "c", 60) == 3  # given up: taken at once
    assert await store.lead("scan", "a", 60) == 1  # names are independent


async def test_replicas_report_jobs_held_and_stale_writes(store: JobStore) -> None:
    await store.insert(job("h1"))
    await store.claim_jobs("a", 30, 10, DISCORD)
    await store.heartbeat("a")
    await store.heartbeat("a", stale_writes=2)
    await store.heartbeat("b", stale_writes=1)
    seen = {r.id: r for r in await store.replicas(datetime.now(UTC) - timedelta(minutes=1))}
    assert {k: (r.jobs, r.stale_writes) for k, r in seen.items()} == {"a": (1, 2), "b": (0, 1)}
    assert seen["a"].started_at <= seen["a"].seen_at
    assert await store.replicas(datetime.now(UTC) + timedelta(minutes=1)) == []
