"""The WebUI backend's queue: 40 jobs from 8 users through the real core on `A1111Backend`,
against the fake WebUI on loopback (each job 0.25 s of "GPU" time, one at a time).

Measured: the WebUI's idle gap between one job's end and the next one's start (what the bot's
own queue costs the GPU), the whole run against the GPU time it needed, and the progress reads
per second of running time (`/sdapi/v1/progress`, one reader for all jobs). Returns rows of
(what, figure, target, met) for the report.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import percentile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kit"))

from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    make_app,
    png,
)

from cloud.a1111 import A1111Backend, A1111Config
from tests.a1111.fake_webui import FakeWebUI

JOBS = 40
USERS = 8
JOB_SECONDS = 0.25


async def webui_queue() -> list[tuple[str, str, str, bool]]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        async with FakeWebUI(job_seconds=JOB_SECONDS) as fake:
            config = fast_config(tmp_path, user_concurrency=JOBS, status_interval=1.0)
            backend = A1111Backend(
                A1111Config(api_url=fake.url, state_dir=tmp_path / "a1111", endpoint_name="webui")
            )
            app = make_app(config, backend)
            adapter = RecordingAdapter()
            app.add_adapter(adapter)
            async with app:
                started = time.monotonic()
                for n in range(JOBS):
                    await app.dispatcher.handle_text(
                        chat_caller(f"user{n % USERS}"),
                        f"img2img job {n} endpoint=webui",
                        [adapter.attach("a.png", png())],
                        RecordingResponder(),
                    )
                await app.runner.wait_idle()
                total = time.monotonic() - started
            done = sorted(fake.received, key=lambda r: r.started)
            gaps = [b.started - a.ended for a, b in itertools.pairwise(done)]
            busy = sum(r.ended - r.started for r in done)
            reads = fake.progress_reads / busy
    ok = len(adapter.results()) == JOBS and len(done) == JOBS
    gap_p95 = percentile(gaps, 95) * 1000
    return [
        (
            f"WebUI idle gap between queued jobs ({JOBS} jobs, {USERS} users), median / p95",
            f"{statistics.median(gaps) * 1000:.1f} / {gap_p95:.1f} ms",
            "p95 < 100 ms",
            ok and gap_p95 < 100,
        ),
        (
            f"Whole run vs the GPU time it needed ({JOBS} × {JOB_SECONDS} s)",
            f"{total:.1f} s vs {busy:.1f} s",
            "< 1.3 ×",
            ok and total < 1.3 * busy,
        ),
        (
            "Progress reads per second of running time (all jobs share one reader)",
            f"{reads:.2f}/s",
            "≤ 1.2/s",
            reads <= 1.2,
        ),
    ]
