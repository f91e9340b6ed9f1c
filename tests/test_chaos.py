"""Chaos (issue 10): 500 jobs through the core with faults at every port call.

Every call the core makes to the backend, the job store and the chat adapter may fail (with
`BackendError`, `BackendUnavailableError`, `TimeoutError`, `OSError`, `ValueError`, a chat
platform's `ChatDeliveryError`, SQLite's "disk I/O error") or answer slowly, from one seeded
random stream. Some failures come *after* the work was done, as real platforms and backends do
(a post that went out, then a 5xx). The bot is restarted between rounds, as an operator would.
Afterwards every accepted job is terminal and delivered once, with a message a user can read,
and no background task has died.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from scenario_kit import RecordingAdapter, RecordingResponder, chat_caller, fast_config, png

import bot.tasks
from bot.app import BotApp
from bot.clock import SystemClock
from bot.errors import BackendError, BackendUnavailableError, ChatDeliveryError
from bot.model import Delivery, JobState
from bot.retry import RetryPolicy
from bot.store import SqliteJobStore
from cloud.local import LocalBackend, LocalBackendConfig

SEED = 20261203
JOBS = 500
RATE = 0.03  # chance that one port call fails
SLOW = 0.03  # chance that it answers late


class Chaos:
    """The seeded source of every fault."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.on = False
        self.injected = 0

    async def call(self, where: str, kinds: tuple[type[Exception], ...]) -> None:
        """Before a port call: maybe wait a little, maybe fail."""
        if not self.on:
            return
        roll = self.rng.random()
        if roll < SLOW:
            await asyncio.sleep(self.rng.uniform(0, 0.005))
        elif roll < SLOW + RATE:
            self.injected += 1
            kind = self.rng.choice(kinds)
            raise kind(f"chaos in {where}")

    def after(self) -> bool:
        """After the work was done: should the answer be lost anyway?"""
        if not self.on or self.rng.random() >= RATE / 2:
            return False
        self.injected += 1
        return True


def _backend_error(message: str) -> BackendError:
    return BackendError(message, user_message="the backend refused: chaos")


BACKEND_FAULTS: tuple[Any, ...] = (
    _backend_error,
    BackendUnavailableError,
    TimeoutError,
    OSError,
    ValueError,
)
STORE_FAULTS: tuple[Any, ...] = (
    lambda m: sqlite3.OperationalError("disk I/O error"),
    OSError,
    TimeoutError,
    ValueError,
)
CHAT_FAULTS: tuple[Any, ...] = (ChatDeliveryError, TimeoutError, OSError, ValueError)


class ChaosBackend(LocalBackend):
    def __init__(self, chaos: Chaos, state: Path) -> None:
        super().__init__(LocalBackendConfig(delay=0.01, state_dir=state))
        self.chaos = chaos

    async def endpoints(self) -> Any:
        await self.chaos.call("endpoints", BACKEND_FAULTS)
        return await super().endpoints()

    async def models(self, model_type: str | None = None) -> Any:
        await self.chaos.call("models", BACKEND_FAULTS)
        return await super().models(model_type)

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        await self.chaos.call("submit", BACKEND_FAULTS)
        submitted = await super().submit(*args, **kwargs)
        if self.chaos.after():  # started, then the answer was lost
            raise BackendUnavailableError("chaos: the connection dropped after the start")
        return submitted

    async def statuses(self, targets: Any) -> Any:
        await self.chaos.call("statuses", BACKEND_FAULTS)
        return await super().statuses(targets)

    async def results(self, backend_id: str) -> Any:
        await self.chaos.call("results", BACKEND_FAULTS)
        return await super().results(backend_id)

    async def release(self, backend_id: str) -> None:
        await self.chaos.call("release", BACKEND_FAULTS)
        await super().release(backend_id)

    async def cancel(self, backend_id: str) -> None:
        await self.chaos.call("cancel", BACKEND_FAULTS)
        await super().cancel(backend_id)


def _chaotic_store(chaos: Chaos, path: Path) -> SqliteJobStore:
    """A real SQLite store whose every call may fail first (a failed write changes nothing)."""

    class ChaosStore(SqliteJobStore):
        pass

    store = ChaosStore(path)
    for name in (
        "insert",
        "save",
        "get",
        "find",
        "query",
        "latest_in_thread",
        "by_message",
        "put_images",
        "images",
        "delete_images",
        "recent_durations",
        "expire_images",
        "claim",
        "settings",
    ):
        real = getattr(store, name)

        def wrap(real: Any = real, name: str = name) -> Any:
            async def call(*args: Any, **kwargs: Any) -> Any:
                await chaos.call(f"store.{name}", STORE_FAULTS)
                return await real(*args, **kwargs)

            return call

        setattr(store, name, wrap())
    return store


