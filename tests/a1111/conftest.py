"""Fixtures of the WebUI backend tests: the fake WebUI on loopback and a backend for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from cloud.a1111 import A1111Backend, A1111Config
from tests.a1111.fake_webui import FakeWebUI

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


def webui_config(url: str, tmp_path: Path, **overrides: Any) -> A1111Config:
    values: dict[str, Any] = {
        "api_url": url,
        "state_dir": tmp_path / "a1111",
        "progress_interval": 0.01,
        "reconnect": 10.0,
    }
    values.update(overrides)
    return A1111Config(**values)


@pytest.fixture
async def webui() -> AsyncIterator[FakeWebUI]:
    async with FakeWebUI() as fake:
        yield fake


@pytest.fixture
async def backend(webui: FakeWebUI, tmp_path: Path) -> AsyncIterator[A1111Backend]:
    b = A1111Backend(webui_config(webui.url, tmp_path))
    await b.start()
    yield b
    await b.aclose()
