"""Jobs that fail, hang, never start or come back empty: each ends with a clear message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    ScriptedBackend,
    chat_caller,
    fast_config,
    make_app,
    png,
)

from bot.model import Job, JobState


async def run_one(
    tmp_path: Path, backend: ScriptedBackend, **config: Any
) -> tuple[Job, RecordingAdapter]:
    app = make_app(fast_config(tmp_path, **config), backend)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        job = await app.dispatcher.handle_text(
            chat_caller(), "img2img x", [adapter.attach("a.png", png())], RecordingResponder()
        )
        await app.runner.wait_idle()
        assert job is not None
        stored = await app.store.get(job.id)
    assert stored is not None
    return stored, adapter


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        ("fail", "CUDA out of memory"),
        ("fail-silent", "the backend gave no reason"),
        ("empty", "returned no images"),
    ],
)
async def test_failures_are_posted_with_the_reason_and_job_id(
    tmp_path: Path, outcome: str, message: str
) -> None:
    job, adapter = await run_one(tmp_path, ScriptedBackend(outcome))
    assert job.state is JobState.FAILED
    assert message in (job.error or "")
    [result] = adapter.results()
    assert result.error is not None and message in result.error
    assert job.id in result.text and job.status_message is not None
    assert adapter.status_edits[job.status_message][-1].state is JobState.FAILED


async def test_a_job_stuck_in_created_times_out(tmp_path: Path) -> None:
    backend = ScriptedBackend("stuck")
    job, adapter = await run_one(tmp_path, backend, created_timeout=0.3, job_timeout=5.0)
    assert job.state is JobState.FAILED
    assert "stayed `created`" in (job.error or "")
    assert backend.cancelled == [job.backend_id]
    assert adapter.results()[0].error == job.error


async def test_a_job_that_never_finishes_times_out(tmp_path: Path) -> None:
    job, _ = await run_one(tmp_path, ScriptedBackend("hang"), job_timeout=0.4)
    assert job.state is JobState.FAILED
    assert "did not finish the job within" in (job.error or "")


async def test_a_cold_start_is_shown_in_the_status(tmp_path: Path) -> None:
    job, adapter = await run_one(tmp_path, ScriptedBackend(cold=True, delay=0.3))
    assert job.state is JobState.SUCCEED and job.status_message is not None
    texts = [s.text for s in adapter.status_edits[job.status_message]]
    assert any("cold start" in t for t in texts)
