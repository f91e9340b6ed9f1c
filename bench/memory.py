"""Memory over a long run (issue 10): resident memory after 10,000 local jobs, the local
backend's state folder afterwards, and the peak while 16 huge-but-tiny WebP files are decoded.

Each returns rows of (what, figure, target, met) for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from bench.machine import rss_mb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kit"))

from scenario_kit import RecordingAdapter, RecordingResponder, chat_caller, fast_config, make_app

from bot.errors import ImageInputError
from bot.model import AttachmentRef
from bot.ports import PostedStatus, StoredImage
from commands.options import GenerateOptions

Row = tuple[str, str, str, bool]


class _Sink(RecordingAdapter):
    """A chat adapter that keeps nothing, so only the bot's own memory is measured."""

    attached = 0

    def attach(self, name: str, data: bytes, slot: str = "") -> AttachmentRef:
        self.attached += 1
        url = f"https://cdn.example/{self.attached}/{name}"
        self.files[url] = data
        return AttachmentRef(name, url, len(data), "image/png", slot)

    async def download(self, ref: Any, max_bytes: int) -> bytes:
        return self.files.pop(ref.url)

    async def open_job_thread(
        self, where: Any, status: Any, *, again: bool = False
    ) -> PostedStatus:
        return PostedStatus(where, self._next())

    async def edit_status(self, thread: Any, message: str, status: Any) -> None:
        return None

    async def post_result(self, thread: Any, result: Any) -> list[str]:
        return [self._next()]


async def _batch(app: Any, adapter: _Sink, image: bytes, first: int, count: int) -> None:
    for n in range(first, first + count):
        await app.dispatcher.handle_text(
            chat_caller(f"user{n}"),
            "img2img x size=64x64",
            [adapter.attach("a.png", image)],
            RecordingResponder(),
        )
    await app.runner.wait_idle()


async def long_run(jobs: int = 10_000, batch: int = 250) -> list[Row]:
    from scenario_kit import png

    with tempfile.TemporaryDirectory() as tmp:
        config = fast_config(
            Path(tmp), local_delay=0.0, max_in_flight=100_000, status_interval=10.0
        )
        app = make_app(config)  # the local backend keeps jobs in a state folder
        adapter = _Sink()
        app.add_adapter(adapter)
        image = png(64, 64)
        started = time.perf_counter()
        async with app:
            await _batch(app, adapter, image, 0, batch)  # warm-up: imports, caches, pools
            gc.collect()
            before = rss_mb()
            for first in range(batch, jobs, batch):
                await _batch(app, adapter, image, first, batch)
            gc.collect()
            after = rss_mb()
            left = sum(1 for _ in (config.data_dir / "local").iterdir())
        took = time.perf_counter() - started
    return [
        (
            f"resident memory across {jobs:,} local jobs (after the first {batch}; "
            f"{took:.0f} s in all)",
            f"{before:.0f} → {after:.0f} MB",
            "≤ +25 MB",
            after - before <= 25,
        ),
        (
            f"local backend job folders left after {jobs:,} delivered jobs",
            str(left),
            "0",
            left == 0,
        ),
    ]


def _webp_bomb() -> bytes:
    """A lossless 16383x2000 WebP of one colour: about 1.3 KB, 32 megapixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (16383, 2000), (200, 30, 30)).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


async def webp_decodes(count: int = 16) -> list[Row]:
    bomb = _webp_bomb()
    with tempfile.TemporaryDirectory() as tmp:
        config = fast_config(Path(tmp))
        app = make_app(config)
        app.add_adapter(RecordingAdapter())
        gc.collect()
        base = rss_mb()
        peak = base
        async with app:
            inputs = [StoredImage("image", "wide.webp", bomb)]

            async def one() -> None:
                with contextlib.suppress(ImageInputError):
                    await app.runner.check_inputs("img2img", GenerateOptions(), inputs)

            tasks = [asyncio.create_task(one()) for _ in range(count)]
            while not all(t.done() for t in tasks):
                peak = max(peak, rss_mb())
                await asyncio.sleep(0.02)
            await asyncio.gather(*tasks)
    return [
        (
            f"peak resident memory preparing {count} × {len(bomb):,}-byte 16383×2000 "
            "lossless WebP at once (was 1.87 GB)",
            f"+{peak - base:.0f} MB",
            "≤ +1,100 MB (the 1 GiB decode budget)",
            peak - base <= 1100,
        )
    ]
