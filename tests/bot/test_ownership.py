"""Ownership (docs/architecture.md "Ownership"): job leases with fences, leader leases, replicas.

On SQLite one process owns the file, so a lease held by another owner counts as left behind by a
stopped process: two apps on one file in one test play a replica that stopped (or was paused)
and the one that takes its jobs over.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    make_app,
    png,
)
from store_kit import make_job

from bot.model import BackendStatus, Delivery, Job, JobState, Platform
from bot.store import SqliteJobStore
from cloud.local import LocalBackend, LocalBackendConfig

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from scenario_kit import FastSettings as Config

    from bot.app import BotApp
    from bot.ports import PollTarget

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ON_DISCORD = Platform("discord")


def job(job_id: str, platform: Platform = ON_DISCORD, **fields: Any) -> Job:
    return make_job(job_id, platform=platform, **({"created_at": NOW} | fields))


async def test_on_sqlite_a_start_takes_every_lease_and_leader_leases_are_always_granted(
    tmp_path: Path,
) -> None:
    # One process owns a SQLite file: what it finds held was left by a process that stopped.
    async with SqliteJobStore(tmp_path / "jobs.sqlite3") as store:
        await store.insert(job("s1"))
        await store.claim_jobs("a", 30, 10, [Platform("discord")])
        [taken] = await store.claim_jobs("b", 30, 10, [Platform("discord")], own=True)
        assert (taken.fence, taken.attempts) == (2, 1)
        assert await store.lead("retention", "a", 60) == 1
        assert await store.lead("retention", "b", 60) == 2


# -- The runner --------------------------------------------------------------------------------


class GatedBackend(LocalBackend):
    """The local backend whose status answers wait for `GATE` (shared by both apps)."""

    def __init__(self, config: LocalBackendConfig, gate: asyncio.Event) -> None:
        super().__init__(config)
        self.gate = gate

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        await self.gate.wait()
        return dict(await super().statuses(targets))


def _gated_app(config: Config, gate: asyncio.Event, adapter: RecordingAdapter) -> BotApp:
    # Both apps keep their backend's jobs in one folder, as replicas sharing a backend would.
    backend = GatedBackend(
        LocalBackendConfig(delay=config.local_delay, state_dir=config.data_dir / "local"), gate
    )
    app = make_app(config, backend)
    app.add_adapter(adapter)
    return app


async def test_a_replica_whose_jobs_were_taken_over_is_refused_and_the_new_owner_delivers(
    tmp_path: Path,
) -> None:
    gate = asyncio.Event()
    adapter = RecordingAdapter()  # the platform both replicas post to
    first = _gated_app(fast_config(tmp_path, replica_id="a"), gate, adapter)
    await first.start()
    ids = []
    for n in range(4):
        made = await first.dispatcher.handle_text(
            chat_caller(),
            f"img2img cat {n}",
            [adapter.attach("a.png", png())],
            RecordingResponder(),
        )
        assert made is not None
        ids.append(made.id)
    async with asyncio.timeout(10):  # every job submitted, its driver following the backend
        while not all(
            j is not None and j.started_at for j in [await first.store.get(i) for i in ids]
        ):
            await asyncio.sleep(0.01)
    # A second replica starts while the first still drives every job, as if the first had
    # been paused past its leases: it takes them all over (on SQLite, a start takes all).
    second = _gated_app(fast_config(tmp_path, replica_id="b"), gate, adapter)
    await second.start()
    try:
        taken = [await second.store.get(i) for i in ids]
        assert all(j is not None and (j.fence, j.attempts) == (2, 1) for j in taken)
        gate.set()  # the backend answers: both replicas' drivers see their jobs succeed
        async with asyncio.timeout(20):
            await second.runner.wait_idle()
            await first.runner.wait_idle()
        for job_id in ids:
            stored = await second.store.get(job_id)
            assert stored is not None
            assert stored.state is JobState.SUCCEED and stored.delivery is Delivery.DONE
            assert stored.fence == 2  # nobody took it from the second replica
        results = [p.payload.job_id for p in adapter.posts if p.kind == "result"]
        assert sorted(results) == sorted(ids)  # each posted once, by the second replica
        # The first replica's drivers each had one write refused (the state the backend
        # reported), and stopped there.
        assert first.runner.leases.stale_writes == len(ids)
        assert second.runner.leases.stale_writes == 0
        assert first.runner.leases.held == 0
    finally:
        await second.aclose()
        await first.aclose()
    async with SqliteJobStore(tmp_path / "data" / "sdbot.sqlite3") as store:
        seen = {r.id: r.stale_writes for r in await store.replicas(NOW - timedelta(days=1))}
    assert seen == {"a": len(ids), "b": 0}


async def test_a_job_that_keeps_stopping_its_drivers_is_parked_as_failed(tmp_path: Path) -> None:
    config = fast_config(tmp_path, replica_id="z", max_attempts=3)
    config.data_dir.mkdir(parents=True)
    async with SqliteJobStore(config.data_dir / "sdbot.sqlite3") as store:
        await store.insert(job("poison0001", Platform("discord")))
        # Four drivers took it and stopped without letting it go.
        for owner in ("w", "x", "w", "x", "w"):
            await store.claim_jobs(owner, 30, 10, [Platform("discord")], own=True)
    adapter = RecordingAdapter()
    app = make_app(config)
    app.add_adapter(adapter)
    await app.start()
    try:
        await asyncio.wait_for(app.runner.wait_idle(), 10)
        parked = await app.store.get("poison0001")
    finally:
        await app.aclose()
    assert parked is not None and parked.attempts == 5
    assert parked.state is JobState.FAILED and parked.delivery is Delivery.DONE
    assert parked.error is not None and "stopped 5 times" in parked.error
    assert app.runner.parked == 1
    [posted] = [p for p in adapter.posts if p.kind == "result"]
    assert posted.payload.job_id == "poison0001"
