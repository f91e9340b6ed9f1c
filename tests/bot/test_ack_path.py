"""The acknowledgement path: a burst of commands reads a channel's settings once, and the
drivers of acknowledged jobs start once no acknowledgement is pending (issue 11)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    make_app,
    png,
)

from bot import jobs
from bot.model import Delivery, JobState

if TYPE_CHECKING:
    from collections.abc import Callable

    from bot.app import BotApp
    from bot.model import Job, Platform


async def test_a_burst_in_a_new_channel_reads_its_settings_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(fast_config(tmp_path, local_delay=5.0, max_in_flight=1000))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    reads: list[tuple[Any, ...]] = []
    settings = app.store.settings

    async def counted(platform: Platform, server: str, scope: str) -> dict[str, str]:
        reads.append((platform, server, scope))
        return await settings(platform, server, scope)

    monkeypatch.setattr(app.store, "settings", counted)
    image = png(32, 32)
    async with app:
        responders = [RecordingResponder() for _ in range(50)]
        await asyncio.gather(
            *(
                app.dispatcher.handle_text(
                    chat_caller(f"user{n}"), "img2img a cat", [adapter.attach("a.png", image)], r
                )
                for n, r in enumerate(responders)
            )
        )
        assert all(r.accepted_ids for r in responders)
        # One read of the server's settings and one of the channel's, for the whole burst
        # (before: two per command, every command reading before the first had answered).
        assert sorted(reads) == sorted(set(reads)) and len(reads) == 2
        await app.runner.aclose()


class _HeldResponder(RecordingResponder):
    """A responder whose acknowledgement does not return until released (a slow platform
    answer: Slack's `ack`, Discord's `defer`)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.reached = asyncio.Event()

    async def accepted(self, job_id: str) -> None:
        await super().accepted(job_id)
        self.reached.set()
        await self.release.wait()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def _statuses(adapter: RecordingAdapter) -> set[str]:
    """The jobs whose status message was posted (a driver's first step)."""
    return {p.payload.job_id for p in adapter.posts if p.kind == "status"}


async def _burst_with_one_held(
    app: BotApp, adapter: RecordingAdapter, count: int
) -> tuple[list[RecordingResponder], _HeldResponder, asyncio.Future[list[Job | None]]]:
    """`count` commands at once, the last one's acknowledgement held; returns once every
    other command was acknowledged. A job run first fills the caches (the channel's settings,
    the backend's catalogue), as in a channel that has seen a command, and its posts are
    forgotten."""
    image = png(32, 32)
    warm = RecordingResponder()
    await app.dispatcher.handle_text(
        chat_caller("warm"), "img2img a cat", [adapter.attach("a.png", image)], warm
    )
    assert warm.accepted_ids
    await app.runner.wait_idle()
    adapter.posts.clear()
    responders = [RecordingResponder() for _ in range(count - 1)]
    held = _HeldResponder()
    burst = asyncio.ensure_future(
        asyncio.gather(
            *(
                app.dispatcher.handle_text(
                    chat_caller(f"user{n}"), "img2img a cat", [adapter.attach("a.png", image)], r
                )
                for n, r in enumerate([*responders, held])
            )
        )
    )
    await _until(lambda: held.reached.is_set() and all(r.accepted_ids for r in responders))
    return responders, held, burst


async def test_drivers_start_once_no_acknowledgement_is_pending(tmp_path: Path) -> None:
    app = make_app(fast_config(tmp_path, local_delay=0.05, max_in_flight=100))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        responders, held, burst = await _burst_with_one_held(app, adapter, 20)
        await asyncio.sleep(0.2)  # many loop turns: a driver started at its ack would post
        assert _statuses(adapter) == set()
        assert app.runner.in_flight == 19  # held back, counted against the cap all the same
        held.release.set()
        await burst
        await app.runner.wait_idle()
        accepted = {r.accepted_ids[0] for r in [*responders, held]}
        assert _statuses(adapter) == accepted
        assert {r.job_id for r in adapter.results()} == accepted
        assert app.runner.in_flight == 0


