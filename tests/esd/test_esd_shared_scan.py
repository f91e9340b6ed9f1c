"""The ESD list scan done once across replicas (`cloud.esd.sharing`).

Three `EsdBackend`s play three replicas on one ESD, sharing one store's `SharedReads`: the one
leading the scan reads the pages for the jobs of all, the others learn their jobs' states from
what it posted, and nobody reads a job on its own. Request counts come from the server's
per-route counters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import TYPE_CHECKING

from scenario_kit import png

from bot.model import JobState
from bot.store import SqliteJobStore
from cloud.esd import EsdBackend
from tests.esd.esd_kit import esd_config, params, state_of, target

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from bot.model import BackendStatus


class _Leases:
    """`bot.ports.LeaderLeases` as a store shared by replicas keeps it (PostgreSQL; SQLite
    grants every lead, one process owning its file): held by one owner until it runs out, on
    a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self._held: dict[str, tuple[str, float, int]] = {}

    async def lead(self, name: str, owner: str, ttl: float) -> int | None:
        held = self._held.get(name)
        if held is not None and held[0] != owner and held[1] >= self.now:
            return None
        fence = 1 if held is None else held[2] + (held[0] != owner or held[1] < self.now)
        self._held[name] = (owner, self.now + ttl, fence)
        return fence

    async def resign(self, name: str, owner: str) -> None:
        held = self._held.get(name)
        if held is not None and held[0] == owner:
            self._held[name] = (owner, -1.0, held[2])


def _requests(url: str) -> Counter[str]:
    requests = state_of(url).requests
    return Counter({r: requests[r] for r in ("list_inferences", "get_inference")})


@contextlib.asynccontextmanager
async def _replicas(
    server: str, tmp_path: Path, leases: _Leases, names: str
) -> AsyncIterator[dict[str, EsdBackend]]:
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(SqliteJobStore(tmp_path / "shared.sqlite3"))
        backends = {}
        for name in names:
            esd = await stack.enter_async_context(EsdBackend(esd_config(server, page_size=50)))
            esd.share_scans(store, leases, name)
            backends[name] = esd
        yield backends


async def _submit(esd: EsdBackend, count: int) -> list[str]:
    submitted = await asyncio.gather(
        *(esd.submit(f"bot{n}", params(seed=n), png(32, 32), None) for n in range(count))
    )
    return [s.backend_id for s in submitted]


async def _round(
    replicas: dict[str, EsdBackend], ids: dict[str, list[str]]
) -> dict[str, dict[str, BackendStatus]]:
    """Each replica's poller asks about its jobs once, one replica after the other."""
    return {
        name: await esd.statuses([target(i) for i in ids[name]]) for name, esd in replicas.items()
    }


async def test_one_replica_scans_for_all_and_the_others_read_what_it_found(
    server: str, tmp_path: Path
) -> None:
    leases = _Leases()
    async with _replicas(server, tmp_path, leases, "abc") as replicas:
        ids = {name: await _submit(esd, 40) for name, esd in replicas.items()}
        before = _requests(server)
        # a leads and scans for its own jobs (the oldest: 3 pages of 50); b and c have asked
        # and wait for its next scan.
        first = await _round(replicas, ids)
        assert len(first["a"]) == 40 and first["b"] == first["c"] == {}
        assert _requests(server) - before == Counter(list_inferences=3)
        # Its next scan covers everyone's jobs, in as many pages as its own needed.
        second = await _round(replicas, ids)
        for name in "abc":
            assert set(second[name]) == set(ids[name])
            assert {s.state for s in second[name].values()} == {JobState.INPROGRESS}
        assert _requests(server) - before == Counter(list_inferences=6)

        for job_id in (i for name in "abc" for i in ids[name]):
            await state_of(server).finish(job_id)
        third = await _round(replicas, ids)
        for name in "abc":
            assert set(third[name]) == set(ids[name])
            assert all(s.state.terminal for s in third[name].values())
        # Fetching a result reads the job once (for its result URLs), as on one replica.
        succeeded = [i for i, s in third["b"].items() if s.state is JobState.SUCCEED]
        assert succeeded
        output = await replicas["b"].results(succeeded[0])
        assert output.images
        assert _requests(server) - before == Counter(list_inferences=9, get_inference=1)


async def test_a_replica_that_stops_scanning_hands_the_scan_over(
    server: str, tmp_path: Path
) -> None:
    leases = _Leases()
    async with _replicas(server, tmp_path, leases, "abc") as replicas:
        ids = {name: await _submit(esd, 10) for name, esd in replicas.items()}
        await _round(replicas, ids)
        # a's jobs are over (its poller no longer asks): b and c still wait on a's lease …
        ids["a"] = []
        before = _requests(server)
        waiting = await _round(replicas, ids)
        assert waiting["b"] == waiting["c"] == {}
        assert _requests(server) - before == Counter()
        # … until it runs out (a little after a's next scan was due); then b scans for both.
        leases.now += 10.0
        await _round(replicas, ids)
        taken = await _round(replicas, ids)
        assert set(taken["b"]) == set(ids["b"]) and set(taken["c"]) == set(ids["c"])
        assert _requests(server)["get_inference"] == before["get_inference"]


async def test_a_post_is_answered_once_and_an_old_one_never_passes_for_a_new_read(
    server: str, tmp_path: Path
) -> None:
    # With events flowing the leader scans minutes apart (pages / events_pages_per_second);
    # the others look in the store more often. What it posted once is one read, not one per
    # look: the core's deadlines take an answer for a read made when it asked.
    leases = _Leases()
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(SqliteJobStore(tmp_path / "shared.sqlite3"))
        leader = await stack.enter_async_context(EsdBackend(esd_config(server, page_size=50)))
        follower = await stack.enter_async_context(EsdBackend(esd_config(server, page_size=50)))
        leader.share_scans(store, leases, "a")
        follower.share_scans(store, leases, "b")
        ids = {"a": await _submit(leader, 10), "b": await _submit(follower, 10)}
        replicas = {"a": leader, "b": follower}
        await _round(replicas, ids)  # a scans for itself; b asks
        second = await _round(replicas, ids)  # a scans for both and posts for b
        assert set(second["b"]) == set(ids["b"])
        leader._book._list_interval = 600.0  # from now on, a reads each page 10 min apart
        before = _requests(server)
        for _ in range(3):  # b looks again; a has not scanned since
            again = await _round(replicas, ids)
            assert again["b"] == {}
        assert _requests(server) == before  # waiting for a's next scan, not reading directly
