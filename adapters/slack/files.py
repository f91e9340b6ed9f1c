"""Safe downloads of Slack's private files (SPEC §3 step 2, §7).

`SlackFileFetcher` sends the bot token only to Slack's own file hosts (and the origin of
`SLACK_API_URL` when that is overridden), follows redirects only to those hosts, checks the
size Slack declared before it asks and the bytes as they arrive, and recognises the HTML
sign-in page Slack serves with status 200 when the token is wrong or lacks `files:read`.
A 429 (after its `Retry-After`), a 5xx or a broken connection is retried with the adapter's
`RetryPolicy` back-off before the download counts as failed. Every refusal is an
`ImageInputError` naming the file; the token never appears in one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp

from adapters.retry import RetryPolicy
from adapters.slack.client import SERVER_ERRORS, parse_retry_after
from adapters.slack.convert import file_url_allowed, looks_like_html
from bot.errors import ImageInputError

if TYPE_CHECKING:
    from bot.model import AttachmentRef

_LOGGER = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=15, sock_read=30)
_HTML_HINT = (
    "Slack answered a web page instead of the file — the bot's token may be missing the "
    "`files:read` scope, or the file is no longer shared with the bot"
)


def _size(size: int) -> str:
    """`20 MB`, `1.5 MB`, `3 kB`: sizes as people read them."""
    if size >= 1_000_000:
        return f"{size / 1e6:.1f}".removesuffix(".0") + " MB"
    return f"{max(1, round(size / 1e3))} kB"


class _Transient(Exception):
    """A download failure worth another try (429, 5xx, a broken connection)."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


class SlackFileFetcher:
    """Downloads private files with the bot token, over one `aiohttp` session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token: str,
        api_url: str | None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._session = session
        self._token = token
        self._api_url = api_url
        self._policy = policy or RetryPolicy()

    def allowed(self, url: str) -> bool:
        return file_url_allowed(url, self._api_url)

    async def fetch(self, ref: AttachmentRef, max_bytes: int) -> bytes:
        """The file's bytes, at most `max_bytes`, or an `ImageInputError` naming it."""
        name = ref.name
        if ref.size is not None and ref.size > max_bytes:
            raise ImageInputError(f"{name} is {_size(ref.size)}; the limit is {_size(max_bytes)}")
        attempt = 0
        while True:
            try:
                return await self._fetch_once(ref, max_bytes)
            except _Transient as exc:
                if attempt >= self._policy.attempts:
                    raise ImageInputError(
                        f"{name} could not be downloaded from Slack ({exc.what}); "
                        "try again, or attach it once more"
                    ) from None
                _LOGGER.info("downloading %s: %s; retrying", name, exc.what)
                await self._policy.pause(attempt, exc.retry_after)
                attempt += 1

    async def _fetch_once(self, ref: AttachmentRef, max_bytes: int) -> bytes:
        name = ref.name
        url = ref.url
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                if not self.allowed(url):
                    _LOGGER.warning("refused a file on a foreign host: %s", urlsplit(url).hostname)
                    raise ImageInputError(
                        f"{name} is not on Slack's file servers; the bot only downloads files "
                        "shared in Slack"
                    )
                async with self._session.get(
                    url,
                    headers={"Authorization": f"Bearer {self._token}"},
                    allow_redirects=False,
                    timeout=_TIMEOUT,
                ) as response:
                    if response.status in _REDIRECTS and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status == 429 or response.status in SERVER_ERRORS:
                        # Slack's file hosts rate-limit and fail like the Web API does
                        # (https://docs.slack.dev/apis/web-api/rate-limits): try again later.
                        raise _Transient(
                            f"Slack answered {response.status}",
                            parse_retry_after(dict(response.headers)),
                        )
                    return await self._read(name, response, max_bytes)
            raise ImageInputError(f"{name} could not be downloaded: too many redirects")
        except (TimeoutError, aiohttp.ClientError) as exc:
            _LOGGER.warning("downloading %s failed: %s", name, type(exc).__name__)
            raise _Transient(type(exc).__name__) from None

    async def _read(self, name: str, response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
        if response.status != 200:
            raise ImageInputError(
                f"{name} could not be downloaded (Slack answered {response.status})"
            )
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == "text/html":
            raise ImageInputError(f"{name}: {_HTML_HINT}")
        declared = response.content_length
        if declared is not None and declared > max_bytes:
            raise ImageInputError(f"{name} is {_size(declared)}; the limit is {_size(max_bytes)}")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise ImageInputError(f"{name} is over the {_size(max_bytes)} limit")
            chunks.append(chunk)
        data = b"".join(chunks)
        if looks_like_html(data[:256]):
            raise ImageInputError(f"{name}: {_HTML_HINT}")
        return data
