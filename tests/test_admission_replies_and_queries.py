"""Issue 10: console files are checked before the ack, a reply right after a job works, an
empty reply starts nothing, `job` / `cancel` say what they mean, `jobs all=true` is capped with
paging, and the preview engine is never chosen by accident and always says what it is."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from scenario_kit import (
    ConsoleRun,
    RecordingAdapter,
    RecordingResponder,
    ScriptedBackend,
    chat_caller,
    fast_config,
    in_thread,
    job_ids,
    make_app,
    png,
    states,
)

from adapters.cli import RunSettings, load_config, main
from bot.errors import ConfigError
from bot.model import Job, JobState, Platform
from bot.ports import JobQuery
from bot.render import PREVIEW_NOTICE
from commands import parse
from commands.options import GenerateOptions

# -- console files -----------------------------------------------------------------------


async def test_console_files_that_are_not_regular_files_are_refused_at_once(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    async with ConsoleRun(tmp_path) as console:
        lines = await console.run(
            f"img2img x image={fifo}",  # opening it for reading used to wait for a writer
            f"img2img x image={tmp_path}",
            "img2img x image=/dev/zero",
        )
        assert job_ids(lines) == []
        assert "pipe.png is not a regular file" in lines[0]
        assert "is a folder" in lines[1]
        assert "/dev/zero is not a regular file" in lines[2]


async def test_reading_a_console_file_has_a_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bot.jobs.READ_DEADLINE", 0.05)
    async with ConsoleRun(tmp_path) as console:
        stuck = asyncio.Event()

        async def never(ref: object, max_bytes: int) -> bytes:  # a hung network share
            await stuck.wait()
            return b""

        monkeypatch.setattr(console.adapter, "download", never)
        image = console.write("in.png", png())
        lines = await console.run(f"img2img x image={image}", "jobs")
        assert lines == [
            f"error: reading `{image}` took more than 0.05 s; give a file on a local disk",
            "no jobs match",
        ]


# -- a reply right after a job -------------------------------------------------------------


async def test_console_reply_right_after_a_job_sees_its_inputs(tmp_path: Path) -> None:
    async with ConsoleRun(tmp_path) as console:
        image = console.write("in.png", png())
        mask = console.write("mask.png", png(96, 64, color=(255, 255, 255)))
        lines = await console.run(
            f"img2img a cat image={image}",
            "reply last again",
            f"inpaint-upload a hat image={image} mask={mask}",
            "reply last steps=5",
        )
        assert not [line for line in lines if line.startswith("error: ")], lines
        ids = job_ids(lines)
        assert len(ids) == 4
        for job_id in ids:
            assert states(lines, job_id)[-1] == "succeed", lines


async def test_chat_reply_and_buttons_right_after_a_job_see_its_inputs(tmp_path: Path) -> None:
    app = make_app(fast_config(tmp_path))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        alice = chat_caller("alice")
        picture = png(80, 48, color=(10, 200, 90))
        r = RecordingResponder()
        base = await app.dispatcher.handle_text(
            alice, "inpaint-upload a hat", [adapter.attach("in.png", picture),
                                           adapter.attach("mask.png", png(80, 48))], r
        )  # fmt: skip
        assert base is not None
        # At once: the base job has not downloaded its inputs yet, let alone finished.
        reply, reroll = RecordingResponder(), RecordingResponder()
        thread = base.thread or alice.conversation
        again = await app.dispatcher.handle_reply(
            in_thread(alice, thread), "again", [], reply, base_job=base.id
        )
        rerolled = await app.dispatcher.handle_action(alice, f"sdbot:reroll:{base.id}", reroll)
        early = RecordingResponder()
        await app.dispatcher.handle_reply(alice, "input=result:1", [], early, base_job=base.id)
        assert reply.refusals == [] and reroll.refusals == []
        assert again is not None and rerolled is not None
        assert "has no stored result images yet" in early.refusals[0]
        await app.runner.wait_idle()
        for job in (again, rerolled):
            done = await app.store.get(job.id)
            assert done is not None and done.state is JobState.SUCCEED, done
            stored = {i.slot: i.data for i in await app.store.images(job.id)}
            assert stored["image"] == picture and "mask" in stored


@pytest.mark.parametrize("text", ["", "   "])
async def test_an_empty_reply_starts_nothing_and_says_why(tmp_path: Path, text: str) -> None:
    async with ConsoleRun(tmp_path) as console:
        image = console.write("in.png", png())
        lines = await console.run(f"img2img a cat image={image}", f"reply last {text}")
        assert len(job_ids(lines)) == 1
        [refusal] = [line for line in lines if line.startswith("error: ")]
        assert "asks for nothing new" in refusal and "again" in refusal


# -- job and cancel ------------------------------------------------------------------------


async def test_job_of_a_failed_job_has_no_error_line_and_cancel_reads_well(
    tmp_path: Path,
) -> None:
    async with ConsoleRun(tmp_path, backend_for=lambda _: ScriptedBackend("fail")) as console:
        image = console.write("in.png", png())
        [failed] = job_ids(await console.run(f"img2img a cat image={image}"))
        details = await console.run(f"job {failed}")
        assert not [line for line in details if line.startswith("error:")], details
        assert "failed: CUDA out of memory" in details
        assert await console.run(f"cancel {failed}") == [
            f"error: job `{failed}` has already finished (failed)"
        ]


# -- jobs all=true -------------------------------------------------------------------------


async def test_jobs_all_is_capped_and_pages_by_time(tmp_path: Path) -> None:
    app = make_app(fast_config(tmp_path))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        alice = chat_caller("alice")
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for n in range(1050):
            job = Job(
                id=f"j{n:04d}aaaaa",
                command="img2img",
                caller=alice,
                state=JobState.SUCCEED,
                created_at=start + timedelta(minutes=n),
                options=GenerateOptions(),
            )
            await app.store.insert(job)
        seen: list[str] = []
        text = "jobs all=true"
        for _ in range(5):
            r = RecordingResponder()
            await app.dispatcher.handle_command(alice, parse(text), [], r)
            lines = [line for reply, _, _ in r.replies for line in reply.splitlines()]
            listed = [line for line in lines if "→" in line]
            assert len(listed) <= 500 and len(r.replies) <= 11
            seen += listed
            hint = [line for line in lines if "until=" in line]
            if not hint:
                break
            text = "jobs all=true " + hint[0].split("`")[1]
        assert len(seen) == len(set(seen)) == 1050


# -- the preview engine --------------------------------------------------------------------


def backend_of(environ: dict[str, str]) -> str | None:
    return load_config(environ)[RunSettings].backend


@pytest.mark.parametrize(
    "credentials",
    [
        {"DISCORD_TOKEN": "d"},
        {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"},
    ],
)
def test_chat_credentials_without_a_chosen_backend_stop_the_start(
    credentials: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="SDBOT_BACKEND=local"):
        load_config(credentials)
    assert backend_of({**credentials, "SDBOT_BACKEND": "local"}) == "local"
    esd = {**credentials, "ESD_API_URL": "http://127.0.0.1:9/prod/"}
    assert backend_of(esd) == "esd"
    assert backend_of({}) == "local"  # the console default needs no settings
    (tmp_path / "sdbot.toml").write_text('backend = "local"\n')
    assert backend_of(credentials) == "local"
    (tmp_path / "sdbot.toml").unlink()
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SDBOT_BACKEND", raising=False)
    monkeypatch.delenv("ESD_API_URL", raising=False)
    assert main(["run"]) == 2
    assert "backend" in capsys.readouterr().err


async def test_preview_results_say_so(tmp_path: Path) -> None:
    app = make_app(fast_config(tmp_path))
    adapter = RecordingAdapter(Platform("slack"))
    app.add_adapter(adapter)
    async with app:
        r = RecordingResponder()
        caller = chat_caller(platform=Platform("slack"))
        await app.dispatcher.handle_text(
            caller, "img2img a cat", [adapter.attach("a.png", png())], r
        )
        await app.dispatcher.handle_text(caller, "interrogate", [adapter.attach("a.png", png())], r)
        await app.runner.wait_idle()
        results = adapter.results()
        assert len(results) == 2
        for result in results:
            assert result.notice == PREVIEW_NOTICE and PREVIEW_NOTICE in result.text
        jobs = await app.store.query(JobQuery(Platform("slack"), caller.server))
        assert all(j.state is JobState.SUCCEED for j in jobs)
