"""Restart safety (SPEC §3 step 8): a bot that dies at any step resumes and delivers once.

In-process scenarios stop the core at exact points (the store commits every step, so what a
crash leaves behind is what these leave behind); the console scenarios SIGKILL a real `sdbot`
process and start it again on the same data folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import (
    FastSettings,
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    make_app,
    png,
)

from bot.errors import UnreadableJobError
from bot.model import Delivery, JobState
from bot.retry import RetryPolicy
from bot.views import ResultView
from cloud.local import LocalBackend, LocalBackendConfig

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from bot.model import Conversation, Submitted
    from cloud.local.backend import _LocalJob

ROOT = Path(__file__).resolve().parents[1]


async def _until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


async def _crash_at(config: FastSettings, adapter: RecordingAdapter, step: str) -> str:
    """Start a job and stop the bot abruptly once it reaches `step`; return the job id."""
    app = make_app(config)
    app.add_adapter(adapter)
    await app.start()
    job = await app.dispatcher.handle_text(
        chat_caller(),
        "img2img a cat count=2",
        [adapter.attach("a.png", png())],
        RecordingResponder(),
    )
    assert job is not None

    async def reached() -> bool:
        stored = await app.store.get(job.id)
        assert stored is not None
        if step == "accepted":
            return True
        if step == "submitted":
            return stored.backend_id is not None
        if step == "polling":
            return stored.state is JobState.INPROGRESS
        if step == "posting":
            hung = isinstance(adapter, HangingAdapter) and adapter.posted_while_hanging
            return stored.delivery is Delivery.POSTING and hung
        raise AssertionError(step)

    await _until(reached)
    await app.runner.aclose()  # every driver stops where it is, mid-step
    await app.aclose()
    return job.id


class HangingAdapter(RecordingAdapter):
    """Posts the result, then never returns: the bot dies before it records the post."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = True
        self.posted_while_hanging = False

    async def post_result(self, thread: Conversation, result: ResultView) -> Sequence[str]:
        posted = await super().post_result(thread, result)
        if self.hang:
            self.posted_while_hanging = True
            await asyncio.Event().wait()
        return posted


@pytest.mark.usefixtures("scenario_backend")  # on the local and the WebUI backend
@pytest.mark.parametrize("step", ["accepted", "submitted", "polling", "posting"])
async def test_restart_after_each_step_delivers_exactly_once(tmp_path: Path, step: str) -> None:
    config = fast_config(tmp_path, local_delay=0.6 if step == "polling" else 0.05)
    adapter = HangingAdapter()
    job_id = await _crash_at(config, adapter, step)
    adapter.hang = False

    app = make_app(config)
    app.add_adapter(adapter)
    async with app:
        await app.runner.wait_idle()
        job = await app.store.get(job_id)
    assert job is not None
    assert job.state is JobState.SUCCEED
    assert job.delivery is Delivery.DONE
    results = [r for r in adapter.results() if r.job_id == job_id]
    assert len(results) == 1
    assert len(results[0].images) == 2
    # The restarted bot edits the status message it posted before; only a crash between
    # posting the status and recording its id (a window of one store write) posts a second.
    assert len([p for p in adapter.posts if p.kind == "status"]) in (1, 2)


def _unknown_sampler(stored: str) -> str:
    record = json.loads(stored)  # {"v": 2, "options": {…}} (bot.records)
    record["options"]["sampler"] = "Euler Z"
    return json.dumps(record)


