"""`sdbot`: the command line and the composition root.

It reads the configuration, picks the backend and the adapters whose credentials are set, and
runs the core. This is the one place that knows every concrete class, so the core (`bot/`)
stays free of platform and cloud libraries.

    sdbot run                 every adapter whose credentials are set; the console when none are
    sdbot console             the console adapter, whatever else is configured
    sdbot check               validate the configuration and reach the backend
    sdbot local-backend …     serve the local preview backend as an ESD-compatible REST API
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING, Protocol

from adapters.console import ConsoleAdapter, run_console
from bot.app import BotApp
from bot.config import Config, load_config
from bot.errors import ConfigError
from bot.logs import setup_logging
from bot.store import SqliteJobStore
from cloud.local import LocalBackend, LocalBackendConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bot.ports import Backend, ChatAdapter

_LOGGER = logging.getLogger("sdbot")


class _Connected(Protocol):
    """A chat adapter that holds a connection of its own (Discord, Slack).

    `start` connects; `wait_closed` returns when the connection has ended for good (raising
    `ConfigError` when the platform refused it); `stop` stops taking new requests but keeps the
    platform client usable; `aclose` releases everything.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def wait_closed(self) -> None: ...

    async def aclose(self) -> None: ...


def make_backend(config: Config) -> Backend:
    """The backend the configuration names."""
    if config.backend == "esd":
        from cloud.esd import EsdBackend

        return EsdBackend.from_config(config)
    if config.backend == "a1111":
        from cloud.a1111 import A1111Backend

        return A1111Backend.from_config(config)
    return LocalBackend(
        LocalBackendConfig(
            delay=config.local_delay,
            models_dir=config.local_models_dir,
            state_dir=config.data_dir / "local-backend",
        )
    )


def make_app(config: Config) -> BotApp:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteJobStore(config.data_dir / "sdbot.sqlite3")
    backend = make_backend(config)
    app = BotApp(config, backend=backend, store=store)
    if config.backend == "esd":
        from cloud.esd import EsdBackend

        if isinstance(backend, EsdBackend):
            # Completion events end a job on the spot: its driver hears at once.
            backend.notify_changes(app.poller.nudge)
    return app


def chat_adapters(app: BotApp, config: Config) -> list[tuple[ChatAdapter, _Connected]]:
    """The chat adapters whose credentials are set."""
    found: list[tuple[ChatAdapter, _Connected]] = []
    secrets = config.secrets
    if secrets.discord_token:
        from adapters.discord import DiscordAdapter

        discord_adapter = DiscordAdapter(app, config)
        found.append((discord_adapter, discord_adapter))
    if secrets.slack_bot_token and (secrets.slack_app_token or secrets.slack_signing_secret):
        from adapters.slack import SlackAdapter

        slack_adapter = SlackAdapter(app, config)
        found.append((slack_adapter, slack_adapter))
    elif secrets.slack_bot_token:
        raise ConfigError(
            "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) nor "
            "SLACK_SIGNING_SECRET (HTTP mode) is"
        )
    return found


async def _console(config: Config) -> int:
    app = make_app(config)
    adapter = ConsoleAdapter(config.output_dir)
    app.add_adapter(adapter)
    if sys.stdin.isatty():
        print("sdbot console — type `help`, Ctrl-D to quit", file=sys.stderr)
    async with app:
        await run_console(app, adapter)
    return 0


async def _run(config: Config) -> int:
    app = make_app(config)
    adapters = chat_adapters(app, config)
    if not adapters:
        _LOGGER.info("no chat credentials set: starting the console")
        return await _console(config)
    for adapter, _ in adapters:
        app.add_adapter(adapter)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)
    started: list[_Connected] = []
    try:
        async with app:
            try:
                for _, connection in adapters:
                    await connection.start()
                    started.append(connection)
                platforms = ", ".join(a.platform for a, _ in adapters)
                _LOGGER.info("sdbot is running on %s", platforms)
                waits = [asyncio.create_task(stopping.wait(), name="sdbot-signal")] + [
                    asyncio.create_task(c.wait_closed(), name="sdbot-adapter-closed")
                    for c in started
                ]
                try:
                    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
                    await asyncio.gather(*waits, return_exceptions=True)
                for finished in done:
                    finished.result()  # a refused connection ends the run with its error
            finally:
                # Stop taking new requests first; the adapters' clients stay usable while the
                # core stops its jobs (they resume on the next start).
                for connection in reversed(started):
                    await connection.stop()
    finally:
        for connection in reversed(started):
            await connection.aclose()
    return 0


async def _check(config: Config) -> int:
    if config.backend == "esd":
        from cloud.esd import check_backend

        return await check_backend(config, sys.stdout)
    if config.backend == "a1111":
        from cloud.a1111 import check_webui

        return await check_webui(config, sys.stdout)
    backend = make_backend(config)
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
    sub.add_parser(
        "local-backend", help="serve the local backend as an ESD-compatible REST API (--help)"
    )
    args = parser.parse_args(args_list)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"sdbot: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.secrets.values(), json_lines=config.log_format == "json")
    command = {"run": _run, "console": _console, "check": _check}[args.command or "run"]
    try:
        return asyncio.run(command(config))
    except ConfigError as exc:
        print(f"sdbot: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
