"""`sdbot check`: is the ESD configuration right, and does the deployment answer as it should?

Like the WebUI's "Test Connection", plus what a chat bot needs: the settings are validated,
`GET ping` shows reachability and ESD's version (v1.5 or later; `/ping` checks neither user nor
permissions), `GET endpoints` proves the key and the user, and the endpoints and the number of
Active models per type are printed. Any failure ends with one clear line and a non-zero exit.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from bot.errors import BackendError, ConfigError
from cloud.esd.backend import (
    ALL_MODEL_TYPES,
    MIN_VERSION,
    list_endpoints,
    list_models,
    unsupported_version,
)
from cloud.esd.client import EsdClient
from cloud.esd.config import EsdConfig
from cloud.esd.events import EventQueue
from cloud.esd.payloads import parse_version
from cloud.esd.sagemaker import SageMakerConfig, check_interrogate

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from bot.config import Config
    from cloud.esd.config import EsdSettings

EXIT_OK = 0
EXIT_FAILED = 1  # the deployment is unreachable or refused us
EXIT_CONFIG = 2  # the settings themselves are wrong


def run_check(esd: EsdSettings, config: Config, out: TextIO) -> int:
    """`sdbot check` from synchronous code (the CLI): the exit status."""
    return asyncio.run(check_backend(esd, config, out))


async def check_backend(esd_settings: EsdSettings, config: Config, out: TextIO) -> int:
    """Check the configured backend, writing a short report to `out`; the exit status."""

    def say(line: str) -> None:
        print(line, file=out)

    if not esd_settings.esd_api_url:
        say("backend: local (the embedded preview backend), nothing to check")
        say("set ESD_API_URL and ESD_API_KEY to use an ESD deployment")
        return EXIT_OK
    try:
        # One retry: a check should answer promptly, and a person is waiting for it.
        esd = EsdConfig.from_config(esd_settings, config)
        esd = replace(esd, retry=replace(esd.retry, attempts=1))
    except ConfigError as exc:
        say(f"error: {exc}")
        return EXIT_CONFIG
    say(f"ESD API: {esd.api_url} (user `{esd.username}`)")
    async with EsdClient(esd) as client:
        try:
            ping = await client.ping()
        except BackendError as exc:
            say(f"error: ping failed: {exc.user_message or exc}")
            return EXIT_FAILED
        version = parse_version(ping.version)
        if version is None:
            say(
                "warning: ESD sent no x-api-version header, so its version is unknown "
                "(this bot needs v1.5 or later)"
            )
            say("ping: ok")
        elif version[:2] < MIN_VERSION:
            say(f"error: {unsupported_version(version)}")
            return EXIT_FAILED
        else:
            say(f"ping: ok, ESD v{ping.version}")
        try:
            endpoints = await list_endpoints(client)
        except BackendError as exc:
            say(f"error: listing endpoints failed: {exc.user_message or exc}")
            return EXIT_FAILED
        say(f"endpoints ({len(endpoints)}):")
        for e in endpoints:
            count = "?" if e.instance_count is None else str(e.instance_count)
            say(f"  {e.name}: {e.status}, {e.type}, {e.instance_type or '?'} × {count}")
        if not any(e.in_service for e in endpoints):
            say("warning: no endpoint is InService, so jobs cannot run yet")
        counts = []
        for model_type in ALL_MODEL_TYPES:
            try:
                counts.append(f"{model_type} {len(await list_models(client, (model_type,)))}")
            except BackendError as exc:
                say(f"error: listing {model_type} models failed: {exc.user_message or exc}")
                return EXIT_FAILED
        say("models: " + ", ".join(counts))
        if ping.interrogate:
            say("interrogate: over REST (advertised by the server)")
        else:
            usable, line = await check_interrogate(SageMakerConfig.from_config(esd_settings))
            say(line)
            if not usable:
                return EXIT_FAILED
    events = esd.events_queue_url
    if events and not await _check_events(events, SageMakerConfig.from_config(esd_settings), say):
        return EXIT_FAILED
    say("check passed")
    return EXIT_OK


async def _check_events(url: str, aws: SageMakerConfig, say: Callable[[str], None]) -> bool:
    """The completion-events queue: reachable, readable, receivable, and which topics may
    send to it (when its policy can be read)."""
    queue = EventQueue(url, aws, wait_seconds=0)
    try:
        report = await queue.check()
    except BackendError as exc:
        say(f"error: events queue: {exc.user_message or exc}")
        say("the bot would poll ESD at the normal rate until the queue answers")
        return False
    finally:
        await queue.aclose()
    say(f"events queue: {report.name} answers ({report.messages} message(s) waiting)")
    expected = ("ReceiveSageMakerInferenceSuccess", "ReceiveSageMakerInferenceError")
    if not report.topics:
        say(
            "events queue: its policy names no SNS topic (or could not be read); subscribe it "
            "to ESD's topics as docs/esd.md shows"
        )
    for name in expected:
        if report.topics and not any(arn.endswith(f":{name}") for arn in report.topics):
            say(f"warning: events queue: the policy does not let the topic {name} send to it")
    return True
