"""End to end: console → real core → `EsdBackend` → the ESD-compatible server on loopback."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import (
    IMAGE_MODES,
    ConsoleRun,
    FastSettings,
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    job_ids,
    make_app,
    png,
    run_image_mode,
    saved,
    size_of,
    states,
)

from bot.model import BackendStatus, JobState
from cloud.esd import EsdBackend, EsdConfig
from cloud.esd.config import EsdSettings
from cloud.esd_server import running_server
from tests.esd.esd_kit import (
    ASYNC,
    CHECKPOINT,
    KEY,
    esd_config,
    params,
    server_config,
    settle,
    state_of,
    with_faults,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from bot.ports import PollTarget


class EsdConsole(ConsoleRun):
    """A console session over the real core, wired to ESD the way `sdbot` wires it."""

    def __init__(self, tmp_path: Path, url: str, **overrides: Any) -> None:
        self.url = url

        def backend_for(config: FastSettings) -> EsdBackend:
            # As the composition root builds it, with list scans never reused (polls are 10 ms).
            esd = EsdConfig.from_config(config[EsdSettings], config.core)
            esd = replace(
                esd, list_interval=0.0, retry=replace(esd.retry, backoff=0.01, max_backoff=0.08)
            )
            return EsdBackend(esd)

        super().__init__(
            tmp_path,
            backend_for=backend_for,
            backend="esd",
            esd_api_url=url,
            esd_api_key=KEY,
            **overrides,
        )


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[EsdConsole]:
    async with running_server(server_config(job_seconds=(0.02, 0.05))) as url:
        run = EsdConsole(tmp_path, url)
        async with run.app:
            yield run


async def test_img2img_runs_on_esd(console: EsdConsole) -> None:
    image = console.write("cat.png", png(200, 150))
    lines = await console.run(f"img2img a watercolor cat image={image} count=2 seed=7")
    [job] = job_ids(lines)
    assert states(lines, job)[-1] == "succeed", lines
    files = saved(lines, job)
    assert len(files) == 2
    assert {size_of(f.read_bytes()) for f in files} == {(200, 152)}
    [row] = state_of(console.url).jobs.values()
    assert (row.task_type, row.inference_type, row.endpoint.name) == (
        "img2img",
        "Async",
        "sd-async-local",
    )


@pytest.mark.parametrize(("command", "extra"), IMAGE_MODES)
async def test_every_image_mode_runs_on_esd(console: EsdConsole, command: str, extra: str) -> None:
    await run_image_mode(console, command, extra)


async def test_interrogate_runs_on_esd(console: EsdConsole) -> None:
    image = console.write("in.png", png(64, 64))
    lines = await console.run(
        f"interrogate image={image}", f"interrogate image={image} method=deepbooru"
    )
    clip, booru = job_ids(lines)
    captions = {
        line.split(":", 1)[0]: line.split(": ", 1)[1]
        for line in lines
        if line.startswith("caption ")
    }
    assert captions[f"caption {clip}"].startswith("a ")
    assert "," in captions[f"caption {booru}"]
    assert sorted(j.task_type for j in state_of(console.url).jobs.values()) == [
        "interrogate_clip",
        "interrogate_deepbooru",
    ]


async def test_jobs_source_cloud_lists_the_backends_history(console: EsdConsole) -> None:
    image = console.write("in.png", png(64, 64))
    first = await console.run(f"img2img one image={image}", f"img2img two image={image}")
    assert len(job_ids(first)) == 2
    lines = await console.run("jobs source=cloud")
    backend_ids = [j.id for j in state_of(console.url).jobs.values()]
    listed = [line for line in lines if " → img2img → succeed → " in line]
    assert sorted(line.rsplit(" → ", 1)[1] for line in listed) == sorted(backend_ids)
    assert await console.run("jobs source=cloud type=interrogate_clip") == ["no backend jobs match"]
    # An id from the list names the bot job that ran as it.
    bot_ids = set(job_ids(first))
    for backend_id in backend_ids:
        details = await console.run(f"job {backend_id}")
        assert any(bot_id in line for line in details for bot_id in bot_ids), details
        assert any(backend_id in line for line in details), details
    unknown = "0f0f0f0f-0000-4000-8000-000000000000"
    assert await console.run(f"job {unknown}") == [f"error: the backend has no job `{unknown}`"]


async def test_job_shows_a_backend_job_the_bot_did_not_start_to_admins_only(
    console: EsdConsole,
) -> None:
    # Someone else on the same ESD stack (a WebUI user) runs a job, and another one fails.
    async with EsdBackend(esd_config(console.url)) as webui:
        theirs = (await webui.submit("x", params(), png(), None)).backend_id
        failing = (await webui.submit("y", params(), png(), None)).backend_id
        assert (await settle(webui, theirs)).state is JobState.SUCCEED
        await settle(webui, failing)
    state = state_of(console.url)
    state.jobs[failing].status = JobState.FAILED
    state.jobs[failing].sagemaker_raw = "{'failureReason': 'CUDA out of memory'}"
    listed = await console.run("jobs source=cloud")
    assert any(line.endswith(f" → img2img → succeed → {theirs}") for line in listed)
    lines = await console.run(f"job {theirs}")
    assert lines[0].endswith(f" → img2img → succeed → {theirs}")
    assert "a backend job the bot did not start here" in lines
    assert f"endpoint `{ASYNC}`" in lines and f"model `{CHECKPOINT}`" in lines
    assert "owner `api`" in lines and "1 result image(s)" in lines
    assert any(line.startswith("Steps: ") or "Seed: " in line for line in lines)  # infotext
    [image] = saved(lines, theirs)
    assert image.parent.name == theirs
    assert size_of(image.read_bytes()) == (params().width, params().height)
    failed = await console.run(f"job {failing}")
    assert failed[0].endswith(f" → img2img → failed → {failing}")
    assert "failed: CUDA out of memory" in failed and not saved(failed, failing)
    # People who are not admins see only their own jobs, and no backend's history.
    responder = RecordingResponder()
    await console.app.dispatcher.handle_text(chat_caller("bob"), f"job {theirs}", [], responder)
    [refusal] = responder.refusals
    assert "only admins can look at the backend's own jobs" in refusal
    assert responder.replies == []


async def test_jobs_source_cloud_type_interrogate_lists_both_task_types(
    console: EsdConsole,
) -> None:
    image = console.write("in.png", png(64, 64))
    lines = await console.run(
        f"interrogate image={image} method=clip", f"interrogate image={image} method=deepbooru"
    )
    assert len(job_ids(lines)) == 2
    # Both finished: their rows carry `caption`, and real ESD cannot list a page holding one.
    answer = await console.run("jobs source=cloud type=interrogate")
    assert len(answer) == 1
    assert "ESD cannot list its interrogate_" in answer[0]
    assert "`job <id>`" in answer[0]
    rows = list(state_of(console.url).jobs.values())
    for row in rows:
        row.caption = None  # as rows of jobs still running: listable
    answer = await console.run("jobs source=cloud type=interrogate")
    listed = sorted(line.split(" → ")[1] for line in answer)
    assert listed == ["interrogate_clip", "interrogate_deepbooru"]


async def test_backend_failures_reach_the_user(console: EsdConsole) -> None:
    image = console.write("in.png", png(64, 64))
    with_faults(console.url, fail_rate=1.0)
    lines = await console.run(f"img2img x image={image}")
    [job] = job_ids(lines)
    [failure] = [line for line in lines if line.startswith(f"job {job} failed")]
    assert "injected failure" in failure
    with_faults(console.url, fail_rate=0.0, fail_silent_rate=1.0)
    lines = await console.run(f"img2img y image={image}")
    [job] = job_ids(lines)
    [failure] = [line for line in lines if line.startswith(f"job {job} failed")]
    assert "the endpoint returned no images" in failure
    state_of(console.url).set_endpoint_status("sd-async-local", "Updating")
    lines = await console.run("endpoints", f"img2img z image={image}")
    assert any("sd-async-local" in line and "Updating" in line for line in lines), lines
    # Known before the ack: refused, nothing stored.
    assert job_ids(lines) == []
    [refusal] = [line for line in lines if line.startswith("error: ")]
    assert "no Async endpoint is InService" in refusal and "(Updating, Async)" in refusal


class _Unreadable(EsdBackend):
    """`EsdBackend` whose status reads answer nothing: what the job's row says can only come
    from the submission."""

    async def statuses(self, targets: Sequence[PollTarget]) -> dict[str, BackendStatus]:
        return {}


async def test_a_job_esd_started_is_inprogress_from_its_start(tmp_path: Path) -> None:
    # ESD's Async start answers `inprogress` (reference/esd-api.md §4.3). The row and the status
    # message say so at once, not at the first status read: a list scan finding two thousand
    # started jobs wrote two thousand rows at once, and deliveries waited behind them.
    async with running_server(server_config(job_seconds=(3600.0, 3600.0))) as url:
        async with EsdBackend(esd_config(url)) as esd:
            assert (await esd.submit("bot1", params(), png(), None)).started
        config = fast_config(tmp_path, backend="esd", esd_api_url=url, esd_api_key=KEY)
        app = make_app(config, _Unreadable(esd_config(url)))
        adapter = RecordingAdapter()
        app.add_adapter(adapter)
        async with app:
            job = await app.dispatcher.handle_text(
                chat_caller(), "img2img x", [adapter.attach("a.png", png())], RecordingResponder()
            )
            assert job is not None
            # The status message is edited after the row is written: wait for both.
            shown: JobState | None = None
            for _ in range(400):
                stored = await app.store.get(job.id)
                if stored is not None and stored.status_message is not None:
                    shown = adapter.status_edits[stored.status_message][-1].state
                if stored is not None and stored.started_at and shown is JobState.INPROGRESS:
                    break
                await asyncio.sleep(0.025)
            assert stored is not None and stored.backend_id
            assert stored.state is JobState.INPROGRESS
            assert shown is JobState.INPROGRESS
            assert state_of(url).requests["list_inferences"] == 0
