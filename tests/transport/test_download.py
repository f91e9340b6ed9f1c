"""`transport.download`: the one capped download, against a loopback HTTP server.

The server answers as HTTP file hosts do (RFC 9110): a declared `Content-Length`, or a body
sent in chunks with none (`Transfer-Encoding: chunked`, RFC 9112 §7.1), 429 / 503 with a
`Retry-After` (§10.2.3), and a header that lies about the size (a misbehaving proxy).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from bot.retry import RetryPolicy
from transport.download import (
    TooLargeError,
    UnavailableError,
    bare_url,
    download,
    read_capped,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.004, max_retry_after=5.0, scale=0.01)
BODY = b"x" * 10_000


class Host:
    """A loopback file host; `script` answers request n with `script[n]` (the last repeats)."""

    def __init__(self) -> None:
        self.script: list[Handler] = []
        self.requests: list[web.Request] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        return await step(request)


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    fake = Host()
    app = web.Application()
    app.router.add_get("/{name}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/file.png?sig=secret"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def answer(status: int = 200, body: bytes = BODY, **headers: str) -> Handler:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return respond


def chunked(body: bytes) -> Handler:
    """The body in 1 kB chunks, with no `Content-Length`."""

    async def respond(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 1000):
            try:
                await response.write(body[start : start + 1000])
            except ConnectionResetError:
                break  # the client stopped reading at its cap
        return response

    return respond


async def test_a_body_within_the_cap_is_returned_whole(
    host: Host, session: aiohttp.ClientSession
) -> None:
    host.script = [answer()]
    fetched = await download(session, host.url, max_bytes=len(BODY), policy=FAST)
    assert fetched.ok and fetched.status == 200 and fetched.body == BODY


async def test_a_declared_length_over_the_cap_is_refused_before_reading(
    host: Host, session: aiohttp.ClientSession
) -> None:
    host.script = [answer()]
    with pytest.raises(TooLargeError) as caught:
        await download(session, host.url, max_bytes=len(BODY) - 1, policy=FAST)
    assert caught.value.declared == len(BODY) and caught.value.limit == len(BODY) - 1
    assert len(host.requests) == 1  # not worth another try
    assert "sig=secret" not in str(caught.value)


async def test_a_stream_without_a_length_is_cut_at_the_cap(
    host: Host, session: aiohttp.ClientSession
) -> None:
    host.script = [chunked(BODY)]
    assert (await download(session, host.url, max_bytes=len(BODY), policy=FAST)).body == BODY
    with pytest.raises(TooLargeError) as caught:
        await download(session, host.url, max_bytes=len(BODY) - 1, policy=FAST)
    assert caught.value.declared is None


async def test_429_and_5xx_are_tried_again_honouring_retry_after(
    host: Host, session: aiohttp.ClientSession
) -> None:
    host.script = [
        answer(429, b"slow down", **{"Retry-After": "1"}),
        answer(503, b""),
        answer(),
    ]
    fetched = await download(session, host.url, max_bytes=len(BODY), policy=FAST)
    assert fetched.body == BODY and len(host.requests) == 3


async def test_a_retry_after_longer_than_the_policy_waits_ends_at_once(
    host: Host, session: aiohttp.ClientSession
) -> None:
    host.script = [answer(429, b"", **{"Retry-After": "3600"}), answer()]
    with pytest.raises(UnavailableError) as caught:
        await download(session, host.url, max_bytes=len(BODY), policy=FAST)
    assert (caught.value.status, caught.value.what) == (429, "HTTP 429")
    assert len(host.requests) == 1


async def test_every_attempt_failing_is_unavailable_with_the_last_reason(
    host: Host, session: aiohttp.ClientSession
) -> None:
    host.script = [answer(502, b"bad gateway")]
    with pytest.raises(UnavailableError) as caught:
        await download(session, host.url, max_bytes=len(BODY), policy=FAST)
    assert caught.value.status == 502 and len(host.requests) == FAST.attempts + 1
    assert str(caught.value) == f"downloading {bare_url(host.url)} failed: HTTP 502"


async def test_other_answers_are_the_callers_to_judge(
    host: Host, session: aiohttp.ClientSession
) -> None:
    host.script = [answer(404, b"no such key"), answer(302, b"", Location="/elsewhere")]
    missing = await download(session, host.url, max_bytes=len(BODY), policy=FAST)
    assert (missing.ok, missing.status, missing.body) == (False, 404, b"no such key")
    moved = await download(
        session, host.url, max_bytes=len(BODY), policy=FAST, allow_redirects=False
    )
    assert moved.status == 302 and moved.headers["Location"] == "/elsewhere"


async def test_a_host_that_cannot_be_reached_is_unavailable(
    session: aiohttp.ClientSession,
) -> None:
    # A port nothing listens on: the connection is refused at once on loopback.
    with pytest.raises(UnavailableError) as caught:
        await download(session, "http://127.0.0.1:9/x.png?sig=secret", max_bytes=10, policy=FAST)
    assert caught.value.status is None and caught.value.what.startswith("cannot connect")
    assert "secret" not in str(caught.value)


async def test_a_host_that_stops_answering_times_out(
    host: Host, session: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(BODY)
        await response.prepare(request)
        await response.write(BODY[:100])
        await release.wait()  # then the client has given up and gone
        return response

    host.script = [stall]
    try:
        with pytest.raises(UnavailableError) as caught:
            await download(
                session,
                host.url,
                max_bytes=len(BODY),
                policy=RetryPolicy(attempts=0),
                timeouts=aiohttp.ClientTimeout(sock_read=0.05),
            )
    finally:
        release.set()
    assert caught.value.what == "timed out"


async def test_read_capped_serves_api_answers_too(
    host: Host, session: aiohttp.ClientSession
) -> None:
    host.script = [answer(500, b"e" * 50)]
    async with session.get(host.url) as response:
        with pytest.raises(TooLargeError, match="an answer is 50 bytes, over the 10-byte cap"):
            await read_capped(response, 10, "an answer")


def test_bare_url_drops_the_query_where_signatures_live() -> None:
    assert bare_url("https://cdn.discordapp.com/a.png?ex=1&hm=sig") == (
        "https://cdn.discordapp.com/a.png"
    )
    assert bare_url("http://[::1") == "[unparsable URL]"
