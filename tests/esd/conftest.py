"""Fixtures of the ESD backend tests: the ESD-compatible server on loopback, a backend for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from cloud.esd import EsdBackend
from cloud.esd_server import running_server
from tests.esd.esd_kit import esd_config, server_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with running_server(server_config()) as url:
        yield url


@pytest.fixture
async def backend(server: str) -> AsyncIterator[EsdBackend]:
    async with EsdBackend(esd_config(server)) as esd:
        yield esd
