"""`sdbot`: the command line and the composition root.

It reads the configuration, picks the backend and the adapters whose credentials are set, and
runs the core. This is the one place that knows every concrete class, so the core (`bot/`)
stays free of platform and cloud libraries.

    sdbot run                 every adapter whose credentials are set; the console when none are
    sdbot console             the console adapter, whatever else is configured
    sdbot check               validate the configuration and reach the backend
    sdbot health [--ready]    ask the running bot's /healthz (or /readyz): Docker HEALTHCHECK
    sdbot local-backend …     serve the local preview backend as an ESD-compatible REST API
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from yarl import URL

from adapters.console import ConsoleAdapter, ConsoleSettings, run_console
from adapters.discord.settings import DiscordSettings
from adapters.slack.settings import SlackSettings
from adapters.web.admin import AdminPage
from adapters.web.metrics import (
    Metrics,
    backend_trace,
    chat_trace,
    instrument_backend,
    instrument_chat,
    instrument_store,
)
from adapters.web.server import Readiness, WebServer, WebSettings
from bot.app import BotApp
from bot.clock import SystemClock
from bot.config import Config, Section, Settings, load_settings
from bot.errors import ConfigError, StorageLostError
from bot.logs import setup_logging
from bot.ports import JobStore, SharedReads
from bot.store import SqliteJobStore
from cloud.a1111.backend import A1111Settings
from cloud.esd.config import EsdSettings
from cloud.local import LocalBackend, LocalBackendConfig, LocalSettings
from stores.postgres import PostgresSettings

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from adapters.discord import DiscordCore
    from adapters.slack import SlackCore
    from bot.ports import Backend, ChatAdapter, ChatConnection

# Where discord.py sends its REST requests (discord/http.py `Route.BASE`).
DISCORD_API = URL("https://discord.com/api/v10")

_LOGGER = logging.getLogger("sdbot")


class RunSettings(Section):
    """The composition root's own setting: which backend runs the jobs (`BACKENDS`)."""

    # Default: "esd" when ESD_API_URL is set; else "local" for the console. With chat
    # credentials set, it must be chosen (`choose_backend`).
    backend: str | None = None


def _local(settings: Settings, metrics: Metrics | None) -> Backend:
    return LocalBackend(LocalBackendConfig.from_settings(settings[LocalSettings], settings.core))


def _esd(settings: Settings, metrics: Metrics | None) -> Backend:
    from cloud.esd import EsdBackend

    esd = settings[EsdSettings]
    traces = [backend_trace(metrics, URL(esd.esd_api_url or ""))] if metrics else []
    return EsdBackend.from_config(esd, settings.core, trace_configs=traces)


def _a1111(settings: Settings, metrics: Metrics | None) -> Backend:
    from cloud.a1111 import A1111Backend

    a1111 = settings[A1111Settings]
    traces = [backend_trace(metrics, URL(a1111.a1111_api_url or ""))] if metrics else []
    return A1111Backend.from_config(a1111, settings.core, trace_configs=traces)


# The backends `backend` may name: each builds itself from its settings section.
BACKENDS: dict[str, Callable[[Settings, Metrics | None], Backend]] = {
    "local": _local,
    "esd": _esd,
    "a1111": _a1111,
}
# Every settings section: the core's, the composition root's, each adapter's and backend's.
SECTIONS: tuple[type[Section], ...] = (
    Config,
    RunSettings,
    WebSettings,
    ConsoleSettings,
    DiscordSettings,
    SlackSettings,
    LocalSettings,
    EsdSettings,
    A1111Settings,
    PostgresSettings,
)


def load_config(
    environ: Mapping[str, str] | None = None, path: Path | str | None = None
) -> Settings:
    """Every section from the TOML file and the environment, with the backend chosen."""
    settings = load_settings(SECTIONS, environ, path)
    return settings.replace(RunSettings(backend=choose_backend(settings)))


