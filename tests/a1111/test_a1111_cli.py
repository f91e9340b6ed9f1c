"""`sdbot` with `backend = "a1111"`: configuration, `check` and a console job, as a process."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    clean_env,
    fast_config,
    png,
)

from adapters.cli import RunSettings, load_config, make_app, make_backend
from adapters.web.metrics import Metrics
from bot.errors import ConfigError
from cloud.a1111 import A1111Backend, A1111Settings
from tests.a1111.fake_webui import FakeWebUI, oom

ROOT = Path(__file__).resolve().parents[2]
AUTH = "sdbot:gpu-box-pa55"


async def sdbot(tmp_path: Path, *args: str, stdin: str = "", **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.cli",
        *args,
        cwd=tmp_path,
        env=clean_env(**env, PYTHONPATH=str(ROOT)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_configuration(tmp_path: Path) -> None:
    env = {"SDBOT_BACKEND": "a1111", "A1111_API_URL": "http://gpu:7860", "A1111_API_AUTH": AUTH}
    config = load_config(env)
    a1111 = config[A1111Settings]
    assert (config[RunSettings].backend, a1111.a1111_api_url, a1111.a1111_concurrency) == (
        "a1111",
        "http://gpu:7860",
        1,
    )
    assert "pa55" not in repr(a1111)
    assert isinstance(make_backend(config), A1111Backend)
    with pytest.raises(ConfigError, match="A1111_API_URL is not set"):
        load_config({"SDBOT_BACKEND": "a1111"})
    with pytest.raises(ConfigError, match="user:password"):
        load_config(env | {"A1111_API_AUTH": "justatoken"})
    with pytest.raises(ConfigError, match="a1111_concurrency"):
        load_config(env | {"SDBOT_A1111_CONCURRENCY": "0"})
    with pytest.raises(ConfigError, match="must not hold credentials"):
        make_backend(load_config(env | {"A1111_API_URL": "http://u:p@gpu:7860"}))


async def test_check_reports_version_models_and_samplers(tmp_path: Path) -> None:
    async with FakeWebUI(auth=AUTH) as fake:
        env = {"SDBOT_BACKEND": "a1111", "A1111_API_URL": fake.url, "A1111_API_AUTH": AUTH}
        code, out, err = await sdbot(tmp_path, "check", **env)
        assert code == 0, err
        assert "WebUI version: v1.10.1" in out
        assert "checkpoints (2): sdbot-preview.safetensors, dreamshaper_8.safetensors" in out
        assert "samplers (31): DPM++ 2M Karras," in out
        assert "check passed" in out
        assert "pa55" not in out + err
        code, out, _ = await sdbot(tmp_path, "check", **(env | {"A1111_API_AUTH": "sdbot:wrong"}))
        assert code == 1
        assert "refused the bot's credentials" in out


async def test_a_console_job_on_the_webui(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(png(96, 64))
    async with FakeWebUI() as fake:
        code, out, err = await sdbot(
            tmp_path,
            "console",
            stdin="img2img a cat image=in.png seed=5\n",
            SDBOT_BACKEND="a1111",
            A1111_API_URL=fake.url,
        )
    assert code == 0, err
    job = out.splitlines()[0].split()[1]
    assert f"saved sdbot-output/{job}/{job}-1.png" in out.splitlines()
    [received] = fake.received
    assert received.body["seed"] == 5 and received.body["prompt"] == "a cat"


async def test_webui_requests_are_counted_by_route_and_status(tmp_path: Path) -> None:
    # As for ESD's REST API (adapters.web.metrics.backend_trace): the composition root hands
    # the WebUI client a trace, so operators see its requests and errors per route.
    metrics = Metrics()
    async with FakeWebUI() as fake:
        config = fast_config(tmp_path, backend="a1111", a1111_api_url=fake.url)
        app = make_app(config, metrics)
        adapter = RecordingAdapter()
        app.add_adapter(adapter)
        fake.fail_next.append(oom())  # the first job: CUDA out of memory, a 500
        async with app:
            for prompt in ("a hat", "a cat"):
                job = await app.dispatcher.handle_text(
                    chat_caller(),
                    f"img2img {prompt} steps=4",
                    [adapter.attach("a.png", png())],
                    RecordingResponder(),
                )
                assert job is not None
                await asyncio.wait_for(app.runner.wait_idle(), 30)

    def count(method: str, route: str, status: str) -> float:
        labels = {"method": method, "route": route, "status": status}
        return metrics.registry.get_sample_value("sdbot_backend_http_requests_total", labels) or 0

    assert count("POST", "/sdapi/v1/img2img", "500") == 1
    assert count("POST", "/sdapi/v1/img2img", "200") == 1
    assert count("GET", "/sdapi/v1/sd-models", "200") >= 1
    text = metrics.exposition().decode()
    assert "a hat" not in text and "a cat" not in text and fake.url not in text
