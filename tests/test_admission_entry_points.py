"""Issue 10: every path that creates a job passes the same admission, and what can be known to
fail is refused before the ack, with nothing stored.

The paths are those adapters call: a command, a reply in a job's thread, the Re-roll, Use as
input, Edit (modal) and Use as prompt buttons. (The Discord and Slack context menus and
shortcuts reach the core as commands; tests/discord and tests/slack press them for real.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    ScriptedBackend,
    chat_caller,
    fast_config,
    in_thread,
    make_app,
    png,
)

from bot.app import BotApp
from bot.clock import SystemClock
from bot.errors import BackendUnavailableError
from bot.model import JobState
from bot.ports import JobQuery
from bot.store import SqliteJobStore
from cloud.local import LocalBackend, LocalBackendConfig
from commands.options import GenerateOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from bot.model import Caller, Job, Model

RUNNING = "you have 1 job running; the limit here is 1"


class Held(ScriptedBackend):
    """Jobs run normally until `hold()`; after it, they stay in progress until released."""

    def hold(self) -> None:
        self.outcome = "hang"


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[tuple[BotApp, RecordingAdapter, Held]]:
    backend = Held(delay=0.02)
    app = make_app(fast_config(tmp_path, user_concurrency=1, max_in_flight=50), backend)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        yield app, adapter, backend


async def _finished(app: BotApp, adapter: RecordingAdapter, text: str, caller: Caller) -> Job:
    r = RecordingResponder()
    job = await app.dispatcher.handle_text(caller, text, [adapter.attach("in.png", png())], r)
    assert job is not None, r.refusals
    await app.runner.wait_idle()
    done = await app.store.get(job.id)
    assert done is not None and done.state is JobState.SUCCEED
    return done


async def _jobs(app: BotApp, caller: Caller) -> list[Job]:
    return list(await app.store.query(JobQuery(caller.platform, caller.server, limit=1000)))


def _entry_points() -> dict[str, Any]:
    """Every entry point that makes a job, from a finished base job or anew, as adapters call
    it: (app, adapter, base img2img job, base interrogate job, caller, responder) → job."""

    async def command(app: Any, adapter: Any, base: Job, cap: Job, who: Caller, r: Any) -> Any:
        refs = [adapter.attach("b.png", png())]
        return await app.dispatcher.handle_text(who, "img2img a dog", refs, r)

    async def reply(app: Any, adapter: Any, base: Job, cap: Job, who: Caller, r: Any) -> Any:
        assert base.thread is not None
        return await app.dispatcher.handle_reply(in_thread(who, base.thread), "again", [], r)

    async def reroll(app: Any, adapter: Any, base: Job, cap: Job, who: Caller, r: Any) -> Any:
        return await app.dispatcher.handle_action(who, f"sdbot:reroll:{base.id}", r)

    async def use_input(app: Any, adapter: Any, base: Job, cap: Job, who: Caller, r: Any) -> Any:
        return await app.dispatcher.handle_action(who, f"sdbot:input:{base.id}:1", r)

    async def edit_modal(app: Any, adapter: Any, base: Job, cap: Job, who: Caller, r: Any) -> Any:
        fields = {"prompt": "a lion", "negative": "", "strength": "0.5", "seed": "3"}
        return await app.dispatcher.handle_action(who, f"sdbot:edit:{base.id}", r, fields)

    async def use_prompt(app: Any, adapter: Any, base: Job, cap: Job, who: Caller, r: Any) -> Any:
        return await app.dispatcher.handle_action(who, f"sdbot:prompt:{cap.id}", r)

    return {
        "command": command,
        "reply": reply,
        "reroll": reroll,
        "use-as-input": use_input,
        "edit-modal": edit_modal,
        "use-as-prompt": use_prompt,
    }


ENTRY_POINTS = _entry_points()


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
async def test_the_concurrency_limit_holds_on_every_entry_point(
    chat: tuple[BotApp, RecordingAdapter, Held], entry: str
) -> None:
    app, adapter, backend = chat
    alice = chat_caller("alice")
    base = await _finished(app, adapter, "img2img a cat count=1", alice)
    caption = await _finished(app, adapter, "interrogate", alice)
    backend.hold()
    running = await _start(app, adapter, alice)
    r = RecordingResponder()
    job = await ENTRY_POINTS[entry](app, adapter, base, caption, alice, r)
    assert job is None and r.accepted_ids == []
    assert len(r.refusals) == 1 and RUNNING in r.refusals[0], r.refusals
    assert [j.id for j in await _jobs(app, alice) if not j.state.terminal] == [running.id]
    # Someone else is not held back by alice's limit.
    bob = chat_caller("bob", admin=True)
    other = RecordingResponder()
    assert await ENTRY_POINTS[entry](app, adapter, base, caption, bob, other) is not None
    assert other.refusals == []


async def _start(app: BotApp, adapter: RecordingAdapter, caller: Caller) -> Job:
    r = RecordingResponder()
    job = await app.dispatcher.handle_text(
        caller, "img2img held", [adapter.attach("h.png", png())], r
    )
    assert job is not None, r.refusals
    return job


async def test_a_burst_of_replies_and_rerolls_stays_within_every_limit(tmp_path: Path) -> None:
    """The issue's report: `user_concurrency = 1`, `daily_quota = 2`, `max_in_flight = 2`;
    five `again` replies and five Re-roll clicks at once ran 11 jobs. Now: one."""
    backend = Held(delay=0.02)
    config = fast_config(tmp_path, user_concurrency=1, daily_quota=2, max_in_flight=2)
    app = make_app(config, backend)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        alice = chat_caller("alice")
        base = await _finished(app, adapter, "img2img a cat", alice)
        assert base.thread is not None
        backend.hold()
        responders = [RecordingResponder() for _ in range(10)]
        here = in_thread(alice, base.thread)
        work = [app.dispatcher.handle_reply(here, "again", [], r) for r in responders[:5]] + [
            app.dispatcher.handle_action(alice, f"sdbot:reroll:{base.id}", r)
            for r in responders[5:]
        ]
        made = [job for job in await asyncio.gather(*work) if job is not None]
        assert len(made) == 1
        assert app.runner.in_flight == 1
        refusals = [m for r in responders for m in r.refusals]
        # Each one is told which limit: the user's, or the cap while others were being admitted.
        assert len(refusals) == 9, refusals
        assert all(RUNNING in m or "the bot is busy" in m for m in refusals), refusals
        # The day's quota (2: the base and the one that ran) holds on a button too.
        await app.runner.cancel(made[0])
        r = RecordingResponder()
        assert await app.dispatcher.handle_action(alice, f"sdbot:reroll:{base.id}", r) is None
        assert "used your 2 jobs for today" in r.refusals[0]


async def test_the_global_cap_holds_on_buttons_and_replies(tmp_path: Path) -> None:
    backend = Held(delay=0.02)
    app = make_app(fast_config(tmp_path, max_in_flight=2), backend)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        base = await _finished(app, adapter, "img2img a cat", chat_caller("alice"))
        backend.hold()
        assert base.thread is not None
        responders = [RecordingResponder() for _ in range(4)]
        clicks = [
            app.dispatcher.handle_action(
                chat_caller(f"u{n}", admin=True), f"sdbot:reroll:{base.id}", r
            )
            for n, r in enumerate(responders)
        ]
        made = [job for job in await asyncio.gather(*clicks) if job is not None]
        assert len(made) == 2 and app.runner.in_flight == 2
        assert sum("the bot is busy" in m for r in responders for m in r.refusals) == 2
        r = RecordingResponder()
        here = in_thread(chat_caller("alice", admin=True), base.thread)
        assert await app.dispatcher.handle_reply(here, "again", [], r) is None
        assert "the bot is busy" in r.refusals[0]


def test_accept_has_no_way_around_admission() -> None:
    import inspect

    from bot.jobs import JobRunner

    assert "admission" not in inspect.signature(JobRunner.accept).parameters


# -- refusing before the ack ----------------------------------------------------------------


class StepClock(SystemClock):
    """Real time, with a monotonic clock a test can move forward (catalogue ages)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.offset


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[tuple[BotApp, RecordingAdapter, Path, StepClock]]:
    models = tmp_path / "models"
    for kind, name in (
        ("Stable-diffusion", "DreamShaper_8.safetensors"),
        ("Lora", "watercolor_v2.safetensors"),
        ("VAE", "vae-ft-mse-840000.safetensors"),
    ):
        (models / kind).mkdir(parents=True, exist_ok=True)
        (models / kind / name).write_bytes(b"x")
    config = fast_config(tmp_path, local_models_dir=models, max_side=768)
    config.data_dir.mkdir(parents=True)
    clock = StepClock()
    backend = LocalBackend(LocalBackendConfig(delay=0.02, models_dir=models))
    app = BotApp(
        config.core, backend=backend, store=SqliteJobStore(config.data_dir / "s.db"), clock=clock
    )
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        yield app, adapter, models, clock


