"""`sdbot local-backend`: flags, the TOML file, refusals, and a real run stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.errors import ConfigError
from cloud.esd_server import EndpointSpec, Faults, main
from cloud.esd_server.cli import DEFAULT_PORT, load_settings
from cloud.esd_server.config import UserSpec

NO_ENV: dict[str, str] = {}
REPO = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    settings = load_settings([], NO_ENV)
    assert (settings.host, settings.port, settings.log_level) == ("127.0.0.1", DEFAULT_PORT, "INFO")
    config = settings.config
    assert config.api_key == "local-backend-key"
    assert config.users == (UserSpec("api", ("IT Operator",)), UserSpec("lister", ("lister",)))
    assert not config.rest_interrogate
    assert config.job_seconds == (1.0, 1.0)
    assert config.faults == Faults()
    assert [spec.name for spec in config.endpoints] == ["sd-async-local", "sd-real-time-local"]


def test_every_flag() -> None:
    settings = load_settings(
        [
            "--host", "0.0.0.0", "--port", "0", "--api-key", "k" * 20,
            "--user", "api", "--user", "bot=lister,byoc", "--rest-interrogate",
            "--job-seconds", "1:5", "--latency", "0.1", "--error-rate", "0.1",
            "--timeout-rate", "0.2", "--hang-seconds", "9", "--throttle-rate", "0.05",
            "--fail-rate", "0.1", "--fail-silent-rate", "0.1", "--stuck-rate", "0.05",
            "--url-ttl", "60", "--models-dir", "/tmp/models", "--seed", "42",
            "--realtime-timeout", "2", "--api-version", "1.5.0", "--log-level", "debug",
        ],
        NO_ENV,
    )  # fmt: skip
    config = settings.config
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 0, "DEBUG")
    assert config.api_key == "k" * 20
    assert config.users == (UserSpec("api"), UserSpec("bot", ("lister", "byoc")))
    assert config.rest_interrogate
    assert config.job_seconds == (1.0, 5.0)
    assert config.url_ttl == 60.0
    assert config.models_dir == Path("/tmp/models")
    assert config.realtime_gateway_timeout == 2.0
    assert config.version == "1.5.0"
    assert config.faults == Faults(
        latency=0.1,
        error_rate=0.1,
        timeout_rate=0.2,
        hang_seconds=9.0,
        throttle_rate=0.05,
        fail_rate=0.1,
        fail_silent_rate=0.1,
        stuck_rate=0.05,
        seed=42,
    )


def test_endpoint_status_for_all_or_one_endpoint() -> None:
    every = load_settings(["--endpoint-status", "Creating"], NO_ENV).config.endpoints
    assert {spec.status for spec in every} == {"Creating"}
    one = load_settings(
        ["--endpoint-status", "Updating", "--endpoint-status", "sd-real-time-local=Failed"], NO_ENV
    ).config.endpoints
    assert {spec.name: spec.status for spec in one} == {
        "sd-async-local": "Updating",
        "sd-real-time-local": "Failed",
    }
    with pytest.raises(ConfigError, match="unknown endpoint: nope"):
        load_settings(["--endpoint-status", "nope=Failed"], NO_ENV)


def test_a_cold_start_scales_the_async_endpoint_to_zero() -> None:
    config = load_settings(["--cold-start", "30"], NO_ENV).config
    assert config.cold_start_seconds == 30.0
    counts = {spec.name: spec.instance_count for spec in config.endpoints}
    assert counts == {"sd-async-local": 0, "sd-real-time-local": 1}


def test_the_api_key_defaults_to_esd_api_key() -> None:
    assert load_settings([], {"ESD_API_KEY": "from-env-1234"}).config.api_key == "from-env-1234"
    flagged = load_settings(["--api-key", "flag-key"], {"ESD_API_KEY": "from-env-1234"})
    assert flagged.config.api_key == "flag-key"


def test_a_toml_file_with_flags_on_top(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        """
        port = 9000
        users = ["api", "ops"]
        job_seconds = [2, 4]
        cold_start = 5
        endpoint_status = "sd-async=Updating"
        invocations_per_instance = 1

        [faults]
        error_rate = 0.25
        seed = 9

        [[endpoints]]
        name = "sd-async"
        type = "Async"
        instance_count = 0

        [[endpoints]]
        name = "sd-rt"
        type = "Real-time"
        instance_type = "ml.g5.2xlarge"
        """
    )
    settings = load_settings(["--config", str(path), "--port", "9001", "--seed", "10"], NO_ENV)
    config = settings.config
    assert settings.port == 9001
    assert config.users == (UserSpec("api"), UserSpec("ops"))
    assert config.job_seconds == (2.0, 4.0)
    assert config.cold_start_seconds == 5.0
    assert config.invocations_per_instance == 1
    assert config.faults == Faults(error_rate=0.25, seed=10)
    assert config.endpoints == (
        EndpointSpec("sd-async", "Async", status="Updating", instance_count=0),
        EndpointSpec("sd-rt", "Real-time", instance_type="ml.g5.2xlarge"),
    )


def test_the_bots_own_toml_with_a_local_backend_table(tmp_path: Path) -> None:
    path = tmp_path / "sdbot.toml"
    path.write_text('backend = "esd"\n\n[local_backend]\nport = 0\njob_seconds = "0.5:1"\n')
    settings = load_settings(["--config", str(path)], NO_ENV)
    assert settings.port == 0
    assert settings.config.job_seconds == (0.5, 1.0)


@pytest.mark.parametrize(
    ("argv", "toml", "message"),
    [
        (["--error-rate", "1.5"], None, "error_rate"),
        (["--error-rate", "0.6", "--throttle-rate", "0.6"], None, "at most 1"),
        (["--job-seconds", "5:1"], None, "job_seconds"),
        (["--job-seconds", "soon"], None, "job_seconds"),
        (["--url-ttl", "0"], None, "url_ttl"),
        (["--port", "70000"], None, "port"),
        ([], "colour = 'blue'\n", "unknown setting"),
        ([], "[faults]\nshaky = 1\n", "unknown \\[faults\\]"),
        ([], "[[endpoints]]\nname = 'x'\ntype = 'Batch'\n", "Async or Real-time"),
        ([], "port = \n", "not valid TOML"),
        ([], "invocations_per_instance = 0\n", "invocations_per_instance"),
    ],
)
def test_bad_settings_name_what_is_wrong(
    tmp_path: Path, argv: list[str], toml: str | None, message: str
) -> None:
    if toml is not None:
        path = tmp_path / "bad.toml"
        path.write_text(toml)
        argv = [*argv, "--config", str(path)]
    with pytest.raises(ConfigError, match=message):
        load_settings(argv, NO_ENV)


def test_main_exits_2_on_a_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "/nonexistent/server.toml"]) == 2
    assert "configuration error" in capsys.readouterr().err


async def test_a_real_run_serves_until_sigterm() -> None:
    command = "import sys; from cloud.esd_server import main; sys.exit(main(sys.argv[1:]))"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        command,
        "--port",
        "0",
        "--api-key",
        "cli-test-key",
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stderr is not None
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        match = re.search(r"ESD-compatible server on (http://127\.0\.0\.1:\d+/prod/) \(", line)
        assert match, line
        assert "cli-test-key" not in line  # a chosen key is only hinted at
        async with (
            aiohttp.ClientSession() as session,
            session.get(match.group(1) + "ping", headers={"x-api-key": "cli-test-key"}) as response,
        ):
            assert response.status == 200
            assert (await response.json())["message"] == "pong"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
