"""Background work survives the unexpected (issue 10): supervised tasks, a cancel that races a
job's completion, failed status posts and deliveries, backend outages, concurrent writes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    ScriptedBackend,
    chat_caller,
    fast_config,
    png,
)

from bot import imaging
from bot.app import BotApp
from bot.clock import SystemClock
from bot.errors import (
    BackendUnavailableError,
    ChatDeliveryError,
    ImageInputError,
    StorageLostError,
)
from bot.model import Delivery, JobState
from bot.ports import LOST_JOB, StoredImage
from bot.retry import RetryPolicy
from bot.store import SqliteJobStore
from bot.tasks import stop, supervise
from cloud.local import LocalBackend, LocalBackendConfig
from commands.options import GenerateOptions

FAST = RetryPolicy(backoff=0.01, max_backoff=0.05)


class FastClock(SystemClock):
    """The system clock whose sleeps last a thousandth of what they say (retention's hour)."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / 1000)


def fast_app(tmp_path: Path, backend: Any = None, **config: Any) -> BotApp:
    settings = fast_config(tmp_path, **config)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return BotApp(
        settings.core,
        backend=backend or LocalBackend(LocalBackendConfig(delay=settings.local_delay)),
        store=SqliteJobStore(settings.data_dir / "sdbot.sqlite3"),
        backoff=FAST,
    )


async def one_job(
    app: BotApp, adapter: RecordingAdapter, text: str = "img2img a cat", user: str = "u1"
) -> str:
    job = await app.dispatcher.handle_text(
        chat_caller(user), text, [adapter.attach("a.png", png())], RecordingResponder()
    )
    assert job is not None
    return job.id


# -- bot.tasks ---------------------------------------------------------------------------------


async def test_stop_does_not_swallow_the_callers_own_cancellation() -> None:
    gate = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await gate.wait()  # still cleaning up when the caller is cancelled
            raise

    target = asyncio.create_task(slow_to_end())
    after: list[str] = []

    async def caller() -> None:
        await stop(target)
        after.append("went on")

    stopping = asyncio.create_task(caller())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    stopping.cancel()
    gate.set()
    await asyncio.gather(stopping, return_exceptions=True)
    assert stopping.cancelled()
    assert after == []
    assert target.cancelled()


async def test_supervise_restarts_a_failing_body_with_its_traceback_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    pauses: list[float] = []

    async def body() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise OSError(f"round {len(runs)} broke")

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    supervised = supervise(
        "sdbot-test", body, backoff=RetryPolicy(backoff=1.0, max_backoff=1.5), sleep=sleep
    )
    await supervised.task
    assert runs == [0, 1, 2]
    assert supervised.restarts == 2
    # Doubling, capped, with equal jitter (bot.retry).
    assert len(pauses) == 2 and 0.5 <= pauses[0] <= 1.0 and 0.75 <= pauses[1] <= 1.5
    logged = [r for r in caplog.records if r.name == "bot.tasks"]
    assert len(logged) == 2 and all(r.exc_info for r in logged)


class FlakySweeps(SqliteJobStore):
    """Retention's first sweep hits a store error that is not one the sweep expects."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.sweeps = 0

    async def expire_images(self, before: Any, limit: int = 500) -> Any:
        self.sweeps += 1
        if self.sweeps == 1:
            raise ValueError("a damaged row")
        return await super().expire_images(before, limit)


async def test_retention_keeps_running_after_an_unexpected_error(tmp_path: Path) -> None:
    config = fast_config(tmp_path)
    store = FlakySweeps(tmp_path / "jobs.sqlite3")
    app = BotApp(
        config.core, backend=LocalBackend(LocalBackendConfig()), store=store, clock=FastClock()
    )
    async with app:
        while store.sweeps < 2:
            await asyncio.sleep(0.01)
        supervised = app.retention.supervised
        assert supervised is not None and supervised.alive
        assert supervised.restarts == 1
        poller = app.poller.supervised
        assert poller is not None and poller.alive


# -- Cancel vs completion ----------------------------------------------------------------------


class GatedPosts(RecordingAdapter):
    """Result posts wait for `gate`: the job has succeeded, its result is not out yet."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def post_result(self, thread: Any, result: Any) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await super().post_result(thread, result)


async def test_a_cancel_that_loses_the_race_to_success_leaves_the_job_delivered(
    tmp_path: Path,
) -> None:
    # The canceller read the job while it ran; by the time the cancel is written the job has
    # succeeded and its result is being posted. The cancel must change nothing and say so.
    app = fast_app(tmp_path, local_delay=0.2)
    adapter = GatedPosts()
    app.add_adapter(adapter)
    async with app:
        job_id = await one_job(app, adapter)
        stale = await app.store.get(job_id)
        while stale is None or stale.state is not JobState.INPROGRESS:
            await asyncio.sleep(0.01)
            stale = await app.store.get(job_id)
        await asyncio.wait_for(adapter.waiting.wait(), 10)
        outcome = await app.runner.cancel(stale)
        adapter.gate.set()
        await asyncio.wait_for(app.runner.wait_idle(), 10)
        job = await app.store.get(job_id)
    assert outcome.state is JobState.SUCCEED
    assert job is not None and job.state is JobState.SUCCEED
    assert job.delivery is Delivery.DONE
    assert len(adapter.results()) == 1


async def test_cancel_completion_and_status_edits_race_to_one_consistent_outcome(
    tmp_path: Path,
) -> None:
    # Jobs finish within a few tens of milliseconds while status edits run every 20 ms, and a
    # cancel arrives at a random moment: whoever is recorded first wins, and users are told so.
    rng = random.Random(10)
    app = fast_app(tmp_path, local_delay=0.03, status_interval=0.02)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    outcomes: list[tuple[str, str]] = []

    async def race(n: int) -> None:
        job_id = await one_job(app, adapter, f"img2img cat {n}", user=f"u{n}")
        await asyncio.sleep(rng.uniform(0, 0.08))
        responder = RecordingResponder()
        await app.dispatcher.handle_text(chat_caller(f"u{n}"), f"cancel {job_id}", [], responder)
        said = " ".join([text for text, _, _ in responder.replies] + responder.refusals)
        outcomes.append((job_id, said))

    async with app:
        await asyncio.gather(*(race(n) for n in range(24)))
        await asyncio.wait_for(app.runner.wait_idle(), 20)
        jobs = {job_id: await app.store.get(job_id) for job_id, _ in outcomes}
    posted = [r.job_id for r in adapter.results()]
    for job_id, said in outcomes:
        job = jobs[job_id]
        assert job is not None
        if "cancelled;" in said:
            assert job.state is JobState.CANCELLED, (job_id, said, job.state)
            assert job_id not in posted
        else:
            assert "already" in said
            assert job.state is JobState.SUCCEED
            assert job.delivery is Delivery.DONE
            assert posted.count(job_id) == 1


# -- Failed status posts and deliveries --------------------------------------------------------


class RudeAdapter(RecordingAdapter):
    """The first status post is refused, every status edit fails, and the first result post
    fails after the platform has already posted it (a timeout after the work was done)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse_status = 1
        self.time_out_after_post = 1

    async def open_job_thread(self, where: Any, status: Any, *, again: bool = False) -> Any:
        if self.refuse_status:
            self.refuse_status -= 1
            raise ChatDeliveryError("fake 503 on the status message")
        return await super().open_job_thread(where, status, again=again)

    async def edit_status(self, thread: Any, message: str, status: Any) -> None:
        raise ValueError("the adapter choked on an edit")

    async def post_result(self, thread: Any, result: Any) -> Any:
        posted = await super().post_result(thread, result)
        if self.time_out_after_post:
            self.time_out_after_post -= 1
            raise TimeoutError("the platform answered too late")
        return posted


async def test_failed_status_posts_do_not_stop_a_job_and_a_late_post_is_not_repeated(
    tmp_path: Path,
) -> None:
    app = fast_app(tmp_path)
    adapter = RudeAdapter()
    app.add_adapter(adapter)
    async with app:
        job_id = await one_job(app, adapter)
        await asyncio.wait_for(app.runner.wait_idle(), 20)
        job = await app.store.get(job_id)
    assert job is not None
    assert job.state is JobState.SUCCEED, job.error
    assert job.delivery is Delivery.DONE
    assert [r.job_id for r in adapter.results()] == [job_id]


# -- Backend outages ---------------------------------------------------------------------------


class Outage(ScriptedBackend):
    """Unreachable for the first `calls` submissions (a backend restarting)."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        if self.calls:
            self.calls -= 1
            raise BackendUnavailableError("connection refused")
        return await super().submit(*args, **kwargs)


async def test_a_short_backend_outage_delays_a_job_instead_of_failing_it(tmp_path: Path) -> None:
    app = fast_app(tmp_path, Outage(calls=3))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        job_id = await one_job(app, adapter)
        await asyncio.wait_for(app.runner.wait_idle(), 20)
        job = await app.store.get(job_id)
    assert job is not None and job.state is JobState.SUCCEED, job


async def test_an_outage_longer_than_the_deadline_fails_the_job_clearly(tmp_path: Path) -> None:
    app = fast_app(tmp_path, Outage(calls=10_000), created_timeout=0.3)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        job_id = await one_job(app, adapter)
        await asyncio.wait_for(app.runner.wait_idle(), 20)
        job = await app.store.get(job_id)
    assert job is not None and job.state is JobState.FAILED
    assert job.error == "the backend is not reachable right now"


async def test_a_job_the_backend_lost_in_a_restart_says_so(tmp_path: Path) -> None:
    # The local backend without a state folder forgets its jobs when it restarts.
    config: dict[str, Any] = {"local_delay": 30.0, "created_timeout": 5.0, "job_timeout": 5.0}
    adapter = RecordingAdapter()
    app = fast_app(tmp_path, **config)
    app.add_adapter(adapter)
    async with app:
        job_id = await one_job(app, adapter)
        while (job := await app.store.get(job_id)) is None or job.started_at is None:
            await asyncio.sleep(0.01)
    app = fast_app(tmp_path, **config)
    app.add_adapter(adapter)
    async with app:
        await asyncio.wait_for(app.runner.wait_idle(), 20)
        job = await app.store.get(job_id)
    assert job is not None and job.state is JobState.FAILED
    assert job.error == LOST_JOB


# -- Storage -----------------------------------------------------------------------------------


async def test_a_full_disk_refuses_new_jobs_clearly_and_keeps_serving(tmp_path: Path) -> None:
    app = fast_app(tmp_path)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        first = await one_job(app, adapter)
        await asyncio.wait_for(app.runner.wait_idle(), 10)

        def fill(db: Any) -> None:
            # SQLite's own cap: the file may not grow by a single page (SQLITE_FULL, "database
            # or disk is full", as on a full disk).
            pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
            db.conn.execute(f"PRAGMA max_page_count = {pages}")

        store = app.store
        assert isinstance(store, SqliteJobStore)
        await store._call(fill)
        refusals: list[str] = []
        for n in range(40):
            responder = RecordingResponder()
            await app.dispatcher.handle_text(
                chat_caller(f"user{n}"),
                f"img2img a long prompt {'x' * 1900} {n}",
                [adapter.attach("a.png", png())],
                responder,
            )
            refusals += responder.refusals
        listed = RecordingResponder()
        await app.dispatcher.handle_text(chat_caller(), f"job {first}", [], listed)
    assert any("cannot store new jobs" in text for text in refusals), refusals[:3]
    assert listed.replies and first in listed.replies[0][0]  # the rest is still served


async def test_a_data_folder_replaced_while_running_is_noticed(tmp_path: Path) -> None:
    app = fast_app(tmp_path)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        await one_job(app, adapter)
        await asyncio.wait_for(app.runner.wait_idle(), 10)
        database = app.config.data_dir / "sdbot.sqlite3"
        database.rename(tmp_path / "elsewhere.sqlite3")  # replaced: another file in its place
        database.write_bytes(b"")
        responder = RecordingResponder()
        job = await app.dispatcher.handle_text(
            chat_caller(), "img2img a cat", [adapter.attach("a.png", png())], responder
        )
    assert job is None and responder.accepted_ids == []
    assert any("deleted or replaced" in text for text in responder.refusals), responder.refusals
    store = app.store
    assert isinstance(store, SqliteJobStore)
    assert isinstance(await store.wait_lost(), StorageLostError)  # `sdbot run` stops


async def test_a_data_folder_deleted_while_nothing_writes_is_noticed(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "data" / "sdbot.sqlite3")
    async with store:
        watching = asyncio.create_task(store.wait_lost(check_every=0.01))
        await asyncio.sleep(0.05)
        assert not watching.done()
        shutil.rmtree(tmp_path / "data")
        lost = await asyncio.wait_for(watching, 10)
        assert "deleted or replaced" in str(lost)
        assert not await store.writable()  # /readyz says so too


# -- Bounded memory ----------------------------------------------------------------------------


async def test_image_decoding_is_admitted_by_a_memory_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As many cores as jobs, so only the memory budget can hold decodes back.
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    app = fast_app(tmp_path)
    app.add_adapter(RecordingAdapter())
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def decoding(*args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)  # the decode's duration, so that admitted decodes overlap
        with lock:
            running[0] -= 1
        raise ImageInputError("not decoded in this test")

    monkeypatch.setattr(imaging, "prepare", decoding)
    buffer = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buffer, "PNG")  # 36 MP: about 0.6 GB to prepare
    big = [StoredImage("image", "big.png", buffer.getvalue())]
    small = [StoredImage("image", "small.png", png(64, 64))]

    async def check(inputs: list[StoredImage]) -> None:
        with contextlib.suppress(ImageInputError):
            await app.runner.check_inputs("img2img", GenerateOptions(), inputs)

    async with app:
        await asyncio.gather(*(check(big) for _ in range(4)))
        assert peak[0] == 1  # two would not fit in the budget together
        peak[0] = 0
        await asyncio.gather(*(check(small) for _ in range(4)))
        assert peak[0] == 4  # small ones run a core each