async def test_a_pending_acknowledgement_holds_drivers_back_for_a_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "_START_DEFERRAL", 0.3)
    app = make_app(fast_config(tmp_path, local_delay=0.05, max_in_flight=100))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        responders, held, burst = await _burst_with_one_held(app, adapter, 10)
        # The held acknowledgement never returns, yet the others' drivers start and deliver.
        await _until(lambda: len(adapter.results()) == 9)
        assert {r.job_id for r in adapter.results()} == {r.accepted_ids[0] for r in responders}
        held.release.set()
        await burst
        await app.runner.wait_idle()
        assert len(adapter.results()) == 10


async def test_a_cancelled_acknowledgement_starts_the_drivers_held_back(tmp_path: Path) -> None:
    config = fast_config(tmp_path, local_delay=0.05, max_in_flight=100, lease_seconds=1.0)
    app = make_app(config)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        responders, held, burst = await _burst_with_one_held(app, adapter, 10)
        burst.cancel()  # the held command's handler is cancelled (its adapter closing)
        with pytest.raises(asyncio.CancelledError):
            await burst
        await _until(lambda: len(adapter.results()) == 9)
        assert {r.job_id for r in adapter.results()} == {r.accepted_ids[0] for r in responders}
        # The cancelled command's job is committed: its lease runs out and a claim takes it.
        await _until(lambda: len(adapter.results()) == 10)
        assert {r.job_id for r in adapter.results()} >= set(held.accepted_ids)


async def test_a_job_cancelled_before_its_driver_starts_posts_nothing(tmp_path: Path) -> None:
    app = make_app(fast_config(tmp_path, local_delay=0.05, max_in_flight=100))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        responders, held, burst = await _burst_with_one_held(app, adapter, 5)
        victim = responders[0].accepted_ids[0]
        answer = RecordingResponder()
        await app.dispatcher.handle_text(chat_caller("user0"), f"cancel {victim}", [], answer)
        assert "cancelled" in answer.replies[0][0]
        held.release.set()
        await burst
        await app.runner.wait_idle()
        assert victim not in _statuses(adapter)
        assert victim not in {r.job_id for r in adapter.results()}
        assert len(adapter.results()) == 4
        job = await app.store.get(victim)
        assert job is not None and job.state is JobState.CANCELLED
        assert app.runner.leases.fence(victim) is None  # its lease is no longer kept


async def test_jobs_acknowledged_but_not_yet_driven_resume_after_a_restart(
    tmp_path: Path,
) -> None:
    config = fast_config(tmp_path, local_delay=0.05, max_in_flight=100)
    adapter = RecordingAdapter()
    app = make_app(config)
    app.add_adapter(adapter)
    await app.start()
    responders, held, burst = await _burst_with_one_held(app, adapter, 10)
    await app.runner.aclose()  # stopped with nine drivers held back
    assert _statuses(adapter) == set()
    burst.cancel()
    with pytest.raises(asyncio.CancelledError):
        await burst
    await app.aclose()

    again = make_app(config)
    again.add_adapter(adapter)
    async with again:
        await _until(lambda: len(adapter.results()) == 10)
        await again.runner.wait_idle()
        acknowledged = {r.accepted_ids[0] for r in [*responders, held]}
        assert sorted(r.job_id for r in adapter.results()) == sorted(acknowledged)
        for job_id in acknowledged:
            job = await again.store.get(job_id)
            assert job is not None
            assert job.state is JobState.SUCCEED and job.delivery is Delivery.DONE


async def test_a_channels_defaults_are_merged_once_until_a_scope_changes(tmp_path: Path) -> None:
    app = make_app(fast_config(tmp_path))
    app.add_adapter(RecordingAdapter())
    admin = chat_caller("boss", admin=True)
    async with app:
        policy = app.runner._policy
        first = await policy.defaults(chat_caller("a"))
        assert await policy.defaults(chat_caller("b")) is first  # same channel: merged once
        elsewhere = await policy.defaults(chat_caller("a", channel="c2"))
        assert elsewhere is not first and elsewhere == first
        answer = RecordingResponder()
        await app.dispatcher.handle_text(admin, "settings scope=server max_size=512", [], answer)
        assert not answer.refusals
        changed = await policy.defaults(chat_caller("a"))
        assert changed.max_size == 512 and changed.sources["max_size"] == "server"
        assert (await policy.defaults(chat_caller("a", channel="c2"))).max_size == 512
        await app.dispatcher.handle_text(admin, "settings max_size=256", [], answer)
        assert (await policy.defaults(chat_caller("a"))).max_size == 256
        assert (await policy.defaults(chat_caller("a", channel="c2"))).max_size == 512
