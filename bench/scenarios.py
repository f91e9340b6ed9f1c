"""The benchmarks of issue 3: job listing at scale, image preparation against Pillow's floor,
acknowledgement latency under a burst, and 1,000 jobs in flight.

Each returns rows of (what, figure, target, met) for the report.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from bench.machine import percentile, rss_mb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kit"))

from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    make_app,
    png,
)

from bot import imaging
from bot.model import Caller, Conversation, Delivery, Job, JobState, Platform
from bot.store import _INSERT_JOB, _job_row
from commands import parse

Row = tuple[str, str, str, bool]


# -- 1. `jobs` over 100,000 stored jobs --------------------------------------------------------


def _fill_store(path: Path, count: int) -> None:
    """Write `count` jobs straight into a migrated database, spread over users and states."""
    rng = random.Random(7)
    commands = ["img2img", "inpaint", "inpaint-sketch", "sketch", "interrogate"]
    states = [JobState.SUCCEED] * 8 + [JobState.FAILED, JobState.CANCELLED]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    conn = sqlite3.connect(path)
    rows = []
    for n in range(count):
        user = f"u{rng.randrange(500)}"
        server = f"g{rng.randrange(5)}"
        created = start + timedelta(seconds=n * 250)
        job = Job(
            id=f"{n:010d}",
            command=rng.choice(commands),
            caller=Caller(Platform.DISCORD, server, user, Conversation("c1")),
            state=rng.choice(states),
            created_at=created,
            options={"prompt": "a cat"},
            endpoint=rng.choice(["sd-async-a", "sd-async-b"]),
            model=rng.choice(["a.safetensors", "b.safetensors", "c.safetensors"]),
            started_at=created,
            finished_at=created + timedelta(seconds=30),
            delivery=Delivery.DONE,
        )
        rows.append(_job_row(job))
    with conn:
        conn.executemany(_INSERT_JOB, rows)
        conn.execute("ANALYZE")
    conn.close()


async def jobs_query(count: int = 100_000, runs: int = 200) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        config = fast_config(Path(tmp))
        app = make_app(config)
        app.add_adapter(RecordingAdapter())
        await app.store.start()  # create and migrate the schema
        await app.store.aclose()
        _fill_store(config.data_dir / "sdbot.sqlite3", count)
        app = make_app(config)
        app.add_adapter(RecordingAdapter())
        queries = [
            "jobs",
            "jobs status=failed",
            "jobs type=inpaint since=30d",
            "jobs endpoint=sd-async-b model=b.safetensors",
            "jobs until=2026-03-01 status=succeed",
            "jobs user=u7",
            "jobs type=sketch status=cancelled since=2026-02-01 until=2026-06-01",
        ]
        timings: list[float] = []
        answered = 0
        async with app:
            for n in range(runs):
                text = queries[n % len(queries)]
                admin = n % 2 == 0
                caller = chat_caller(f"u{n % 500}", server=f"g{n % 5}", admin=admin)
                if not admin and "user=" in text:
                    text = "jobs"
                r = RecordingResponder()
                t0 = time.perf_counter()
                await app.dispatcher.handle_command(caller, parse(text), [], r)
                timings.append((time.perf_counter() - t0) * 1000)
                assert not r.refusals, r.refusals
                answered += len(r.replies[0][0].splitlines()) if r.replies else 0
    p95 = percentile(timings, 95)
    return [
        (
            f"`jobs` with filters over {count:,} stored jobs, p95 (p50 "
            f"{statistics.median(timings):.1f} ms; {answered / runs:.1f} lines per answer)",
            f"{p95:.1f} ms",
            "≤ 20 ms",
            p95 <= 20,
        )
    ]


# -- 2. Image preparation against Pillow's floor ------------------------------------------------


def _photo_like(size: int) -> bytes:
    """A 2048² picture with gradients, shapes and noise: compresses like a photo, not a logo."""
    rng = random.Random(3)
    image = Image.radial_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(300):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(10, 200)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(3))
    noise = Image.effect_noise((size, size), 24).convert("RGB")
    image = Image.blend(image, noise, 0.15)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _mask(size: int) -> bytes:
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).ellipse([size // 4, size // 4, size * 3 // 4, size * 3 // 4], fill=255)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _floor(photo: bytes, mask: bytes) -> int:
    """Pillow's floor: decode both, PNG-encode both at level 1, base64 both (no resizing)."""
    size = 0
    for data in (photo, mask):
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            buf = io.BytesIO()
            image.save(buf, "PNG", compress_level=1)
        size += len(base64.b64encode(buf.getvalue()))
    return size


