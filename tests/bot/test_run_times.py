"""The progress estimate of `inprogress` status edits reads an endpoint's recent run times from
the store once for many jobs: a scan that sees many jobs start at once must not put one store
query per job ahead of the deliveries (issue 16)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    ScriptedBackend,
    chat_caller,
    fast_config,
    png,
)

from bot.app import BotApp
from bot.clock import SystemClock
from bot.model import JobState
from bot.store.sqlite import SqliteJobStore

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


class _CountingStore(SqliteJobStore):
    """The real SQLite store, counting the run-time reads (and failing the first `fail`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.run_time_reads = 0
        self.fail = 0

    async def recent_durations(self, endpoint: str, limit: int = 20) -> Sequence[float]:
        self.run_time_reads += 1
        if self.fail:
            self.fail -= 1
            raise OSError("disk I/O error")
        return await super().recent_durations(endpoint, limit)


class _Clock(SystemClock):
    """The system clock with monotonic time that moves only when a test moves it."""

    def __init__(self) -> None:
        self.at = 1000.0

    def monotonic(self) -> float:
        return self.at


async def _all_in_progress(adapter: RecordingAdapter, count: int) -> None:
    for _ in range(400):
        edits = adapter.status_edits.values()
        started = [e for e in edits if any(v.state is JobState.INPROGRESS for v in e)]
        if len(started) == count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the jobs never showed inprogress")


async def test_jobs_that_start_together_read_the_run_times_once(tmp_path: Path) -> None:
    config = fast_config(tmp_path, job_timeout=3600.0)
    store = _CountingStore(tmp_path / "sdbot.sqlite3")
    clock = _Clock()
    app = BotApp(config.core, backend=ScriptedBackend("hang"), store=store, clock=clock)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        for n in range(12):
            await app.dispatcher.handle_text(
                chat_caller(f"u{n}"),
                "img2img x",
                [adapter.attach("a.png", png())],
                RecordingResponder(),
            )
        await _all_in_progress(adapter, 12)
        # Twelve `inprogress` edits, each with a progress estimate, and one store read.
        assert store.run_time_reads == 1

        # Ten seconds on, the next edit reads them again (a finished job may have added one).
        before = store.run_time_reads
        clock.at += 10.0
        await app.runner._run_times.of("local-preview")
        assert store.run_time_reads == before + 1

        # A failed read is not kept: the next edit asks again.
        store.fail = 1
        clock.at += 10.0
        with pytest.raises(OSError):
            await app.runner._run_times.of("local-preview")
        assert await app.runner._run_times.of("local-preview") == []
        assert store.run_time_reads == before + 3