def choose_backend(settings: Settings) -> str:
    """The backend to run on: the one `backend` names, else ESD when its URL is set, else the
    local one, which must be chosen on purpose when chat credentials are set."""
    backend = settings[RunSettings].backend
    esd_url = settings[EsdSettings].esd_api_url
    if backend is not None:
        if backend not in BACKENDS:
            *others, last = (f"`{n}`" for n in BACKENDS)
            names = f"{', '.join(others)} or {last}"
            raise ConfigError(f"SDBOT_BACKEND must be {names}, got {backend!r}")
        if backend == "esd" and not esd_url:
            raise ConfigError("SDBOT_BACKEND is `esd` but ESD_API_URL is not set")
        if backend == "a1111" and not settings[A1111Settings].a1111_api_url:
            raise ConfigError("SDBOT_BACKEND is `a1111` but A1111_API_URL is not set")
        return backend
    if esd_url:
        return "esd"
    if settings[DiscordSettings].discord_token or settings[SlackSettings].slack_bot_token:
        # The preview engine posts pictures that are not Stable Diffusion: it never reaches
        # real people unless someone chose it.
        raise ConfigError(
            "chat credentials are set (DISCORD_TOKEN / SLACK_BOT_TOKEN) but no backend is "
            'chosen: set ESD_API_URL (and ESD_API_KEY) to run on ESD, `backend = "a1111"` '
            'with A1111_API_URL for your own WebUI, or `backend = "local"` '
            "(SDBOT_BACKEND=local) to post the preview engine's pictures, which are not "
            "Stable Diffusion, on purpose"
        )
    return "local"


def make_backend(settings: Settings, metrics: Metrics | None = None) -> Backend:
    """The backend the configuration names (its HTTP requests counted in `metrics`)."""
    return BACKENDS[settings[RunSettings].backend or "local"](settings, metrics)


class RunStore(JobStore, Protocol):
    """A store `sdbot run` watches: `wait_lost` returns once its data is gone for good."""

    async def wait_lost(self) -> StorageLostError: ...


def make_store(settings: Settings) -> RunStore:
    """PostgreSQL when `database_url` is set (README "Store jobs in PostgreSQL"), else SQLite
    in `data_dir`."""
    url = settings[PostgresSettings].database_url
    if url:
        from stores.postgres import PostgresJobStore

        return PostgresJobStore(url)
    config = settings.core
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteJobStore(config.data_dir / "sdbot.sqlite3")


def make_app(
    settings: Settings, metrics: Metrics | None = None, store: JobStore | None = None
) -> BotApp:
    """The core on the configured backend; with `metrics`, its ports are measured."""
    config = settings.core
    store = store or make_store(settings)
    backend = make_backend(settings, metrics)
    redaction = settings.redaction()
    if metrics is None:
        app = BotApp(config, backend=backend, store=store, redaction=redaction)
    else:
        clock = SystemClock()
        app = BotApp(
            config,
            backend=instrument_backend(backend, metrics),
            store=instrument_store(store, metrics, clock.now),
            clock=clock,
            observer=metrics,
            redaction=redaction,
        )
        metrics.jobs_in_flight.set_function(lambda: app.runner.in_flight)
        leases = app.runner.leases
        metrics.watch_ownership(
            lambda: leases.held, lambda: leases.stale_writes, lambda: app.runner.parked
        )
    if settings[RunSettings].backend == "esd":
        from cloud.esd import EsdBackend

        if isinstance(backend, EsdBackend):
            # Completion events end a job on the spot: its driver hears at once.
            backend.notify_changes(app.poller.nudge)
            if isinstance(store, SharedReads) and not isinstance(store, SqliteJobStore):
                # Replicas share the store: list scans run once across them (one process
                # owns a SQLite file, so there it scans alone, as always).
                backend.share_scans(store, store, config.replica)
            if metrics is not None and backend.events is not None:
                backend.events.observe_lag(metrics.event_lag.observe)
    return app


class _Operations:
    """The operators' side of a run: metrics, readiness and the web endpoints."""

    def __init__(self, settings: Settings) -> None:
        self.web_settings = settings[WebSettings]
        self.metrics = Metrics()
        self.store = make_store(settings)
        self.app = make_app(settings, self.metrics, self.store)
        self.readiness = Readiness(self.store, self.app.backend, self.metrics)
        token = self.web_settings.admin_token
        admin = AdminPage(self.app, self.store, token).routes() if token else []
        self.web = WebServer(self.metrics, self.readiness, admin)
        self.connected: dict[str, bool] = {}

    def watch(self, name: str) -> None:
        self.connected[name] = False
        self.readiness.watch(name, lambda: self.connected[name])

    def disconnected(self, name: str) -> Callable[[object], None]:
        """A done-callback marking adapter `name` not connected."""

        def mark(_done: object) -> None:
            self.connected[name] = False

        return mark

    async def serve(self, *, mounted: bool) -> None:
        """Serve the endpoints on their own port unless Slack's app carries them."""
        port = self.web_settings.metrics_port
        if port is None and not mounted:
            port = self.web_settings.http_port
        if port is None:
            return
        try:
            await self.web.serve("0.0.0.0", port)  # noqa: S104 - probes and scrapers come from outside
        except OSError as exc:
            raise ConfigError(f"cannot listen on port {port}: {exc.strerror}") from None


