"""Safe downloads of Slack's private files (SPEC §3 step 2, §7).

`SlackFileFetcher` sends the bot token only to Slack's own file hosts (and the origin of
`SLACK_API_URL` when that is overridden), follows redirects only to those hosts, checks the
size Slack declared before it asks (then `transport.download` checks `Content-Length` and the
bytes as they arrive), and recognises the HTML sign-in page Slack serves with status 200 when
the token is wrong or lacks `files:read`. A 429 (after its `Retry-After`), a 5xx or a broken
connection is retried with the adapter's `RetryPolicy` before the download counts as failed.
Every refusal is an `ImageInputError` naming the file; the token never appears in one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from adapters.slack.convert import file_url_allowed, looks_like_html
from bot.errors import ImageInputError
from bot.retry import RetryPolicy
from transport.download import TooLargeError, UnavailableError, download

if TYPE_CHECKING:
    import aiohttp

    from bot.model import AttachmentRef
    from transport.download import Fetched

_LOGGER = logging.getLogger(__name__)

_MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HTML_HINT = (
    "Slack answered a web page instead of the file — the bot's token may be missing the "
    "`files:read` scope, or the file is no longer shared with the bot"
)


def _size(size: int) -> str:
    """`20 MB`, `1.5 MB`, `3 kB`: sizes as people read them."""
    if size >= 1_000_000:
        return f"{size / 1e6:.1f}".removesuffix(".0") + " MB"
    return f"{max(1, round(size / 1e3))} kB"


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
        url = ref.url
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                if not self.allowed(url):
                    _LOGGER.warning("refused a file on a foreign host: %s", urlsplit(url).hostname)
                    raise ImageInputError(
                        f"{name} is not on Slack's file servers; the bot only downloads files "
                        "shared in Slack"
                    )
                # Slack's file hosts rate-limit and fail like the Web API does
                # (https://docs.slack.dev/apis/web-api/rate-limits): `download` tries again.
                fetched = await download(
                    self._session,
                    url,
                    max_bytes=max_bytes,
                    policy=self._policy,
                    headers={"Authorization": f"Bearer {self._token}"},
                    allow_redirects=False,
                )
                if fetched.status in _REDIRECTS and "Location" in fetched.headers:
                    url = urljoin(url, fetched.headers["Location"])
                    continue
                return self._checked(name, fetched)
        except TooLargeError as exc:
            if exc.declared is not None:
                raise ImageInputError(
                    f"{name} is {_size(exc.declared)}; the limit is {_size(max_bytes)}"
                ) from None
            raise ImageInputError(f"{name} is over the {_size(max_bytes)} limit") from None
        except UnavailableError as exc:
            raise ImageInputError(
                f"{name} could not be downloaded from Slack ({exc.what}); "
                "try again, or attach it once more"
            ) from None
        raise ImageInputError(f"{name} could not be downloaded: too many redirects")

    @staticmethod
    def _checked(name: str, fetched: Fetched) -> bytes:
        if fetched.status != 200:
            raise ImageInputError(
                f"{name} could not be downloaded (Slack answered {fetched.status})"
            )
        content_type = fetched.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == "text/html" or looks_like_html(fetched.body[:256]):
            raise ImageInputError(f"{name}: {_HTML_HINT}")
        return fetched.body
