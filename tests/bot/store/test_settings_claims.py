"""`SettingsStore` and `ClaimStore` contracts, and the limits `JobRepo.insert` counts."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from store_kit import T0, C, D, P, S, make_job

from bot.model import Platform
from bot.ports import Admission, AdmissionRefused, EventClaimed

if TYPE_CHECKING:
    from bot.ports import JobStore


async def test_settings_are_per_server_and_scope(store: JobStore) -> None:
    assert await store.settings(D, "g1", "") == {}
    await store.put_settings(D, "g1", "", {"steps": "30", "sampler": "Euler a"})
    await store.put_settings(D, "g1", "c1", {"steps": "20"})
    await store.put_settings(D, "g2", "", {"steps": "10"})
    await store.put_settings(Platform("slack"), "g1", "", {"steps": "5"})
    assert await store.settings(D, "g1", "") == {"steps": "30", "sampler": "Euler a"}
    assert await store.settings(D, "g1", "c1") == {"steps": "20"}
    assert await store.settings(D, "g2", "") == {"steps": "10"}
    assert await store.settings(Platform("slack"), "g1", "") == {"steps": "5"}


async def test_put_settings_replaces_and_removes(store: JobStore) -> None:
    await store.put_settings(D, "g1", "", {"steps": "30", "sampler": "Euler a"})
    await store.put_settings(D, "g1", "", {"steps": "40", "sampler": None, "absent": None})
    assert await store.settings(D, "g1", "") == {"steps": "40"}


async def test_an_event_is_claimed_once(store: JobStore) -> None:
    assert await store.claim("slack:T1:C1:1.0")
    assert not await store.claim("slack:T1:C1:1.0")
    assert await store.claim("slack:T1:C1:2.0")


async def test_a_job_made_with_its_events_claim_is_made_once(store: JobStore) -> None:
    await store.insert(make_job("e1"), claim="slack:T1:C1:1.0:job")
    with pytest.raises(EventClaimed):
        await store.insert(make_job("e2"), claim="slack:T1:C1:1.0:job")
    assert await store.get("e2") is None
    assert not await store.claim("slack:T1:C1:1.0:job")
    # Inserts arriving together (one group on PostgreSQL): one job per event, the others'
    # own outcomes intact.
    burst = [store.insert(make_job(f"g{n}"), claim=f"ev{n % 2}") for n in range(4)]
    outcomes = await asyncio.gather(*burst, return_exceptions=True)
    assert [o is None for o in outcomes] == [True, True, False, False]
    assert all(isinstance(o, EventClaimed) for o in outcomes[2:])
    assert [await store.get(f"g{n}") is not None for n in range(4)] == [True, True, False, False]
    # A claim made first (by a replica that then stopped) keeps the job out too.
    assert await store.claim("ev9")
    with pytest.raises(EventClaimed):
        await store.insert(make_job("g9"), claim="ev9")


async def test_expired_claims_can_be_claimed_again(store: JobStore) -> None:
    assert await store.claim("discord:1")
    assert await store.expire_claims(T0 - timedelta(days=3650)) == 0  # none that old
    assert not await store.claim("discord:1")
    # Claims are stamped with the wall clock when made; everything before "far ahead" goes.
    forgotten = await store.expire_claims(T0 + timedelta(days=36500))
    assert forgotten >= 1
    assert await store.claim("discord:1")


async def test_the_running_limit_counts_only_unfinished_jobs_of_the_user(store: JobStore) -> None:
    limit = Admission(max_running=2)
    await store.insert(make_job("a1", state=C), admission=limit)
    await store.insert(make_job("a2", state=S), admission=limit)  # terminal: not counted
    await store.insert(make_job("a3", state=P), admission=limit)
    await store.insert(make_job("b1", user="u2"), admission=limit)  # another user
    await store.insert(make_job("c1", server="g2"), admission=limit)  # another server
    with pytest.raises(AdmissionRefused) as refused:
        await store.insert(make_job("a4"), admission=limit)
    assert (refused.value.limit, refused.value.count) == ("running", 2)
    assert await store.get("a4") is None
    done = await store.get("a1")
    assert done is not None
    await store.save(dataclasses.replace(done, state=S))
    await store.insert(make_job("a4"), admission=limit)


async def test_the_daily_quota_counts_jobs_created_since_the_day_began(store: JobStore) -> None:
    day = Admission(max_running=100, max_today=2, day_start=T0)
    await store.insert(make_job("old", state=S, minute=-1), admission=day)  # yesterday
    await store.insert(make_job("d1", state=S, minute=1), admission=day)
    await store.insert(make_job("d2", state=S, minute=2), admission=day)
    with pytest.raises(AdmissionRefused) as refused:
        await store.insert(make_job("d3", state=S, minute=3), admission=day)
    assert (refused.value.limit, refused.value.count) == ("daily", 2)
    await store.insert(make_job("d3", state=S, minute=3))  # no admission: no limit
