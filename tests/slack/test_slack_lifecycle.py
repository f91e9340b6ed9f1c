"""Starting and stopping the Slack adapter: credentials checked at start-up with errors that
name the setting, both connection modes, and a clean close."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import pytest
from scenario_kit import fast_config, make_app

from adapters.cli import slack_core
from adapters.slack import SlackAdapter, slack_configured
from adapters.slack.settings import SlackSettings
from bot.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from bot.ports import Backend
    from tests.slack.conftest import MakeRig, SlackRig


def test_configured_means_a_bot_token_and_one_way_in() -> None:
    assert not slack_configured(SlackSettings())
    assert not slack_configured(SlackSettings(slack_bot_token="xoxb-1"))
    assert slack_configured(SlackSettings(slack_bot_token="xoxb-1", slack_app_token="xapp-1"))
    assert slack_configured(SlackSettings(slack_bot_token="xoxb-1", slack_signing_secret="s"))


def _config(tmp_path: Path, api_url: str | None = None, **secrets: Any) -> Any:
    return fast_config(tmp_path, slack_api_url=api_url, **secrets)


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({}, "SLACK_BOT_TOKEN is not set"),
        ({"slack_bot_token": "xoxb-1"}, "set SLACK_APP_TOKEN for Socket Mode, or SLACK_SIGNING"),
        ({"slack_bot_token": "xoxb-1", "slack_app_token": "xoxb-2"}, "SLACK_APP_TOKEN must be"),
    ],
)
def test_missing_or_wrong_kinds_of_credentials_are_named(
    tmp_path: Path, secrets: dict[str, str], message: str
) -> None:
    config = _config(tmp_path, **secrets)
    with pytest.raises(ConfigError, match=message):
        SlackAdapter(slack_core(make_app(config)), config[SlackSettings])


async def test_a_refused_bot_token_fails_start_with_its_name(rig: SlackRig, tmp_path: Path) -> None:
    config = _config(
        tmp_path / "other",
        rig.fake.api_url,
        slack_bot_token="xoxb-wrong",
        slack_signing_secret="s",
    )
    assert slack_configured(config[SlackSettings])
    adapter = SlackAdapter(
        slack_core(make_app(config)), config[SlackSettings], http_host="127.0.0.1", http_port=0
    )
    with pytest.raises(ConfigError, match="Slack refused SLACK_BOT_TOKEN: invalid_auth") as err:
        await adapter.start()
    assert "xoxb-wrong" not in str(err.value)
    await adapter.aclose()  # idempotent after a failed start


async def test_a_refused_app_token_fails_start_with_its_name(rig: SlackRig, tmp_path: Path) -> None:
    config = _config(
        tmp_path / "other",
        rig.fake.api_url,
        slack_bot_token="xoxb-test-bot-token",
        slack_app_token="xapp-wrong",
    )
    adapter = SlackAdapter(slack_core(make_app(config)), config[SlackSettings])
    with pytest.raises(ConfigError, match="Slack refused SLACK_APP_TOKEN: invalid_auth"):
        await adapter.start()
    assert rig.fake.socket_connections == 0


async def test_socket_mode_connects_over_the_websocket_slack_names(any_rig: SlackRig) -> None:
    rig = any_rig
    if rig.mode == "socket":
        assert rig.fake.socket_connections == 1 and rig.adapter.port is None
        assert rig.adapter.socket_mode
    else:
        assert rig.fake.socket_connections == 0 and rig.adapter.port
        assert not rig.adapter.socket_mode
    assert rig.adapter.bot_user_id == "UBOT"
    # The bot token, never the app token, goes to the Web API methods.
    assert (
        all(name != "apps.connections.open" for name, _ in rig.fake.calls[1:])
        or rig.mode == "socket"
    )


async def test_start_twice_is_refused_and_close_is_idempotent(rig: SlackRig) -> None:
    with pytest.raises(RuntimeError):
        await rig.adapter.start()
    await rig.adapter.aclose()
    await rig.adapter.aclose()


async def test_stop_ends_intake_but_running_jobs_still_deliver(make_rig: MakeRig) -> None:
    import aiohttp
    from scenario_kit import png

    from bot.model import JobState

    async with make_rig("http", local_delay=0.3) as rig:
        await rig.post("<@UBOT> img2img a cat", files=[rig.fake.add_file("a.png", png())])
        await rig.adapter.wait_idle()
        await rig.adapter.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await rig.slash("help")
        await rig.app.runner.wait_idle()
        [job] = await rig.jobs()
        assert job.state is JobState.SUCCEED and job.delivery.value == "done"
        assert rig.results_in("C1", rig.status_of(job.id).ts)


async def test_http_mode_serves_the_operators_endpoints_on_its_port(
    make_rig: Any, tmp_path: Path
) -> None:
    import aiohttp
    from yarl import URL

    from adapters.web.metrics import Metrics, chat_trace
    from adapters.web.server import Readiness, WebServer

    metrics = Metrics()
    holder: dict[str, Any] = {}

    class _LateStore:  # the rig builds the app (and its store) itself
        async def writable(self) -> bool:
            return bool(await holder["store"].writable())

    # Readiness asks the backend only for `endpoints`.
    readiness = Readiness(_LateStore(), cast("Backend", _LateBackend(holder)), metrics)
    web = WebServer(metrics, readiness)
    options = {
        "web_routes": web.routes(),
        "trace_configs": [chat_trace(metrics, "slack", URL("http://placeholder/api/"))],
    }
    async with make_rig("http", adapter_options=options) as rig:
        holder.update(store=rig.app.store, backend=rig.app.backend)
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{rig.adapter.port}"
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200, await response.text()
            async with http.get(f"{base}/metrics") as response:
                assert "sdbot_chat_http_requests_total" in await response.text()
    # auth.test went through the traced session (the placeholder host: counted as external).
    assert metrics.registry.get_sample_value(
        "sdbot_chat_http_requests_total",
        {"platform": "slack", "method": "POST", "route": "external", "status": "200"},
    )


class _LateBackend:
    def __init__(self, holder: dict[str, Any]) -> None:
        self._holder = holder

    async def endpoints(self) -> Any:
        return await self._holder["backend"].endpoints()
