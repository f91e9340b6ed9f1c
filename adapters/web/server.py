"""The operators' HTTP endpoints: `/metrics`, `/healthz`, `/readyz` (and `/admin`, see
`adapters.web.admin`), as aiohttp routes.

They are mounted on Slack's HTTP-mode app when that runs (one port for both), else served by
`WebServer.serve` on `SDBOT_HTTP_PORT`, or on `SDBOT_METRICS_PORT` when that is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Annotated, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import model_validator

from bot.config import Secret, Section
from bot.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from adapters.web.metrics import Metrics
    from bot.ports import Backend

_LOGGER = logging.getLogger(__name__)


class WebSettings(Section):
    """The operators' endpoints' settings section."""

    # Slack HTTP mode listens here at /slack/events; /metrics, /healthz, /readyz (and /admin)
    # are served on it while chat adapters run (on Slack's HTTP-mode server when it runs) …
    http_port: int = 3000
    # … or on this port instead, in every mode (the console too), when it is set.
    metrics_port: int | None = None
    # Turns the /admin page on (adapters.web.admin checks its length).
    admin_token: Annotated[str | None, Secret("SDBOT_ADMIN_TOKEN")] = None

    @model_validator(mode="after")
    def _check(self) -> WebSettings:
        if not 0 < self.http_port < 65536:
            raise ConfigError("SDBOT_HTTP_PORT must be a port number (1-65535)")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError("SDBOT_METRICS_PORT must be a port number (1-65535)")
        return self


class _Writable(Protocol):
    async def writable(self) -> bool: ...


class Readiness:
    """`/readyz`: the store takes a write, every chat adapter is connected, and the backend
    answered within the last `fresh` seconds (else it is asked for its endpoints now, for at
    most `timeout` seconds)."""

    def __init__(
        self,
        store: _Writable,
        backend: Backend,
        metrics: Metrics,
        *,
        fresh: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        self._store = store
        self._backend = backend
        self._metrics = metrics
        self._fresh = fresh
        self._timeout = timeout
        self._adapters: dict[str, Callable[[], bool]] = {}
        self._lock = asyncio.Lock()  # one probe at a time, however often probes come

    def watch(self, name: str, connected: Callable[[], bool]) -> None:
        """Count adapter `name` as ready while `connected()` is true."""
        self._adapters[name] = connected

    async def check(self) -> dict[str, str]:
        """Each check's outcome: "ok" or why not."""
        async with self._lock:
            checks = {"store": "ok" if await self._store.writable() else "not writable"}
            checks["backend"] = await self._backend_check()
            for name, connected in self._adapters.items():
                checks[name] = "ok" if connected() else "not connected"
            return checks

    async def _backend_check(self) -> str:
        answered = self._metrics.backend_answered
        if answered is not None and time.monotonic() - answered < self._fresh:
            return "ok"
        try:
            # The backend is the instrumented one: a success records a fresh answer.
            await asyncio.wait_for(self._backend.endpoints(), self._timeout)
        except TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as exc:
            # The class and the short text only: full messages may carry URLs.
            short = getattr(exc, "short", "")
            return f"unreachable ({type(exc).__name__}{': ' + short if short else ''})"
        return "ok"


class WebServer:
    """The routes, and a server of their own when Slack's app does not carry them."""

    def __init__(
        self, metrics: Metrics, readiness: Readiness, extra: Sequence[web.RouteDef] = ()
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._extra = tuple(extra)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self._metrics_page),
            web.get("/healthz", self._healthz),
            web.get("/readyz", self._readyz),
            *self._extra,
        ]

    async def serve(self, host: str, port: int) -> int:
        """Listen on `host:port` (0 = any free port); return the bound port."""
        app = web.Application()
        app.add_routes(self.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            await self.aclose()
            raise
        bound = runner.addresses[0] if runner.addresses else None
        self.port = int(bound[1]) if bound else port
        _LOGGER.info("operators' HTTP endpoints on port %s", self.port)
        return self.port

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = await self._readiness.check()
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)