def discord_core(app: BotApp) -> DiscordCore:
    """The parts of the core the Discord adapter is given."""
    from adapters.discord import DiscordCore

    return DiscordCore(
        dispatcher=app.dispatcher,
        claims=app.store,
        catalog=app.catalog,
        clock=app.clock,
        max_bytes=app.config.max_bytes,
        state_dir=app.config.data_dir,
    )


def slack_core(app: BotApp) -> SlackCore:
    """The parts of the core the Slack adapter is given."""
    from adapters.slack import SlackCore

    return SlackCore(dispatcher=app.dispatcher, claims=app.store, jobs=app.store)


def chat_adapters(
    app: BotApp, settings: Settings, ops: _Operations | None = None
) -> list[tuple[ChatAdapter, ChatConnection]]:
    """The chat adapters whose credentials are set (measured and served with `ops`)."""
    found: list[tuple[ChatAdapter, ChatConnection]] = []
    discord = settings[DiscordSettings]
    slack = settings[SlackSettings]
    if discord.discord_token:
        from adapters.discord import DiscordAdapter

        discord_trace = chat_trace(ops.metrics, "discord", DISCORD_API) if ops else None
        discord_adapter = DiscordAdapter(discord_core(app), discord, http_trace=discord_trace)
        found.append((discord_adapter, discord_adapter))
    if slack.slack_bot_token and (slack.slack_app_token or slack.slack_signing_secret):
        from adapters.slack import SlackAdapter
        from adapters.slack.client import api_base_url

        slack_adapter = SlackAdapter(
            slack_core(app),
            slack,
            http_port=settings[WebSettings].http_port,
            trace_configs=(
                [chat_trace(ops.metrics, "slack", URL(api_base_url(slack.slack_api_url)))]
                if ops
                else []
            ),
            web_routes=ops.web.routes() if ops and slack.http_mode else (),
        )
        found.append((slack_adapter, slack_adapter))
    elif slack.slack_bot_token:
        raise ConfigError(
            "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) nor "
            "SLACK_SIGNING_SECRET (HTTP mode) is"
        )
    return found


