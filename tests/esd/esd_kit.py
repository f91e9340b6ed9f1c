"""Helpers of the ESD backend tests: settings for the loopback server and the client, values.

Jobs on the server take a minute by default (`job_seconds`), so a test decides when each one
ends with `state.finish(job_id)` instead of waiting on the clock. Retry back-off is a few
milliseconds so fault tests stay fast. Imported as `tests.esd.esd_kit`.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bot.model import BackendStatus, GenerationParams
from bot.ports import PollTarget
from bot.retry import RetryPolicy
from cloud.esd import EsdBackend, EsdConfig
from cloud.esd_server import ServerConfig, ServerState
from commands.spec import Resize, Sampler

KEY = "local-backend-key"
CHECKPOINT = "sdbot-preview.safetensors"
ASYNC = "sd-async-local"
REALTIME = "sd-real-time-local"


def esd_config(url: str, *, retries: int = 3, **overrides: Any) -> EsdConfig:
    """Settings for a loopback ESD: `retries` retries of a few milliseconds each."""
    values: dict[str, Any] = {
        "api_url": url,
        "api_key": KEY,
        "timeout": 5.0,
        "retry": RetryPolicy(
            attempts=retries, backoff=0.005, max_backoff=0.02, max_retry_after=0.5
        ),
        "list_interval": 0.0,
        # No rate limits unless a test sets them: each poll may scan and read at once.
        "list_pages_per_second": 1e9,
        "direct_per_second": 1e9,
        "events_pages_per_second": 1e9,
        "cold_check_interval": 0.0,
    }
    values.update(overrides)
    return EsdConfig(**values)


def server_config(**overrides: Any) -> ServerConfig:
    """The server these tests run against: with the sdbot-only REST interrogate turned on
    (real ESD has none; tests of the default say `rest_interrogate=False`)."""
    values: dict[str, Any] = {
        "job_seconds": (60.0, 60.0),
        "realtime_gateway_timeout": 0.2,
        "rest_interrogate": True,
    }
    values.update(overrides)
    return ServerConfig(**values)


def state_of(url: str) -> ServerState:
    state = getattr(url, "state", None)
    assert isinstance(state, ServerState)
    return state


def params(**overrides: Any) -> GenerationParams:
    values: dict[str, Any] = {
        "prompt": "a red fox",
        "negative": "blurry",
        "strength": 0.6,
        "steps": 12,
        "cfg": 6.5,
        "sampler": Sampler.EULER_A,
        "seed": 1234,
        "width": 96,
        "height": 64,
        "count": 1,
        "resize": Resize.JUST_RESIZE,
        "model": CHECKPOINT,
        "vae": "Automatic",
        "endpoint": ASYNC,
    }
    values.update(overrides)
    return GenerationParams(**values)


def target(backend_id: str, *, interrogate: bool = False) -> PollTarget:
    return PollTarget(backend_id, interrogate, datetime.now(UTC))


async def settle(
    backend: EsdBackend, backend_id: str, *, interrogate: bool = False
) -> BackendStatus:
    """Poll until the job is terminal (the server job must already be finished or finishing)."""
    for _ in range(500):
        answer = await backend.statuses([target(backend_id, interrogate=interrogate)])
        status = answer.get(backend_id)
        if status is not None and status.state.terminal:
            return status
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {backend_id} never became terminal")


def with_faults(url: str, **faults: Any) -> None:
    state = state_of(url)
    state.faults = replace(state.faults, **faults)
