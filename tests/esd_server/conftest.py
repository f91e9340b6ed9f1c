"""Fixtures of the ESD-compatible server's tests: loopback servers and one client session.

`make_api(config)` starts `running_server` on an ephemeral port and returns an `Api` bound to
it; servers and the session are closed in reverse order at teardown.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import aiohttp
import pytest

from cloud.esd_server import ServerConfig, running_server
from tests.esd_server.esd_server_kit import SLOW, Api

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable


@pytest.fixture
async def make_api() -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())

        async def factory(config: ServerConfig = SLOW) -> Api:
            url = await stack.enter_async_context(running_server(config))
            return Api(url, session, url.state)

        yield factory


@pytest.fixture
async def api(make_api: Callable[..., Awaitable[Api]]) -> Api:
    return await make_api()
