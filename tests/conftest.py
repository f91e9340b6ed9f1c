"""Fixtures shared by the scenario tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pg_kit
import pytest
import scenario_kit

from cloud.a1111 import A1111Backend, A1111Config
from tests.a1111.fake_webui import FakeWebUI

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scenario_kit import FastSettings


@pytest.fixture(params=["local", "a1111"])
async def scenario_backend(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Run a backend-neutral scenario on the local backend, then on the WebUI backend against
    the fake WebUI (a job there takes the scenario's `local_delay`)."""
    if request.param == "local":
        yield "local"
        return
    async with FakeWebUI(checkpoints=("sdbot-preview.safetensors",)) as fake:

        def backend_for(config: FastSettings) -> A1111Backend:
            fake.job_seconds = config.local_delay
            return A1111Backend(
                A1111Config(
                    api_url=fake.url,
                    state_dir=config.data_dir / "a1111",
                    progress_interval=0.02,
                    endpoint_name="local-preview",
                )
            )

        scenario_kit.use_backend(backend_for)
        try:
            yield "a1111"
        finally:
            scenario_kit.use_backend(None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One loud line when the PostgreSQL tests could not run (`pg_kit`)."""
    reason = pg_kit.unreachable_reason()
    if reason is not None:
        terminalreporter.write_line(
            f"POSTGRESQL TESTS SKIPPED: {pg_kit.server_url()} is unreachable ({reason}); "
            "set SDBOT_TEST_DATABASE_URL or start the server (under CI=true they fail)",
            red=True,
            bold=True,
        )