async def _ask(app: BotApp, adapter: RecordingAdapter, text: str) -> RecordingResponder:
    r = RecordingResponder()
    await app.dispatcher.handle_text(chat_caller(), text, [adapter.attach("a.png", png())], r)
    return r


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("model=nope.safetensors", "unknown model `nope.safetensors`"),
        ("model=dreamshaper-8", "did you mean `DreamShaper_8.safetensors`?"),
        ("vae=vae-ft-mse", "did you mean `vae-ft-mse-840000.safetensors`?"),
        ("endpoint=gpu-1", "unknown endpoint `gpu-1`"),
        ("endpoint=local-previw", "did you mean `local-preview`?"),
        ("<lora:watercolour_v2:0.7>", "unknown LoRA `watercolour_v2` — did you mean"),
        ("<hypernet:ink>", "unknown hypernetwork `ink`"),
        ("size=1024x1024", "size 1024x1024 is over the cap of 768"),
        ("height=1024", "height 1024 is over the cap of 768"),
    ],
)
async def test_what_can_be_known_is_refused_before_the_ack(
    shop: tuple[BotApp, RecordingAdapter, Path, StepClock], options: str, message: str
) -> None:
    app, adapter, _, _ = shop
    r = await _ask(app, adapter, f"img2img a cat {options}")
    assert r.accepted_ids == [] and len(r.refusals) == 1
    assert message in r.refusals[0], r.refusals
    assert await _jobs(app, chat_caller()) == []  # `error:` means nothing was stored


