"""`/healthz`, `/readyz` and `/metrics` over real HTTP: the store's writability, the backend's
reachability (the ESD client against the ESD-compatible server, then without it) and adapters."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from adapters.web.metrics import Metrics, backend_trace, instrument_backend
from adapters.web.server import Readiness, WebServer
from bot.store import SqliteJobStore
from cloud.esd import EsdBackend
from cloud.esd_server import running_server
from cloud.local import LocalBackend, LocalBackendConfig
from tests.esd.esd_kit import esd_config, server_config


async def get(port: int, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        body = await response.json() if path != "/metrics" else await response.text()
        return response.status, body


async def test_readyz_turns_unready_while_the_store_cannot_write(tmp_path: Path) -> None:
    metrics = Metrics()
    db = tmp_path / "sdbot.sqlite3"
    backend = instrument_backend(LocalBackend(LocalBackendConfig(delay=0.0)), metrics)
    async with SqliteJobStore(db) as store:
        web = WebServer(metrics, Readiness(store, backend, metrics))
        port = await web.serve("127.0.0.1", 0)
        try:
            assert await get(port, "/healthz") == (200, {"status": "ok"})
            assert await get(port, "/readyz") == (
                200,
                {"ready": True, "checks": {"store": "ok", "backend": "ok"}},
            )
            # Another process holds the database's write lock (a stuck writer, a backup).
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                status, body = await get(port, "/readyz")
                assert status == 503
                assert body["checks"]["store"] == "not writable"
                assert body["checks"]["backend"] == "ok"
                assert (await get(port, "/healthz"))[0] == 200  # alive all the same
            finally:
                other.execute("ROLLBACK")
                other.close()
            assert (await get(port, "/readyz"))[0] == 200
        finally:
            await web.aclose()
    # A closed store is not writable either.
    assert (await Readiness(store, backend, metrics).check())["store"] == "not writable"


async def test_readyz_turns_unready_when_the_backend_is_unreachable(tmp_path: Path) -> None:
    metrics = Metrics()
    async with running_server(server_config()) as url:
        base = URL(str(url))
        esd = EsdBackend(
            esd_config(str(url), catalog_ttl=0.001), trace_configs=[backend_trace(metrics, base)]
        )
        backend = instrument_backend(esd, metrics)
        await backend.start()
    # The server is gone now; the client started while it was there.
    try:
        async with SqliteJobStore(tmp_path / "sdbot.sqlite3") as store:
            readiness = Readiness(store, backend, metrics, fresh=0.0)
            readiness.watch("slack", lambda: True)
            web = WebServer(metrics, readiness)
            port = await web.serve("127.0.0.1", 0)
            try:
                status, body = await get(port, "/readyz")
                assert status == 503
                assert body["checks"]["store"] == "ok"
                assert body["checks"]["slack"] == "ok"
                assert body["checks"]["backend"].startswith("unreachable (BackendUnavailableError")
                assert str(base.port) not in body["checks"]["backend"]  # no URL leaks
                status, text = await get(port, "/metrics")
                assert status == 200
            finally:
                await web.aclose()
    finally:
        await backend.aclose()
    ping_ok = metrics.registry.get_sample_value(
        "sdbot_backend_http_requests_total", {"method": "GET", "route": "/ping", "status": "200"}
    )
    assert ping_ok is not None and ping_ok >= 1
    refused = metrics.registry.get_sample_value(
        "sdbot_backend_http_requests_total",
        {"method": "GET", "route": "/endpoints", "status": "error"},
    )
    assert refused is not None and refused >= 1
    assert 'route="/endpoints",status="error"' in text
    errors = metrics.registry.get_sample_value(
        "sdbot_backend_errors_total", {"method": "endpoints", "error": "BackendUnavailableError"}
    )
    assert errors == 1


async def test_an_adapter_that_disconnected_is_not_ready(tmp_path: Path) -> None:
    metrics = Metrics()
    backend = instrument_backend(LocalBackend(LocalBackendConfig(delay=0.0)), metrics)
    connected = {"discord": True}
    async with SqliteJobStore(tmp_path / "sdbot.sqlite3") as store:
        readiness = Readiness(store, backend, metrics)
        readiness.watch("discord", lambda: connected["discord"])
        assert (await readiness.check())["discord"] == "ok"
        connected["discord"] = False
        assert (await readiness.check())["discord"] == "not connected"
