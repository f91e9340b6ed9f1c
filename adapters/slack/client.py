"""The Slack Web API client sdbot uses, with the retries Slack's limits call for (SPEC §5).

slack_sdk retries only connection errors by default. `make_web_client` adds, all paced by one
`RetryPolicy`:

- rate limits: HTTP 429 *and* HTTP 200 with `ok: false, error: "ratelimited"` (which Slack
  also sends, https://docs.slack.dev/apis/web-api/rate-limits) wait what `Retry-After` says
  (capped; a back-off when absent) and try again;
- 500/502/503/504 and connection errors back off exponentially — but only for calls that are
  safe to repeat. `chat.postMessage`, `chat.postEphemeral` and `files.completeUploadExternal`
  may have done their work before Slack answered 5xx, so they are never retried blindly here;
  the adapter looks for what they made before trying again (`SlackAdapter.post_message`).

`SLACK_API_URL` (config `slack_api_url`) replaces the base URL, for GovSlack, proxies and the
tests' fake.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import ClientOSError, ServerConnectionError, ServerDisconnectedError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.retry import RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    from collections.abc import Mapping

    import aiohttp
    from slack_sdk.http_retry.request import HttpRequest
    from slack_sdk.http_retry.response import HttpResponse
    from slack_sdk.http_retry.state import RetryState

_LOGGER = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
SERVER_ERRORS = frozenset({500, 502, 503, 504})
# Calls that may have posted before Slack answered 5xx or the connection broke: repeating
# them blindly posts twice (https://docs.slack.dev/apis/web-api/#errors: a 5xx does not say
# the work was not done).
UNSAFE_METHODS = frozenset(
    {"chat.postMessage", "chat.postEphemeral", "files.completeUploadExternal"}
)
_CONNECTION_ERRORS = (ServerConnectionError, ServerDisconnectedError, ClientOSError)


def api_base_url(configured: str | None) -> str:
    """The Web API base URL, always ending in `/` as slack_sdk expects."""
    url = configured or DEFAULT_API_URL
    return url if url.endswith("/") else url + "/"


def retry_after_header(headers: Mapping[str, object]) -> float | None:
    """Seconds the `Retry-After` header asks for (slack_sdk keeps headers as lists under the
    names the server sent), or None when absent or unreadable."""
    for name, values in headers.items():
        if name.lower() == "retry-after":
            raw = values[0] if isinstance(values, list) and values else values
            return parse_retry_after(str(raw))
    return None


def is_rate_limited(response: HttpResponse | None) -> bool:
    """HTTP 429, or HTTP 200 with `{"ok": false, "error": "ratelimited"}`: both mean "slow
    down", not "refused" (https://docs.slack.dev/apis/web-api/rate-limits)."""
    if response is None:
        return False
    if response.status_code == 429:
        return True
    body = response.body
    return isinstance(body, dict) and body.get("ok") is False and body.get("error") == "ratelimited"


def method_of(url: str) -> str:
    """The Web API method of a request URL (`chat.postMessage`), or "" for other hosts."""
    if "/api/" not in url:
        return ""
    return url.split("?", 1)[0].rsplit("/", 1)[-1]


class PolicyRetryHandler(AsyncRetryHandler):
    """slack_sdk's retry hook, paced by `RetryPolicy`: rate limits for every call (a
    rate-limited call did nothing); 5xx and broken connections only for calls safe to
    repeat."""

    def __init__(self, policy: RetryPolicy) -> None:
        super().__init__(max_retry_count=policy.attempts)
        self.policy = policy

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if is_rate_limited(response):
            assert response is not None
            wanted = retry_after_header(response.headers)
            return self.policy.honours(wanted)
        if method_of(request.url) in UNSAFE_METHODS:
            return False
        if error is not None:
            return isinstance(error, _CONNECTION_ERRORS)
        return response is not None and response.status_code in SERVER_ERRORS

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        wanted = retry_after_header(response.headers) if response is not None else None
        _LOGGER.info("Slack: retrying %s", method_of(request.url) or "a file upload")
        state.next_attempt_requested = True
        await self.policy.pause(state.current_attempt, wanted)
        state.increment_current_attempt()


def make_web_client(
    token: str,
    api_url: str | None,
    session: aiohttp.ClientSession | None = None,
    *,
    timeout: int = 30,
    policy: RetryPolicy | None = None,
) -> AsyncWebClient:
    """An `AsyncWebClient` for the bot token with sdbot's retry handlers."""
    policy = policy or RetryPolicy()
    return AsyncWebClient(
        token=token,
        base_url=api_base_url(api_url),
        session=session,
        timeout=timeout,
        logger=logging.getLogger("adapters.slack.web"),
        retry_handlers=[PolicyRetryHandler(policy)],
    )