async def test_names_match_in_any_case_and_are_stored_as_the_backend_spells_them(
    shop: tuple[BotApp, RecordingAdapter, Path, StepClock],
) -> None:
    app, adapter, _, _ = shop
    r = await _ask(
        app,
        adapter,
        "img2img a cat <lora:WaterColor_V2:0.7> model=dreamshaper_8.SAFETENSORS "
        "vae=VAE-FT-MSE-840000 endpoint=LOCAL-PREVIEW",
    )
    assert r.refusals == [] and len(r.accepted_ids) == 1
    await app.runner.wait_idle()
    job = await app.store.get(r.accepted_ids[0])
    assert job is not None and job.state is JobState.SUCCEED, job
    assert job.params is not None
    assert job.params.prompt == "a cat <lora:watercolor_v2:0.7>"
    assert job.params.model == "DreamShaper_8.safetensors"
    assert job.params.vae == "vae-ft-mse-840000.safetensors"
    assert job.params.endpoint == "local-preview"


async def test_a_lora_whose_name_has_a_dot_keeps_it(
    shop: tuple[BotApp, RecordingAdapter, Path, StepClock],
) -> None:
    app, adapter, models, _ = shop
    (models / "Lora" / "add_detail_v1.5.safetensors").write_bytes(b"x")
    r = await _ask(app, adapter, "img2img a cat <lora:ADD_DETAIL_V1.5:0.3>")
    assert r.refusals == [] and r.accepted_ids
    job = await app.store.get(r.accepted_ids[0])
    assert job is not None and job.options == GenerateOptions(
        prompt="a cat <lora:add_detail_v1.5:0.3>"
    )