def _bot(photo: bytes, mask: bytes) -> int:
    """The bot's own preparation into the backend payload: pipeline + base64 data URLs."""
    prepared = imaging.prepare(
        "inpaint-upload",
        imaging.InputFile("photo.png", photo),
        imaging.InputFile("mask.png", mask),
        mask_blur=4,
        limits=imaging.ImageLimits(),
    )
    assert prepared.mask_png is not None
    init = "data:image/png;base64," + base64.b64encode(prepared.init_png).decode()
    mask_url = "data:image/png;base64," + base64.b64encode(prepared.mask_png).decode()
    return len(init) + len(mask_url)


def image_prep(size: int = 2048, rounds: int = 7) -> list[Row]:
    photo, mask = _photo_like(size), _mask(size)
    floors, bots = [], []
    payload = 0
    for _ in range(rounds):  # interleaved, so both see the same machine state
        t0 = time.perf_counter()
        _floor(photo, mask)
        floors.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        payload = _bot(photo, mask)
        bots.append(time.perf_counter() - t0)
    floor, bot = statistics.median(floors), statistics.median(bots)
    ratio = bot / floor
    return [
        (
            f"prepare a {size}² photo-like PNG ({len(photo) / 1e6:.1f} MB) + mask into the payload "
            f"({payload / 1e6:.1f} MB): bot {bot * 1000:.0f} ms vs Pillow's floor "
            f"{floor * 1000:.0f} ms",
            f"{ratio:.2f}×",
            "≤ 1.3×",
            ratio <= 1.3,
        )
    ]


# -- 3. Acknowledgement latency under a burst ---------------------------------------------------


class _TimedResponder(RecordingResponder):
    def __init__(self, started: float, sink: list[float]) -> None:
        super().__init__()
        self._started = started
        self._sink = sink

    async def accepted(self, job_id: str) -> None:
        self._sink.append((time.perf_counter() - self._started) * 1000)
        await super().accepted(job_id)


async def ack_latency(burst: int = 200) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        config = fast_config(Path(tmp), local_delay=5.0, max_in_flight=10_000)
        app = make_app(config)
        adapter = RecordingAdapter()
        app.add_adapter(adapter)
        image = png(512, 512)
        latencies: list[float] = []
        async with app:
            calls = []
            for n in range(burst):
                ref = adapter.attach("a.png", image)
                caller = chat_caller(f"user{n}")
                calls.append((caller, ref))
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    app.dispatcher.handle_text(
                        caller, "img2img a cat", [ref], _TimedResponder(t0, latencies)
                    )
                    for caller, ref in calls
                )
            )
            await app.runner.aclose()
    p99 = percentile(latencies, 99)
    return [
        (
            f"acknowledgement of {burst} commands arriving at once, p99 (p50 "
            f"{statistics.median(latencies):.1f} ms)",
            f"{p99:.1f} ms",
            "≤ 50 ms",
            p99 <= 50 and len(latencies) == burst,
        )
    ]


# -- 4. 1,000 jobs in flight ------------------------------------------------------------------


async def in_flight(jobs: int = 1000, hold: float = 20.0) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        config = fast_config(
            Path(tmp),
            local_delay=hold,
            max_in_flight=10_000,
            poll_interval=1.0,
            poll_max_interval=10.0,
            status_interval=10.0,
        )
        app = make_app(config)
        adapter = RecordingAdapter()
        app.add_adapter(adapter)
        image = png(64, 64)
        lags: list[float] = []
        peak = 0.0
        async with app:
            for n in range(jobs):
                await app.dispatcher.handle_text(
                    chat_caller(f"user{n}"),
                    "img2img x size=64x64",
                    [adapter.attach("a.png", image)],
                    RecordingResponder(),
                )
            loop = asyncio.get_running_loop()
            end = loop.time() + hold * 0.8
            while loop.time() < end:  # sample the loop's lag while every job is in flight
                t0 = loop.time()
                await asyncio.sleep(0.01)
                lags.append((loop.time() - t0 - 0.01) * 1000)
                peak = max(peak, rss_mb())
            running = app.runner.in_flight
            await app.runner.wait_idle()
            delivered = len(adapter.results())
    p99 = percentile(lags, 99)
    return [
        (
            f"resident memory with {running} jobs in flight (local backend)",
            f"{peak:.0f} MB",
            "≤ 200 MB",
            peak <= 200,
        ),
        (
            f"event-loop lag p99 with {running} jobs in flight ({delivered} delivered after)",
            f"{p99:.1f} ms",
            "≤ 50 ms",
            p99 <= 50,
        ),
    ]


__all__ = ["ack_latency", "image_prep", "in_flight", "jobs_query", "replace"]
