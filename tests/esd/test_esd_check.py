"""`sdbot check` (`run_check`): a clear report and the exit status, good and bad."""

from __future__ import annotations

import asyncio
import io
import socket
from typing import Any

import pytest

from bot.config import Config
from bot.errors import ConfigError
from cloud.esd import EsdBackend, check_backend, run_check
from cloud.esd.config import EsdSettings
from cloud.esd_server import running_server
from tests.esd.esd_kit import KEY, esd_config, server_config, state_of


def bot_config(url: str | None, key: str | None = KEY, **values: Any) -> EsdSettings:
    return EsdSettings(esd_api_url=url, esd_api_key=key, **values)


async def check(esd: EsdSettings) -> tuple[int, str]:
    out = io.StringIO()
    status = await check_backend(esd, Config(), out)
    return status, out.getvalue()


async def test_a_good_deployment_passes(server: str) -> None:
    state_of(server).set_endpoint_status("sd-real-time-local", "Creating")
    status, text = await check(bot_config(server))
    assert status == 0, text
    assert "ping: ok, ESD v1.7.0" in text
    assert "  sd-async-local: InService, Async, ml.g5.xlarge × 1" in text
    assert "  sd-real-time-local: Creating, Real-time" in text
    assert "comfy" not in text
    assert "models: Stable-diffusion 1, Lora 0, VAE 0, hypernetworks 0, embeddings 0" in text
    assert "interrogate: over REST" in text
    assert text.rstrip().endswith("check passed")
    assert KEY not in text


async def test_the_synchronous_entry_point(server: str) -> None:
    out = io.StringIO()
    # The CLI calls it outside any event loop; here it runs in a thread with its own loop.
    assert await asyncio.to_thread(run_check, bot_config(server), Config(), out) == 0
    assert "check passed" in out.getvalue()


async def test_wrong_key(server: str) -> None:
    status, text = await check(bot_config(server, key="wrong-key-456"))
    assert status == 1
    assert "error: ping failed: the ESD API key was refused (check ESD_API_KEY)" in text
    assert "wrong-key-456" not in text


async def test_wrong_user(server: str) -> None:
    status, text = await check(bot_config(server, esd_username="ghost"))
    assert status == 1
    assert (
        "error: listing endpoints failed: ESD does not know the user `ghost` (check ESD_USERNAME)"
        in text
    )


async def test_old_esd_is_named_unsupported() -> None:
    async with running_server(server_config(version="1.4.0")) as url:
        status, text = await check(bot_config(url))
        assert status == 1
        assert "error: ESD v1.4 is not supported: upgrade to v1.5 or later" in text
        with pytest.raises(ConfigError, match=r"ESD v1\.4 is not supported"):
            async with EsdBackend(esd_config(url)):
                pass


async def test_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, text = await check(bot_config(f"http://127.0.0.1:{port}/prod/"))
    assert status == 1
    assert f"error: ping failed: cannot reach ESD at 127.0.0.1:{port}" in text


@pytest.mark.parametrize(
    ("url", "key", "message"),
    [
        ("ftp://example.com/prod/", KEY, "ESD_API_URL must be an http(s) URL"),
        ("https://example.com/prod/", None, "ESD_API_KEY is not set"),
    ],
)
async def test_bad_settings_exit_2(url: str, key: str | None, message: str) -> None:
    status, text = await check(bot_config(url, key=key))
    assert status == 2
    assert text.startswith("error: " + message)


async def test_the_local_backend_has_nothing_to_check() -> None:
    status, text = await check(bot_config(None))
    assert status == 0 and "backend: local" in text
