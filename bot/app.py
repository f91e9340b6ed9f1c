"""`BotApp`: the core's composition and lifecycle.

It wires store → backend → poller → job runner → dispatcher, starts them in that order,
resumes the jobs an earlier run left unfinished, and closes them in reverse. Adapters are added
before `start()` and call into `app.dispatcher`. What backend and store to use is decided by
the caller (`adapters.cli`), so the core never imports a cloud or chat library.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from bot.catalog import Catalog
from bot.clock import SystemClock
from bot.dispatcher import Dispatcher
from bot.jobs import JobRunner
from bot.leases import Leadership
from bot.memory import GcFreezer
from bot.policy import Policy
from bot.poller import Poller
from bot.resolve import Resolver
from bot.retention import RETENTION_LEASE, Retention

if TYPE_CHECKING:
    from types import TracebackType

    from bot.config import Config
    from bot.logs import Redaction
    from bot.model import Platform
    from bot.ports import Backend, ChatAdapter, Clock, JobStore, Observer
    from bot.retry import RetryPolicy

_LOGGER = logging.getLogger(__name__)


class _Closable(Protocol):
    async def aclose(self) -> None: ...


class BotApp:
    """The running core: one store, one backend, any number of adapters."""

    def __init__(
        self,
        config: Config,
        *,
        backend: Backend,
        store: JobStore,
        clock: Clock | None = None,
        backoff: RetryPolicy | None = None,
        observer: Observer | None = None,
        redaction: Redaction | None = None,
    ) -> None:
        """`backoff`: pauses of the job drivers' restarts and backend waits (tests shorten it);
        `redaction`: the configuration's credentials and their shapes (`Settings.redaction`),
        hidden from what users are shown."""
        self.config = config
        self.backend = backend
        self.store = store
        self.clock = clock or SystemClock()
        self._adapters: dict[Platform, ChatAdapter] = {}
        self.poller = Poller(
            backend, interval=config.poll_interval, max_interval=config.poll_max_interval
        )
        self.catalog = Catalog(backend, self.clock)
        self.policy = Policy(config, store, self.clock, self.catalog, self._adapters)
        self.retention = Retention(
            store,
            store,
            self.clock,
            days=config.retention_days,
            leader=Leadership(store, "retention", config.replica, RETENTION_LEASE),
        )
        self.runner = JobRunner(
            config=config,
            store=store,
            images=store,
            leases=store,
            replicas=store,
            backend=backend,
            adapters=self._adapters,
            poller=self.poller,
            resolver=Resolver(config, self.catalog),
            policy=self.policy,
            clock=self.clock,
            backoff=backoff,
            observer=observer,
            redaction=redaction,
        )
        self.dispatcher = Dispatcher(
            runner=self.runner,
            store=store,
            images=store,
            backend=backend,
            catalog=self.catalog,
            policy=self.policy,
            clock=self.clock,
            adapters=self._adapters,
            observer=observer,
            redaction=redaction,
        )
        self.gc = GcFreezer(lambda: self.runner.in_flight > 0)
        self._started = False
        self._closed = False

    def add_adapter(self, adapter: ChatAdapter) -> None:
        """Register the adapter that delivers jobs of its platform (before `start`)."""
        if self._started:
            raise RuntimeError("add adapters before starting the app")
        self._adapters[adapter.platform] = adapter

    async def start(self) -> None:
        """Start everything in dependency order; on failure, close what was started."""
        if self._started or self._closed:
            raise RuntimeError("BotApp can be started once")
        self._started = True
        started: list[_Closable] = []
        try:
            await self.store.start()
            started.append(self.store)
            await self.backend.start()
            started.append(self.backend)
            await self.poller.start()
            started.append(self.poller)
            await self.retention.start()
            started.append(self.retention)
            resumed = await self.runner.resume()
            if resumed:
                _LOGGER.info("resumed %d unfinished job(s)", resumed)
            await self.gc.start()  # after start-up: what it made is frozen (bot.memory)
            started.append(self.gc)
        except BaseException:
            await self._close(started)
            raise

    async def aclose(self) -> None:
        """Stop job drivers (their jobs resume next start), then poller, backend, store."""
        if self._closed:
            return
        await self.runner.aclose()
        await self._close([self.store, self.backend, self.poller, self.retention, self.gc])

    async def _close(self, started: list[_Closable]) -> None:
        self._closed = True
        for component in reversed(started):
            try:
                await component.aclose()
            except Exception:
                _LOGGER.exception("closing %s failed", type(component).__name__)

    async def __aenter__(self) -> BotApp:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
