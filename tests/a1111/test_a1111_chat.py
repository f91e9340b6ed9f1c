"""The WebUI backend under the real core: queue position, measured progress, preview and the
resubmission note reach the status message; results are delivered once."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from scenario_kit import (
    ConsoleRun,
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    make_app,
    png,
    saved,
)

from bot.model import Conversation, JobState
from cloud.a1111 import A1111Backend
from cloud.a1111.backend import RESUBMITTED
from tests.a1111.conftest import webui_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from scenario_kit import FastSettings

    from bot.app import BotApp
    from bot.views import StatusView
    from tests.a1111.fake_webui import FakeWebUI


async def start(app: BotApp, adapter: RecordingAdapter, user: str) -> str:
    job = await app.dispatcher.handle_text(
        chat_caller(user), "img2img a hat steps=8", [adapter.attach("a.png", png())],
        RecordingResponder(),
    )  # fmt: skip
    assert job is not None
    return job.id


async def edit_where(
    adapter: RecordingAdapter, job_id: str, test: Callable[[StatusView], bool]
) -> StatusView:
    """The first status edit of the job that passes `test`, waiting for it (10 s at most)."""
    async with asyncio.timeout(10):
        while True:
            for edits in adapter.status_edits.values():
                for view in edits:
                    if view.job_id == job_id and test(view):
                        return view
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def chat_on(
    webui: FakeWebUI, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[BotApp, RecordingAdapter]]:
    """The real core on the WebUI backend with a recording chat adapter; the WebUI holds jobs."""
    config = fast_config(tmp_path, **overrides)
    app = make_app(config, A1111Backend(webui_config(webui.url, tmp_path)))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    webui.hold()
    async with app:
        yield app, adapter


async def test_status_shows_queue_position_then_measured_progress_and_preview(
    webui: FakeWebUI, tmp_path: Path
) -> None:
    async with chat_on(webui, tmp_path, status_interval=0.05) as (app, adapter):
        first = await start(app, adapter, "alice")
        await webui.wait_for("step")
        second = await start(app, adapter, "bob")
        queued = await edit_where(adapter, second, lambda v: "position 1 in the queue" in v.text)
        assert queued.state is JobState.CREATED
        running = await edit_where(adapter, first, lambda v: v.preview is not None)
        assert running.state is JobState.INPROGRESS
        [progress_line] = [line for line in running.text.splitlines() if "elapsed" in line]
        assert "%" in progress_line and "(estimate)" not in progress_line
        webui.release()
        await app.runner.wait_idle()
    results = adapter.results()
    assert sorted(r.job_id for r in results) == sorted([first, second])
    assert all(r.state is JobState.SUCCEED for r in results)
    final = [adapter.status_edits[m][-1] for m in adapter.status_edits]
    assert all(view.preview is None for view in final)


async def test_a_webui_restart_is_told_in_the_status_and_the_result_comes_once(
    webui: FakeWebUI, tmp_path: Path
) -> None:
    async with chat_on(webui, tmp_path) as (app, adapter):
        job_id = await start(app, adapter, "alice")
        await webui.wait_for("step")
        await webui.restart()
        await edit_where(adapter, job_id, lambda v: RESUBMITTED in v.text)
        webui.release()
        await app.runner.wait_idle()
        job = await app.store.get(job_id)
    assert job is not None and job.state is JobState.SUCCEED
    assert RESUBMITTED in job.notes
    [result] = adapter.results()
    assert len(result.images) == 1 and len(webui.received) == 2


async def test_a_job_waiting_in_the_queue_is_not_timed_out_as_stuck(
    webui: FakeWebUI, tmp_path: Path
) -> None:
    async with chat_on(webui, tmp_path, status_interval=0.05, created_timeout=0.2) as (
        app,
        adapter,
    ):
        await start(app, adapter, "alice")
        await webui.wait_for("step")
        second = await start(app, adapter, "bob")

        def waited(view: StatusView) -> bool:
            # "0.5 s elapsed": well past created_timeout, still queued.
            words = view.text.split()
            return "elapsed" in words and float(words[words.index("elapsed") - 2]) >= 0.5

        view = await edit_where(adapter, second, waited)
        assert view.state is JobState.CREATED and "position 1 in the queue" in view.text
        webui.release()
        await app.runner.wait_idle()
    assert all(r.state is JobState.SUCCEED for r in adapter.results())


async def test_the_console_names_the_live_preview_file_and_removes_it_at_the_end(
    webui: FakeWebUI, tmp_path: Path
) -> None:
    def backend_for(config: FastSettings) -> A1111Backend:
        return A1111Backend(webui_config(webui.url, tmp_path))

    image = tmp_path / "a.png"
    image.write_bytes(png())
    webui.hold()
    async with ConsoleRun(tmp_path, backend_for=backend_for, status_interval=0.05) as console:
        run = asyncio.create_task(console.run(f"img2img image={image} a hat steps=8"))
        async with asyncio.timeout(10):
            while not (lines := [x for x in console.out.getvalue().splitlines() if "preview" in x]):
                await asyncio.sleep(0.01)
        [line] = lines
        word, job_id, path = line.split(" ")
        assert word == "preview" and path == str(
            console.config.output_dir / f"{job_id}.preview.png"
        )
        with Image.open(Path(path)) as preview:
            assert preview.size == (32, 32)
        webui.release()
        out = await run
    assert not await asyncio.to_thread(Path(path).exists)
    assert [x for x in out if "preview" in x] == [line]  # said once, however often it changed
    assert saved(out, job_id)
    assert await console.adapter.find_marker(Conversation("console"), job_id) == [
        str(p) for p in saved(out, job_id)
    ]
