"""The `sdbot` command line: console by default, `check`, configuration errors, exit codes."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from scenario_kit import clean_env, png

ROOT = Path(__file__).resolve().parents[2]


def sdbot(
    tmp_path: Path, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args],
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**env),
    )


def running_bot(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    """`sdbot run` on the console, its three streams piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "adapters.cli", "run"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(**env),
    )


def test_run_without_credentials_is_the_console(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(png())
    result = sdbot(tmp_path, "run", stdin="img2img a cat image=in.png\n", SDBOT_LOCAL_DELAY="0.05")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    job = lines[0].split()[1]
    assert lines[0] == f"job {job} accepted"
    assert f"saved sdbot-output/{job}/{job}-1.png" in lines
    assert (tmp_path / "sdbot-output" / job / f"{job}-1.png").is_file()
    assert (tmp_path / "sdbot-data" / "sdbot.sqlite3").is_file()


def test_check_on_the_local_backend(tmp_path: Path) -> None:
    result = sdbot(tmp_path, "check")
    assert result.returncode == 0
    assert "local-preview: InService" in result.stdout
    assert "store: SQLite sdbot-data/sdbot.sqlite3, schema version " in result.stdout
    assert "replicas seen in the last 10 minutes: 0" in result.stdout
    ran = sdbot(tmp_path, "console", stdin="help\n", SDBOT_REPLICA_ID="box-1")
    assert ran.returncode == 0
    result = sdbot(tmp_path, "check")
    assert "replicas seen in the last 10 minutes: 1" in result.stdout
    assert "replica box-1: seen " in result.stdout
    assert "0 job(s) held, 0 stale write(s) refused" in result.stdout


def test_bad_configuration_exits_2_naming_the_setting(tmp_path: Path) -> None:
    result = sdbot(tmp_path, "run", SDBOT_MAX_SIDE="huge")
    assert result.returncode == 2
    assert "SDBOT_MAX_SIDE" in result.stderr
    result = sdbot(tmp_path, "run", SLACK_BOT_TOKEN="xoxb-1-2-abc", SDBOT_BACKEND="local")
    assert result.returncode == 2
    assert "SLACK_APP_TOKEN" in result.stderr


def test_logs_go_to_stderr_and_stdout_stays_line_oriented(tmp_path: Path) -> None:
    result = sdbot(tmp_path, "console", stdin="help\nimgtoimg\n", SDBOT_LOG_LEVEL="DEBUG")
    assert result.returncode == 0
    assert "error: unknown command `imgtoimg`" in result.stdout
    assert "INFO" not in result.stdout and "DEBUG" not in result.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_port_serves_health_and_metrics_beside_the_console(tmp_path: Path) -> None:
    port = str(_free_port())
    assert sdbot(tmp_path, "health", SDBOT_METRICS_PORT=port).returncode == 1  # nothing yet
    (tmp_path / "in.png").write_bytes(png())
    with running_bot(tmp_path, SDBOT_METRICS_PORT=port, SDBOT_LOCAL_DELAY="0.05") as bot:
        assert bot.stdin is not None and bot.stdout is not None and bot.stderr is not None
        for line in bot.stderr:  # the server's log line says it listens
            if f"operators' HTTP endpoints on port {port}" in line:
                break
        bot.stdin.write("img2img a cat image=in.png\n")
        bot.stdin.flush()
        for line in bot.stdout:
            if line.startswith("saved "):
                break
        health = sdbot(tmp_path, "health", SDBOT_METRICS_PORT=port)
        assert health.returncode == 0 and '"ok"' in health.stdout
        ready = sdbot(tmp_path, "health", "--ready", SDBOT_METRICS_PORT=port)
        assert ready.returncode == 0, ready.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
        assert 'sdbot_jobs_created_total{command="img2img",platform="console"} 1.0' in text
        assert "a cat" not in text
        bot.stdin.close()
        assert bot.wait(timeout=60) == 0


def test_a_deleted_data_folder_stops_the_bot_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(png())
    with running_bot(tmp_path, SDBOT_LOCAL_DELAY="0.05") as bot:
        assert bot.stdin is not None and bot.stdout is not None and bot.stderr is not None
        bot.stdin.write("img2img a cat image=in.png\n")
        bot.stdin.flush()
        for line in bot.stdout:
            if line.startswith("saved "):
                break
        shutil.rmtree(tmp_path / "sdbot-data")
        # The bot may notice before this line comes (the first job's last write, or its look
        # at the file): then it is refused, or never read.
        with contextlib.suppress(BrokenPipeError):
            bot.stdin.write("img2img a dog image=in.png\n")
            bot.stdin.flush()
        # stdin stays open: the bot stops on its own, without waiting for more input.
        assert bot.wait(timeout=60) == 1
        out, err = bot.stdout.read(), bot.stderr.read()
    assert "accepted" not in out  # the dog's job was not acknowledged into a deleted file
    refusals = [line for line in out.splitlines() if line.startswith("error:")]
    assert all("deleted or replaced" in line for line in refusals), refusals
    assert "sdbot: stopped: the job database" in err and "deleted or replaced" in err
    assert "Traceback" not in err


# The libraries of the platforms, backends and store a run may be configured for.
_OPTIONAL_LIBRARIES = ("discord", "slack_bolt", "slack_sdk", "boto3", "botocore", "asyncpg")


def _libraries_loaded(tmp_path: Path, **env: str) -> list[str]:
    """The optional libraries loaded by composing the bot (app, adapters) for `env`."""
    code = (
        "import json, sys\n"
        "from adapters.cli import chat_adapters, load_config, make_app\n"
        "settings = load_config()\n"
        "chat_adapters(make_app(settings), settings)\n"
        f"wanted = {_OPTIONAL_LIBRARIES!r}\n"
        "print(json.dumps([n for n in sys.modules if n.split('.')[0] in wanted]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(PYTHONPATH=str(ROOT), **env),
    )
    assert result.returncode == 0, result.stderr
    return sorted({name.split(".")[0] for name in json.loads(result.stdout)})


def test_the_console_on_the_local_backend_loads_no_platform_or_cloud_library(
    tmp_path: Path,
) -> None:
    """Issue 11: discord.py, Slack Bolt, boto3 and asyncpg weigh ~30 MB before any job; a run
    loads only what it is configured for."""
    assert _libraries_loaded(tmp_path) == []


def test_a_configured_platform_and_backend_load_their_libraries(tmp_path: Path) -> None:
    loaded = _libraries_loaded(
        tmp_path,
        DISCORD_TOKEN="x",
        ESD_API_URL="http://127.0.0.1:9/prod",
        ESD_API_KEY="k",
    )
    assert loaded == ["boto3", "botocore", "discord"]