async def _console(settings: Settings) -> int:
    ops = _Operations(settings)
    app = ops.app
    adapter = ConsoleAdapter(settings[ConsoleSettings].output_dir)
    app.add_adapter(instrument_chat(adapter, ops.metrics))
    if sys.stdin.isatty():
        print("sdbot console — type `help`, Ctrl-D to quit", file=sys.stderr)
    async with app:
        # The console serves the operators' endpoints only on an explicit metrics_port.
        if ops.web_settings.metrics_port is not None:
            await ops.serve(mounted=True)
        console = asyncio.create_task(
            run_console(adapter, app.dispatcher, app.runner.wait_idle), name="sdbot-console"
        )
        lost = asyncio.create_task(_store_lost(ops.store), name="sdbot-store-watch")
        try:
            done, _ = await asyncio.wait({console, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (console, lost):
                task.cancel()
            await asyncio.gather(console, lost, return_exceptions=True)
            await ops.web.aclose()
        for finished in done:
            finished.result()  # a lost job database ends the run with its error
    return 0


async def _store_lost(store: RunStore) -> None:
    """Raise `StorageLostError` once the job database is found deleted or replaced: every job
    acknowledged from then on would be lost at the next start, so the bot stops instead."""
    raise await store.wait_lost()


async def _run(settings: Settings) -> int:
    ops = _Operations(settings)
    app = ops.app
    adapters = chat_adapters(app, settings, ops)
    if not adapters:
        _LOGGER.info("no chat credentials set: starting the console")
        return await _console(settings)
    for adapter, _ in adapters:
        app.add_adapter(instrument_chat(adapter, ops.metrics))
        ops.watch(adapter.platform)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    started: list[ChatConnection] = []
    try:
        async with app:
            try:
                await ops.serve(
                    mounted=settings[SlackSettings].http_mode
                    and any(a.platform == "slack" for a, _ in adapters)
                )
                for adapter, connection in adapters:
                    await connection.start()
                    started.append(connection)
                    ops.connected[adapter.platform] = True
                platforms = ", ".join(a.platform for a, _ in adapters)
                _LOGGER.info("sdbot is running on %s", platforms)
                closed = [
                    asyncio.create_task(c.wait_closed(), name="sdbot-adapter-closed")
                    for c in started
                ]
                for (adapter, _), wait in zip(adapters, closed, strict=True):
                    wait.add_done_callback(ops.disconnected(adapter.platform))
                waits: list[asyncio.Task[Any]] = [
                    asyncio.create_task(stopping.wait(), name="sdbot-signal"),
                    asyncio.create_task(_store_lost(ops.store), name="sdbot-store-watch"),
                    *closed,
                ]
                try:
                    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
                    await asyncio.gather(*waits, return_exceptions=True)
                for finished in done:
                    # A refused connection or a lost job database ends the run with its error.
                    finished.result()
            finally:
                # Stop taking new requests first; the adapters' clients stay usable while the
                # core stops its jobs (they resume on the next start).
                for connection in reversed(started):
                    await connection.stop()
    finally:
        for connection in reversed(started):
            await connection.aclose()
        await ops.web.aclose()
    return 0


async def _check(settings: Settings) -> int:
    """The backend, then the store (with the replicas that share it)."""
    backend_code = await _check_backend(settings)
    return max(backend_code, await _check_store(settings))


# Replicas that reported within this long count as running (`sdbot check`).
RECENT_REPLICAS = timedelta(minutes=10)


async def _check_store(settings: Settings) -> int:
    store = make_store(settings)
    try:
        await store.start()
    except ConfigError as exc:
        print(f"store: FAILED: {exc}")
        return 1
    try:
        version = await store.schema_version()
        now = datetime.now(UTC)
        seen = await store.replicas(now - RECENT_REPLICAS)
    finally:
        await store.aclose()
    print(f"store: {store.describe}, schema version {version}")
    minutes = int(RECENT_REPLICAS.total_seconds() // 60)
    print(f"replicas seen in the last {minutes} minutes: {len(seen)}")
    for replica in seen:
        ago = max(0.0, (now - replica.seen_at).total_seconds())
        print(
            f"replica {replica.id}: seen {ago:.0f} s ago, {replica.jobs} job(s) held, "
            f"{replica.stale_writes} stale write(s) refused, up since "
            f"{replica.started_at.isoformat(timespec='seconds')}"
        )
    return 0


async def _check_backend(settings: Settings) -> int:
    backend_name = settings[RunSettings].backend
    if backend_name == "esd":
        from cloud.esd import check_backend

        return await check_backend(settings[EsdSettings], settings.core, sys.stdout)
    if backend_name == "a1111":
        from cloud.a1111 import check_webui

        return await check_webui(settings[A1111Settings], settings.core, sys.stdout)
    backend = make_backend(settings)
    await backend.start()
    try:
        endpoints = await backend.endpoints()
        models = await backend.models()
    finally:
        await backend.aclose()
    print("configuration: OK (local backend, no account needed)")
    for endpoint in endpoints:
        print(f"endpoint {endpoint.name}: {endpoint.status} ({endpoint.type})")
    print(f"models: {len(models)}")
    return 0


def _health(web: WebSettings, *, ready: bool) -> int:
    """Exit 0 when the running bot's `/healthz` (`/readyz`) on this machine answers 200."""
    port = web.metrics_port or web.http_port
    url = f"http://127.0.0.1:{port}/{'readyz' if ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            print(response.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"))
    except OSError as exc:
        print(f"sdbot: nothing answers on port {port}: {exc}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["local-backend"]:
        # The server has its own flags (latency, faults, …); it parses them itself.
        from cloud.esd_server import main as serve_local_backend

        return serve_local_backend(args_list[1:])
    parser = argparse.ArgumentParser(
        prog="sdbot",
        description="Stable Diffusion img2img, inpaint and interrogate for Discord, Slack and "
        "the console.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run every adapter whose credentials are set (console if none)")
    sub.add_parser("console", help="run the console adapter")
    sub.add_parser("check", help="validate the configuration and reach the backend")
    health = sub.add_parser("health", help="exit 0 when the running bot's /healthz answers")
    health.add_argument("--ready", action="store_true", help="ask /readyz instead")
    sub.add_parser(
        "local-backend", help="serve the local backend as an ESD-compatible REST API (--help)"
    )
    args = parser.parse_args(args_list)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"sdbot: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "health":
        return _health(config[WebSettings], ready=args.ready)
    core = config.core
    setup_logging(
        core.log_level,
        config.redaction(),
        json_lines=core.log_format == "json",
        replica=core.replica,
    )
    command = {"run": _run, "console": _console, "check": _check}[args.command or "run"]
    try:
        return asyncio.run(command(config))
    except ConfigError as exc:
        print(f"sdbot: configuration error: {exc}", file=sys.stderr)
        return 2
    except StorageLostError as exc:
        print(f"sdbot: stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
