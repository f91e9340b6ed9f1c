"""`sdbot`: the command line and the composition root.

It reads the configuration, picks the backend and the adapters whose credentials are set, and
runs the core. This is the one place that knows every concrete class, so the core (`bot/`)
stays free of platform and cloud libraries.

    sdbot run        every adapter whose credentials are set; the console when none are
    sdbot console    the console adapter, whatever else is configured
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from adapters.console import ConsoleAdapter, run_console
from bot.app import BotApp
from bot.config import Config, load_config
from bot.errors import ConfigError
from bot.logs import setup_logging
from bot.store import SqliteJobStore
from cloud.local import LocalBackend, LocalBackendConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bot.ports import Backend

_LOGGER = logging.getLogger("sdbot")


def make_backend(config: Config) -> Backend:
    """The backend the configuration names."""
    if config.backend == "local":
        return LocalBackend(
            LocalBackendConfig(
                delay=config.local_delay,
                models_dir=config.local_models_dir,
                state_dir=config.data_dir / "local-backend",
            )
        )
    raise ConfigError(
        "SDBOT_BACKEND=esd is not available in this build yet; use SDBOT_BACKEND=local"
    )


def make_app(config: Config) -> BotApp:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteJobStore(config.data_dir / "sdbot.sqlite3")
    return BotApp(config, backend=make_backend(config), store=store)


async def _console(config: Config) -> int:
    app = make_app(config)
    adapter = ConsoleAdapter(config.output_dir)
    app.add_adapter(adapter)
    if sys.stdin.isatty():
        print("sdbot console — type `help`, Ctrl-D to quit", file=sys.stderr)
    async with app:
        await run_console(app, adapter)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sdbot",
        description="Stable Diffusion img2img, inpaint and interrogate for Discord, Slack and "
        "the console.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run every adapter whose credentials are set (console if none)")
    sub.add_parser("console", help="run the console adapter")
    args = parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"sdbot: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.secrets.values(), json_lines=config.log_format == "json")
    command = args.command or "run"
    try:
        if command in ("run", "console"):
            return asyncio.run(_console(config))
    except ConfigError as exc:
        print(f"sdbot: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {command}")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    raise SystemExit(main())
