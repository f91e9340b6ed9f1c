"""The Slack Web API client sdbot uses, with the retries Slack's limits call for (SPEC §5).

slack_sdk retries only connection errors by default. `make_web_client` adds: HTTP 429 waits
exactly what `Retry-After` says (capped) and tries again; 500/502/503/504 back off
exponentially; connection errors are retried twice. slack_sdk 3.48 runs the same handlers for
the file POST inside `files_upload_v2`, so the upload step is retried too. `SLACK_API_URL`
(config `slack_api_url`) replaces the base URL, for GovSlack, proxies and the tests' fake.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from aiohttp import ClientOSError, ServerConnectionError, ServerDisconnectedError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient

if TYPE_CHECKING:
    import aiohttp
    from slack_sdk.http_retry.request import HttpRequest
    from slack_sdk.http_retry.response import HttpResponse
    from slack_sdk.http_retry.state import RetryState

_LOGGER = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
_SERVER_ERRORS = frozenset({500, 502, 503, 504})


def api_base_url(configured: str | None) -> str:
    """The Web API base URL, always ending in `/` as slack_sdk expects."""
    url = configured or DEFAULT_API_URL
    return url if url.endswith("/") else url + "/"


def retry_after(response: HttpResponse | None, default: float = 1.0) -> float:
    """Seconds the `Retry-After` header of a 429 asks for (`default` when absent or bad)."""
    if response is None:
        return default
    for name, values in response.headers.items():
        if name.lower() == "retry-after":
            raw = values[0] if isinstance(values, list) else values
            try:
                return max(0.0, float(raw))
            except ValueError:
                return default
    return default


class RetryAfterHandler(AsyncRetryHandler):
    """Retries an HTTP 429 after the time Slack asks for (Slack's per-method rate tiers).

    slack_sdk's own handler adds up to a second of jitter to every wait; this one adds at
    most a tenth of the wait, and refuses to sleep longer than `max_wait`.
    """

    def __init__(self, max_retry_count: int = 3, max_wait: float = 120.0) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return (
            response is not None
            and response.status_code == 429
            and retry_after(response) <= self.max_wait
        )

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        wait = retry_after(response)
        wait += random.uniform(0, wait / 10)
        _LOGGER.info("Slack rate limit on %s; retrying in %.1f s", _path(request.url), wait)
        state.next_attempt_requested = True
        await asyncio.sleep(wait)
        state.increment_current_attempt()


class ServerErrorHandler(AsyncRetryHandler):
    """Retries 5xx answers with exponential back-off and jitter."""

    def __init__(self, max_retry_count: int = 2, backoff: float = 0.5) -> None:
        super().__init__(
            max_retry_count=max_retry_count,
            interval_calculator=BackoffRetryIntervalCalculator(backoff_factor=backoff),
        )

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code in _SERVER_ERRORS


def _path(url: str) -> str:
    # Upload URLs carry credentials in their path and query; log only the method name.
    return url.split("?", 1)[0].rsplit("/", 1)[-1] if "/api/" in url else "file upload"


def make_web_client(
    token: str,
    api_url: str | None,
    session: aiohttp.ClientSession | None = None,
    *,
    timeout: int = 30,
    server_backoff: float = 0.5,
) -> AsyncWebClient:
    """An `AsyncWebClient` for the bot token with sdbot's retry handlers."""
    return AsyncWebClient(
        token=token,
        base_url=api_base_url(api_url),
        session=session,
        timeout=timeout,
        logger=logging.getLogger("adapters.slack.web"),
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(
                max_retry_count=2,
                error_types=[ServerConnectionError, ServerDisconnectedError, ClientOSError],
            ),
            RetryAfterHandler(),
            ServerErrorHandler(backoff=server_backoff),
        ],
    )