@pytest.mark.parametrize(
    ("column", "damage", "said"),
    [
        # A choice a newer release dropped, in the versioned options (bot.records).
        ("options", _unknown_sampler, "`sampler` is `Euler Z`"),
        # Damage below the records: half a JSON document, a time that is not one.
        ("attachments", lambda stored: stored[: len(stored) // 2], "cannot be read"),
        ("created_at", lambda _: "yesterday-ish", "cannot be read"),
    ],
)
async def test_one_unreadable_row_fails_alone_and_the_other_jobs_resume(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    column: str,
    damage: Callable[[str], str],
    said: str,
) -> None:
    config = fast_config(tmp_path, local_delay=0.6)
    adapter = RecordingAdapter()
    app = make_app(config)
    app.add_adapter(adapter)
    ids = []
    async with app:
        for prompt in ("a cat", "a dog", "a bird"):
            job = await app.dispatcher.handle_text(
                chat_caller(),
                f"img2img {prompt} sampler=Euler",
                [adapter.attach("a.png", png())],
                RecordingResponder(),
            )
            assert job is not None
            ids.append(job.id)
        await app.runner.aclose()  # stopped mid-run: all three are unfinished
    good, bad, other = ids
    # The damage is done to the real file, as a bad disk or a hand edit would leave it.
    with sqlite3.connect(config.data_dir / "sdbot.sqlite3") as db:
        [stored] = db.execute(f"SELECT {column} FROM jobs WHERE id = ?", (bad,)).fetchone()
        db.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (damage(stored), bad))
    db.close()

    app = make_app(config)
    app.add_adapter(adapter)
    async with app:
        await app.runner.wait_idle()
        for job_id in (good, other):
            job = await app.store.get(job_id)
            assert job is not None and job.state is JobState.SUCCEED
            assert job.delivery is Delivery.DONE
        # Asked about, the bad job answers with why it failed, not an unexpected error.
        with pytest.raises(UnreadableJobError, match=said):
            await app.store.get(bad)
    with sqlite3.connect(config.data_dir / "sdbot.sqlite3") as db:
        state, delivery, error = db.execute(
            "SELECT state, delivery, error FROM jobs WHERE id = ?", (bad,)
        ).fetchone()
    db.close()
    assert (state, delivery) == ("failed", "done") and said in error
    assert {r.job_id for r in adapter.results()} == {good, other}
    [logged] = [r for r in caplog.records if r.levelname == "ERROR" and bad in r.getMessage()]
    assert said in logged.getMessage()


@pytest.mark.usefixtures("scenario_backend")
async def test_a_result_that_cannot_be_posted_stays_pending_and_is_posted_after_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.jobs

    monkeypatch.setattr(bot.jobs, "_POST_RETRY", RetryPolicy(attempts=2, backoff=0.01))
    config = fast_config(tmp_path)
    adapter = RecordingAdapter()
    adapter.fail_posts = 3
    app = make_app(config)
    app.add_adapter(adapter)
    async with app:
        job = await app.dispatcher.handle_text(
            chat_caller(), "img2img x", [adapter.attach("a.png", png())], RecordingResponder()
        )
        await app.runner.wait_idle()
        assert job is not None
        stored = await app.store.get(job.id)
        assert stored is not None and stored.delivery is Delivery.POSTING
    assert adapter.results() == []
    app = make_app(config)
    app.add_adapter(adapter)
    async with app:
        await app.runner.wait_idle()
    assert [r.job_id for r in adapter.results()] == [job.id]


# -- SIGKILL of a real console process ------------------------------------------------------


def _console(tmp_path: Path, *, delay: float) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "SDBOT_LOCAL_DELAY": str(delay),
        "SDBOT_POLL_INTERVAL": "0.05",
        "SDBOT_POLL_MAX_INTERVAL": "0.2",
        "SDBOT_DATA_DIR": str(tmp_path / "data"),
        "SDBOT_OUTPUT_DIR": str(tmp_path / "out"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "adapters.cli", "console"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.parametrize(
    ("kill_after", "delay"),
    # after the ack, after the status message (before the backend picks it up), while polling
    [(" accepted", 1.0), (" created", 1.0), (" inprogress", 1.5)],
)
def test_sigkill_then_restart_delivers_once(tmp_path: Path, kill_after: str, delay: float) -> None:
    (tmp_path / "in.png").write_bytes(png())
    seen = []
    with _console(tmp_path, delay=delay) as first:
        assert first.stdin is not None and first.stdout is not None
        first.stdin.write("img2img a cat image=in.png count=2\n")
        first.stdin.flush()
        for line in first.stdout:
            seen.append(line.rstrip("\n"))
            if line.rstrip("\n").split(" — ")[0].endswith(kill_after):
                break
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    job_id = seen[0].split()[1]
    assert not any(line.startswith("saved ") for line in seen)

    second = _console(tmp_path, delay=delay)
    out, _ = second.communicate("", timeout=60)
    assert second.returncode == 0
    saved = [line for line in out.splitlines() if line.startswith("saved ")]
    assert len(saved) == 2
    assert f"job {job_id} succeed" in out
    assert sorted(p.name for p in (tmp_path / "out" / job_id).iterdir()) == [
        f"{job_id}-1.png",
        f"{job_id}-2.png",
    ]
    # A third start finds nothing left to do and posts nothing again.
    third = _console(tmp_path, delay=delay)
    out, _ = third.communicate("", timeout=60)
    assert "saved " not in out


class CountingBackend(LocalBackend):
    """The local backend that remembers every job it started and can stop dead at one point:
    `hang_at` "created" (the id was handed to the bot, not yet started) or "started" (started,
    the bot not yet told), as if the process were killed there."""

    def __init__(self, config: FastSettings, started: set[str], hang_at: str | None = None) -> None:
        super().__init__(
            LocalBackendConfig(delay=config.local_delay, state_dir=config.data_dir / "local")
        )
        self.started = started
        self.hang_at = hang_at
        self.hanging = asyncio.Event()

    async def _hang(self, where: str) -> None:
        if self.hang_at == where:
            self.hanging.set()
            await asyncio.Event().wait()

    async def _created(
        self, backend_id: str, created: Callable[[str], Awaitable[None]] | None
    ) -> None:
        await super()._created(backend_id, created)
        await self._hang("created")

    def _launch(self, *args: Any, **kwargs: Any) -> _LocalJob:
        record = super()._launch(*args, **kwargs)
        self.started.add(record.backend_id)
        return record

    async def submit(self, *args: Any, **kwargs: Any) -> Submitted:
        submitted = await super().submit(*args, **kwargs)
        await self._hang("started")
        return submitted


@pytest.mark.parametrize("hang_at", ["created", "started"])
async def test_a_kill_around_the_backend_start_never_runs_the_job_twice(
    tmp_path: Path, hang_at: str
) -> None:
    config = fast_config(tmp_path)
    adapter = RecordingAdapter()
    started: set[str] = set()
    first = CountingBackend(config, started, hang_at)
    app = make_app(config, first)
    app.add_adapter(adapter)
    await app.start()
    job = await app.dispatcher.handle_text(
        chat_caller(), "img2img a cat", [adapter.attach("a.png", png())], RecordingResponder()
    )
    assert job is not None
    await asyncio.wait_for(first.hanging.wait(), 10)
    await app.runner.aclose()  # the bot dies right there
    await app.aclose()

    app = make_app(config, CountingBackend(config, started))
    app.add_adapter(adapter)
    async with app:
        await app.runner.wait_idle()
        stored = await app.store.get(job.id)
    assert stored is not None
    assert stored.state is JobState.SUCCEED
    assert len(started) == 1  # one backend job ever started for this bot job
    assert stored.backend_id in started
    assert len([r for r in adapter.results() if r.job_id == job.id]) == 1
