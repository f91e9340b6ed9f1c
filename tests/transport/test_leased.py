"""`LeasedConnector`: a job driver's requests leave only under its job's lease.

A loopback server counts the requests that reached it; the leases are a real SQLite store's,
the replica's clock a hand-moved one (a frozen process is a clock that jumped).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web
from store_kit import held_lease, make_job

from bot.leases import SEND_MARGIN, NotHeld
from bot.model import Platform
from bot.store import SqliteJobStore
from transport.leased import LeasedConnector, LeasedRequest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

TTL = 30.0
SLACK = Platform("slack")


class Server:
    """Counts requests by path; `/slow` answers once `release` is set."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        if request.path == "/slow":
            await self.release.wait()
        return web.Response(text="ok")

    async def __aenter__(self) -> Server:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    async with SqliteJobStore(tmp_path / "jobs.sqlite3") as opened:
        await opened.insert(make_job("j1", platform=SLACK))
        yield opened


async def _get(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as answer:
        await answer.read()


async def test_a_drivers_request_leaves_while_it_holds_the_lease_and_not_once_taken_over(
    store: SqliteJobStore,
) -> None:
    lease = await held_lease(store, "j1", TTL)
    clock, ownership = lease.clock, lease.ownership
    async with Server() as server, aiohttp.ClientSession(connector=LeasedConnector()) as http:
        with ownership.posting("j1", lease.fence):
            await _get(http, server.url + "/post")
            # Replica "b" takes the job (on SQLite a start takes every lease); "a" was frozen
            # for a whole lease: its check renews, is refused, and nothing leaves.
            await store.claim_jobs("b", TTL, 10, [SLACK], own=True)
            clock.at += TTL
            with pytest.raises(NotHeld):
                await _get(http, server.url + "/post")
        # Outside a driver nothing is checked.
        await _get(http, server.url + "/post")
    assert server.hits == {"/post": 2}
    assert ownership.fence("j1") is None


async def test_a_request_that_waited_for_a_connection_past_its_lease_does_not_leave(
    store: SqliteJobStore,
) -> None:
    lease = await held_lease(store, "j1", TTL)
    clock, ownership = lease.clock, lease.ownership
    connector = LeasedConnector(limit=1)
    async with Server() as server, aiohttp.ClientSession(connector=connector) as http:
        busy = asyncio.create_task(_get(http, server.url + "/slow"))  # holds the one connection
        while not server.hits.get("/slow"):
            await asyncio.sleep(0.01)

        async def post() -> None:
            with ownership.posting("j1", lease.fence):
                await _get(http, server.url + "/post")

        waiting = asyncio.create_task(post())
        await asyncio.sleep(0.05)  # it passed the first check and waits for the connection
        clock.at += TTL * (1 - SEND_MARGIN)  # the process stood still meanwhile
        server.release.set()
        await busy
        with pytest.raises(NotHeld):
            await waiting
    assert "/post" not in server.hits
    assert ownership.fence("j1") is None  # let go: the job is taken over once it expires


async def test_a_lease_running_short_is_renewed_before_the_request_leaves(
    store: SqliteJobStore,
) -> None:
    lease = await held_lease(store, "j1", TTL)
    clock, ownership = lease.clock, lease.ownership
    clock.at += TTL * 0.9  # the renewals were late, but nobody took the job
    async with Server() as server, aiohttp.ClientSession(connector=LeasedConnector()) as http:
        with ownership.posting("j1", lease.fence):
            await _get(http, server.url + "/post")
    assert server.hits == {"/post": 1}
    assert ownership.fence("j1") == lease.fence


async def test_a_body_whose_write_comes_after_the_lease_ran_out_is_not_sent(
    store: SqliteJobStore,
) -> None:
    # aiohttp writes a request with a body in a task of its own, a turn of the event loop after
    # the connection is in hand: a process frozen then must not send it once woken.
    lease = await held_lease(store, "j1", TTL)
    clock, ownership = lease.clock, lease.ownership

    async def frozen(*args: object) -> None:
        clock.at += TTL  # between the headers (buffered) and the body's write

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(frozen)
    async with (
        Server() as server,
        aiohttp.ClientSession(
            connector=LeasedConnector(), request_class=LeasedRequest, trace_configs=[trace]
        ) as http,
    ):
        with ownership.posting("j1", lease.fence), pytest.raises(NotHeld):
            async with http.post(server.url + "/post", data=b"result") as answer:
                await answer.read()
    assert "/post" not in server.hits