class ChaosAdapter(RecordingAdapter):
    def __init__(self, chaos: Chaos) -> None:
        super().__init__()
        self.chaos = chaos

    async def download(self, ref: Any, max_bytes: int) -> bytes:
        await self.chaos.call("download", CHAT_FAULTS)
        return await super().download(ref, max_bytes)

    async def open_job_thread(self, where: Any, status: Any, *, again: bool = False) -> Any:
        await self.chaos.call("open_job_thread", CHAT_FAULTS)
        return await super().open_job_thread(where, status, again=again)

    async def edit_status(self, thread: Any, message: str, status: Any) -> None:
        await self.chaos.call("edit_status", CHAT_FAULTS)
        await super().edit_status(thread, message, status)

    async def post_result(self, thread: Any, result: Any) -> Any:
        await self.chaos.call("post_result", CHAT_FAULTS)
        posted = await super().post_result(thread, result)
        if self.chaos.after():  # posted, then the platform answered 503
            raise ChatDeliveryError("chaos: 503 after the post went out")
        return posted

    async def find_marker(self, thread: Any, marker: str) -> Any:
        await self.chaos.call("find_marker", CHAT_FAULTS)
        return await super().find_marker(thread, marker)


class FastClock(SystemClock):
    """Back-offs and post retries last a thousandth of what they say."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / 1000)


async def test_500_jobs_under_faults_at_every_port_end_terminal_and_delivered_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.tasks, "DEFAULT_BACKOFF", RetryPolicy(backoff=0.001, max_backoff=0.01))
    chaos = Chaos(SEED)
    config = fast_config(
        tmp_path,
        max_in_flight=10_000,
        poll_interval=0.005,
        poll_max_interval=0.02,
        status_interval=1.0,
        created_timeout=30.0,
        job_timeout=60.0,
    )
    config.data_dir.mkdir(parents=True)
    adapter = ChaosAdapter(chaos)
    rng = random.Random(SEED + 1)

    def app() -> BotApp:
        made = BotApp(
            config.core,
            backend=ChaosBackend(chaos, config.data_dir / "local"),
            store=_chaotic_store(chaos, config.data_dir / "sdbot.sqlite3"),
            clock=FastClock(),
            backoff=RetryPolicy(backoff=0.001, max_backoff=0.01),
        )
        made.add_adapter(adapter)
        return made

    accepted: list[str] = []
    refused: list[str] = []

    async def request(running: BotApp, n: int) -> None:
        await asyncio.sleep(rng.uniform(0, 0.5))
        responder = RecordingResponder()
        job = await running.dispatcher.handle_text(
            chat_caller(f"user{n}", channel=f"c{n % 7}"),
            f"img2img chaos {n} size=64x64",
            [adapter.attach("a.png", png(64, 64))],
            responder,
        )
        if job is not None:
            accepted.append(job.id)
        else:
            assert responder.refusals, n  # a refusal always says why
            refused.append(responder.refusals[0])

    # Round 1: every request under chaos. Rounds 2–3: restarts, still under chaos. Round 4: a
    # calm restart picks up whatever was left for the next start.
    for round_number in range(4):
        running = app()
        await running.start()
        chaos.on = round_number < 3
        try:
            if round_number == 0:
                await asyncio.gather(*(request(running, n) for n in range(JOBS)))
            await asyncio.wait_for(running.runner.wait_idle(), 60)
            for supervised in (running.poller.supervised, running.retention.supervised):
                assert supervised is not None and supervised.alive, supervised
        finally:
            chaos.on = False
            await running.aclose()

    assert chaos.injected > 100  # the chaos was real
    assert len(accepted) > JOBS * 0.8
    assert all("try again" in text.lower() for text in refused), refused[:5]
    async with SqliteJobStore(config.data_dir / "sdbot.sqlite3") as store:
        for job_id in accepted:
            job = await store.get(job_id)
            assert job is not None
            assert job.state.terminal, job
            assert job.delivery is Delivery.DONE, job
            if job.state is JobState.FAILED:
                assert job.error and "Traceback" not in job.error, job
    posted = [view.job_id for view in adapter.results()]
    assert sorted(posted) == sorted(accepted)  # every job delivered, none twice
