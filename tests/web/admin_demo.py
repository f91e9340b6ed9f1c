"""A seeded demo of the admin page: the real core (local backend, SQLite) with two weeks of
history, hostile prompts included, served on loopback.

Used by the browser tests, and to make the README's screenshot with the real browser:

    PYTHONPATH=tests/kit .venv/bin/python -m tests.web.admin_demo docs/admin-page.png
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from scenario_kit import RecordingAdapter, RecordingResponder, chat_caller, fast_config, png

from adapters.cli import make_app
from adapters.web.admin import AdminPage
from adapters.web.metrics import Metrics, instrument_chat
from adapters.web.server import Readiness, WebServer
from bot.model import Caller, Conversation, Job, JobState, Platform
from bot.ports import StoredImage
from bot.store import SqliteJobStore
from commands import build
from commands.options import job_options

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bot.app import BotApp

TOKEN = "demo-admin-token-0123456789"
SCRIPT_PROMPT = "<script>window.__pwned = 1</script> a cat"
BREAKOUT_PROMPT = '"><img src=x onerror="window.__pwned=2"> a dog \' onmouseover=\'alert(1)'
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
CHROMIUM = "/usr/bin/chromium"

_PEOPLE = [("U01", "Ada"), ("U02", "Grace"), ("U03", "Linus"), ("U04", "Margaret")]
_CHANNELS = ["C-art", "C-memes", "C-lab"]
_REASONS = [
    "CUDA out of memory. Tried to allocate 2.00 GiB",
    "model not found: sdxl-turbo.safetensors",
    "the backend did not finish the job within 20 min 00 s",
]


@dataclass
class Demo:
    url: str
    app: BotApp
    store: SqliteJobStore
    adapter: RecordingAdapter
    script_job: str
    breakout_job: str
    failed_job: str


async def _history(store: SqliteJobStore, now: datetime) -> None:
    """Two weeks of finished jobs written straight into the store, with pictures."""
    n = 0
    for day in range(13, 0, -1):
        for k in range((day * 7) % 5 + 2):
            n += 1
            user, name = _PEOPLE[(day + k) % len(_PEOPLE)]
            failed = (day + k) % 4 == 0
            created = now - timedelta(days=day, hours=k)
            started = created + timedelta(seconds=3)
            job = Job(
                id=f"hist{n:04d}",
                command=(command := ("img2img", "inpaint", "sketch", "interrogate")[k % 4]),
                caller=Caller(
                    Platform("discord"),
                    "g1",
                    user,
                    Conversation(_CHANNELS[(day + k) % len(_CHANNELS)]),
                    user_name=name,
                ),
                state=JobState.FAILED if failed else JobState.SUCCEED,
                created_at=created,
                options=job_options(
                    command,
                    {}
                    if command == "interrogate"
                    else {"prompt": f"a lighthouse at dusk, study {n}"},
                ),
                endpoint="esd-async-g5",
                model="v1-5-pruned-emaonly.safetensors",
                backend_id=f"b{n}",
                started_at=started,
                finished_at=started + timedelta(seconds=20 + 7 * k),
                error=_REASONS[n % len(_REASONS)] if failed else None,
            )
            await store.insert(job)
            color = (40 + 15 * day, 90 + 20 * k, 200 - 10 * day)
            await store.put_images(
                job.id, [StoredImage("result", f"{job.id}-1.png", png(96, 64, color))]
            )


@contextlib.asynccontextmanager
async def running_demo(tmp_path: Path) -> AsyncIterator[Demo]:
    metrics = Metrics()
    config = fast_config(tmp_path)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteJobStore(config.data_dir / "sdbot.sqlite3")
    app = make_app(config, metrics, store)
    adapter = RecordingAdapter()
    app.add_adapter(instrument_chat(adapter, metrics))
    web = WebServer(
        metrics,
        Readiness(store, app.backend, metrics),
        AdminPage(app, store, TOKEN).routes(),
    )
    async with app:
        await _history(store, datetime.now(UTC))
        jobs: dict[str, str] = {}
        for key, (user, name), prompt, image in (
            ("script", _PEOPLE[0], SCRIPT_PROMPT, png(96, 64, (200, 60, 90))),
            ("breakout", _PEOPLE[1], BREAKOUT_PROMPT, png(96, 64, (60, 160, 90))),
            ("failed", _PEOPLE[2], "a broken upload", b"not a picture at all"),
            ("ok", _PEOPLE[3], "a tidy garden, watercolour", png(96, 64, (30, 120, 200))),
        ):
            # Typed options, as Discord sends them: the prompt arrives exactly as typed.
            job = await app.dispatcher.handle_command(
                replace(chat_caller(user, channel="C-art"), user_name=name),
                build("img2img", {"prompt": prompt}),
                [adapter.attach("in.png", image)],
                RecordingResponder(),
            )
            assert job is not None
            jobs[key] = job.id
        await app.runner.wait_idle()
        port = await web.serve("127.0.0.1", 0)
        try:
            yield Demo(
                f"http://127.0.0.1:{port}",
                app,
                store,
                adapter,
                jobs["script"],
                jobs["breakout"],
                jobs["failed"],
            )
        finally:
            await web.aclose()


async def _screenshot(out: Path) -> None:
    import tempfile

    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as tmp:
        async with running_demo(Path(tmp)) as demo, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            await page.set_extra_http_headers({"Authorization": f"Bearer {TOKEN}"})
            # Today's jobs (the hostile prompts among them), over two weeks of history.
            today = datetime.now(UTC).date().isoformat()
            await page.goto(f"{demo.url}/admin?since={today}")
            await page.screenshot(path=str(out), full_page=True)
            await browser.close()


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/admin-page.png")
    asyncio.run(_screenshot(out))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
