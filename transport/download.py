"""The one capped download: `download` (GET with retries) and `read_capped` (any answer's body).

A body is refused when its `Content-Length` says it is over the cap, before anything is read,
and again as soon as the bytes read pass the cap (a missing or false header changes nothing).
`download` retries 429, 5xx, broken connections and timeouts under a `bot.retry.RetryPolicy`,
honouring `Retry-After`; other answers (2xx, 3xx, 4xx) come back as a `Fetched` for the caller
to judge (a Slack redirect, a Discord link that expired, ESD's 403 of a stale presigned URL).
Failures are `DownloadError`s whose text never holds the URL's query string (presigned URLs
carry their credentials there) nor a header; callers turn them into their own errors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from bot.retry import RetryPolicy, TransientError, parse_retry_after

if TYPE_CHECKING:
    from collections.abc import Mapping

    from multidict import CIMultiDictProxy

_LOGGER = logging.getLogger(__name__)

CHUNK = 64 * 1024
# Downloads of images and results: a slow host gets half a minute between reads, two overall.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=15, sock_read=30)


class DownloadError(Exception):
    """A download that failed; the text is safe to log (no query string, no header)."""


class TooLargeError(DownloadError):
    """The body is over the cap: `declared` is its `Content-Length`, None when the bytes read
    passed the cap (no header, or a false one)."""

    def __init__(self, where: str, limit: int, declared: int | None = None) -> None:
        size = f"{declared} bytes" if declared is not None else "more"
        super().__init__(f"{where} is {size}, over the {limit}-byte cap")
        self.limit = limit
        self.declared = declared


class UnavailableError(DownloadError):
    """The host answered 429 / 5xx or could not be reached, through every retry: `what` says
    how the last attempt failed ("HTTP 503", "timed out", "ClientConnectorError: …")."""

    def __init__(self, where: str, what: str, status: int | None = None) -> None:
        super().__init__(f"downloading {where} failed: {what}")
        self.what = what
        self.status = status


@dataclass(frozen=True)
class Fetched:
    """An answer the caller judges: its status, headers and (capped) body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def bare_url(url: str) -> str:
    """A URL without its query string or fragment (where presigned and signed CDN URLs carry
    their credentials): safe for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "[unparsable URL]"
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def read_capped(response: aiohttp.ClientResponse, limit: int, where: str = "") -> bytes:
    """The body of `response`, refusing (`TooLargeError`) to hold more than `limit` bytes."""
    where = where or bare_url(str(response.url))
    declared = response.content_length
    if declared is not None and declared > limit:
        raise TooLargeError(where, limit, declared)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise TooLargeError(where, limit)
        chunks.append(chunk)
    return b"".join(chunks)


class _Busy(TransientError):
    def __init__(self, what: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(what, retry_after)
        self.status = status


def _network_reason(exc: Exception) -> str:
    """How a connection failed, without the exception's text (it may quote the URL)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    return type(exc).__name__


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    policy: RetryPolicy,
    headers: Mapping[str, str] | None = None,
    timeouts: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    allow_redirects: bool = True,
) -> Fetched:
    """`GET url` and read at most `max_bytes` of the answer.

    Raises `TooLargeError` when the body is over the cap and `UnavailableError` when every
    attempt met 429, 5xx, a broken connection or a timeout (or a `Retry-After` longer than the
    policy waits for). Any other answer is returned.
    """
    where = bare_url(url)

    async def once() -> Fetched:
        try:
            async with session.get(
                url, headers=headers, timeout=timeouts, allow_redirects=allow_redirects
            ) as response:
                if response.status == 429 or response.status >= 500:
                    raise _Busy(
                        f"HTTP {response.status}",
                        response.status,
                        parse_retry_after(response.headers.get("Retry-After")),
                    )
                body = await read_capped(response, max_bytes, where)
                return Fetched(response.status, response.headers, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Busy(_network_reason(exc)) from None

    try:
        return await policy.run(once, what=f"downloading {where}")
    except _Busy as busy:
        _LOGGER.warning("downloading %s failed: %s", where, busy.what)
        raise UnavailableError(where, busy.what, busy.status) from None