async def test_an_unknown_name_looks_at_the_backend_again_before_refusing(
    shop: tuple[BotApp, RecordingAdapter, Path, StepClock],
) -> None:
    app, adapter, models, clock = shop
    early = await _ask(app, adapter, "img2img a cat model=new-model.safetensors")
    assert "unknown model `new-model.safetensors`" in early.refusals[0]  # and now cached
    (models / "Stable-diffusion" / "new-model.safetensors").write_bytes(b"x")
    clock.offset += 6  # younger than the minute the cache lasts, older than its 5 s floor
    r = await _ask(app, adapter, "img2img a cat model=new-model.safetensors")
    assert r.refusals == [] and r.accepted_ids


async def test_a_model_removed_from_the_backend_is_seen_within_a_minute(
    shop: tuple[BotApp, RecordingAdapter, Path, StepClock],
) -> None:
    app, adapter, models, clock = shop
    (models / "Lora" / "old.safetensors").write_bytes(b"x")
    assert (await _ask(app, adapter, "img2img <lora:old>")).accepted_ids
    (models / "Lora" / "old.safetensors").unlink()
    clock.offset += 61
    r = await _ask(app, adapter, "img2img <lora:old>")
    assert "unknown LoRA `old`" in r.refusals[0]


class CatalogueDown(LocalBackend):
    """The local backend whose catalogue calls fail while `down` (the backend is unreachable)."""

    down = True

    async def endpoints(self) -> Sequence[Any]:
        if self.down:
            raise BackendUnavailableError("connection refused")
        return await super().endpoints()

    async def models(self, model_type: str | None = None) -> Sequence[Model]:
        if self.down:
            raise BackendUnavailableError("connection refused")
        return await super().models(model_type)


async def test_when_the_backend_is_unreachable_names_fail_after_the_ack_with_the_same_message(
    tmp_path: Path,
) -> None:
    backend = CatalogueDown(LocalBackendConfig(delay=0.02))
    app = make_app(fast_config(tmp_path), backend)
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        r = await _ask(app, adapter, "img2img a cat model=nope.safetensors")
        assert r.refusals == [] and len(r.accepted_ids) == 1
        backend.down = False  # back before the job is submitted
        await app.runner.wait_idle()
        job = await app.store.get(r.accepted_ids[0])
        assert job is not None and job.state is JobState.FAILED
        assert job.error is not None and "unknown model `nope.safetensors`" in job.error


async def test_a_reply_is_checked_before_the_ack_too(
    shop: tuple[BotApp, RecordingAdapter, Path, StepClock],
) -> None:
    app, adapter, _, _ = shop
    base = await _finished(app, adapter, "img2img a cat count=4", chat_caller())
    assert base.thread is not None
    here = in_thread(chat_caller(), base.thread)
    for text, message in (
        ("model=nope.ckpt", "unknown model `nope.ckpt`"),
        ("batch_count=3", "4 × 3 = 12 images"),
        ("size=1024x1024", "over the cap of 768"),
        ("+ <lora:nope:0.5>", "unknown LoRA `nope`"),
    ):
        r = RecordingResponder()
        assert await app.dispatcher.handle_reply(here, text, [], r) is None
        assert message in r.refusals[0] and r.accepted_ids == []
    assert len(await _jobs(app, chat_caller())) == 1
