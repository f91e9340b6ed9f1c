"""The ESD polling benchmarks of issue 4: 500 jobs in flight on the ESD-compatible server.

The real core (`BotApp`, SQLite store, job runner, poller) drives the real `EsdBackend` against
`sdbot local-backend` (`running_server`, in process, on loopback) through a recording chat
adapter that notes when each result is posted. Every job is submitted at once and takes
uniform(60, 600) s on the server (`SDBOT_BENCH_QUICK=1 python -m bench esd`: 15–60 s). Measured: the
status requests per second (list pages + per-job reads, from the server's own counters) while
all jobs are in flight and none has finished yet, the status requests per completed job over the
whole run (the one read per job that fetches fresh result URLs included; storage downloads
counted apart), and the delay from the server marking a job `succeed` (its record's completion
time) to the adapter being asked to post the result. Each returns rows of
(what, figure, target, met) for the report.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.machine import percentile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kit"))

from scenario_kit import RecordingAdapter, RecordingResponder, chat_caller, make_app, png

from bot.config import Config, Secrets
from bot.model import JobState
from cloud.esd import EsdBackend, EsdConfig
from cloud.esd_server import ServerConfig, running_server

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bot.model import Conversation
    from bot.views import ResultView
    from cloud.esd_server import ServerState

Row = tuple[str, str, str, bool]

QUICK_ENV = "SDBOT_BENCH_QUICK"
FULL_JOB_SECONDS = (60.0, 600.0)
# Long enough that the submission burst settles well before the first job ends, so the quick
# run still has a window with every job in flight.
QUICK_JOB_SECONDS = (15.0, 60.0)
# The deployment's polling settings are the defaults: the core asks about a job every 0.5–1 s
# (±20 % jitter); the ESD backend answers from a list scan it reuses for
# `EsdConfig.list_interval`, so what ESD sees is pages per scan, not the number of jobs due.
POLL_INTERVAL = Config().poll_interval
POLL_MAX_INTERVAL = Config().poll_max_interval
# After the last job started, rounds that still see newcomers rescan at once; let them pass.
_SETTLE_SECONDS = 3.0
_SAMPLE_SECONDS = 0.25
_PROGRESS_SECONDS = 30.0
# Beyond the longest job: delivery of the last ones, and a bound if something hangs.
_DRAIN_MARGIN = 180.0
_STATUS_ROUTES = ("list_inferences", "get_inference")


class _TimedAdapter(RecordingAdapter):
    """`RecordingAdapter` that notes when the core first asks it to post each job's result."""

    def __init__(self) -> None:
        super().__init__()
        self.posted_at: dict[str, float] = {}  # bot job id → wall time (s since the epoch)

    async def post_result(self, thread: Conversation, result: ResultView) -> Sequence[str]:
        self.posted_at.setdefault(result.job_id, time.time())
        return await super().post_result(thread, result)


@dataclass(frozen=True)
class _Sample:
    at: float  # wall time
    started: int  # `PUT inferences/{id}/start` received
    lists: int  # `GET inferences?type=…` pages received
    reads: int  # `GET inferences/{id}` received


def _status_requests(state: ServerState) -> int:
    return sum(state.requests[route] for route in _STATUS_ROUTES)


async def _sample(state: ServerState, into: list[_Sample]) -> None:
    """Read the server's counters every `_SAMPLE_SECONDS` until cancelled."""
    while True:
        counts = state.requests
        into.append(
            _Sample(
                time.time(),
                counts["start_inference"],
                counts["list_inferences"],
                counts["get_inference"],
            )
        )
        await asyncio.sleep(_SAMPLE_SECONDS)


async def _progress(state: ServerState, adapter: _TimedAdapter, jobs: int) -> None:
    """A line on stderr every `_PROGRESS_SECONDS`: a full run is quiet for ten minutes."""
    began = time.monotonic()
    while True:
        await asyncio.sleep(_PROGRESS_SECONDS)
        print(
            f"  esd: {time.monotonic() - began:.0f} s, {len(adapter.posted_at)}/{jobs} delivered, "
            f"{_status_requests(state)} status requests",
            file=sys.stderr,
            flush=True,
        )


def _steady_rate(
    samples: list[_Sample], jobs: int, first_done: float
) -> tuple[float, float, float]:
    """List pages and job reads per second, and the window's length, from the end of the
    submission burst (plus `_SETTLE_SECONDS`) to the first job's completion; NaNs and 0 without
    a window. Rates are least-squares slopes of the counters over every sample in the window:
    requests come in bursts (a scan's pages back to back, once per `list_interval`), and a
    plain difference would swing by a burst depending on where the window's edges fall."""
    burst_end = next((s.at for s in samples if s.started >= jobs), None)
    if burst_end is None:
        return float("nan"), float("nan"), 0.0
    inside = [s for s in samples if burst_end + _SETTLE_SECONDS <= s.at <= first_done]
    if len(inside) < 8 or inside[-1].at - inside[0].at < 2.0:
        return float("nan"), float("nan"), 0.0
    times = [s.at - inside[0].at for s in inside]
    lists = statistics.linear_regression(times, [float(s.lists) for s in inside]).slope
    reads = statistics.linear_regression(times, [float(s.reads) for s in inside]).slope
    return lists, reads, times[-1]


def _is_quick() -> bool:
    return os.environ.get(QUICK_ENV, "").strip().lower() not in ("", "0", "false", "no")


async def esd_polling(
    jobs: int = 500,
    *,
    quick: bool | None = None,
    job_seconds: tuple[float, float] | None = None,
) -> list[Row]:
    """Run `jobs` img2img jobs at once through core → EsdBackend → ESD-compatible server.

    `quick` defaults to `SDBOT_BENCH_QUICK`; `job_seconds` overrides both ranges (trials).
    """
    quick = _is_quick() if quick is None else quick
    low, high = job_seconds or (QUICK_JOB_SECONDS if quick else FULL_JOB_SECONDS)
    server = ServerConfig(job_seconds=(low, high))
    samples: list[_Sample] = []
    delays: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with running_server(server) as url:
            state = url.state
            config = Config(
                backend="esd",
                esd_api_url=url,
                secrets=Secrets(esd_api_key=server.api_key),
                data_dir=Path(tmp) / "data",
                output_dir=Path(tmp) / "out",
                poll_interval=POLL_INTERVAL,
                poll_max_interval=POLL_MAX_INTERVAL,
                max_in_flight=max(jobs, 200),
            )
            # As the composition root builds it: the deployment's list page, depth and reuse.
            esd = EsdConfig.from_config(config)
            app = make_app(config, EsdBackend(esd))
            adapter = _TimedAdapter()
            app.add_adapter(adapter)
            image = png(64, 64)
            async with app:
                sampler = asyncio.create_task(_sample(state, samples), name="bench-esd-sampler")
                progress = asyncio.create_task(
                    _progress(state, adapter, jobs), name="bench-esd-progress"
                )
                try:
                    refused: list[str] = []
                    for n in range(jobs):
                        responder = RecordingResponder()
                        await app.dispatcher.handle_text(
                            chat_caller(f"user{n}"),
                            "img2img a red fox size=64x64",
                            [adapter.attach("a.png", image)],
                            responder,
                        )
                        refused += responder.refusals
                    if refused:
                        raise RuntimeError(f"{len(refused)} job(s) refused: {refused[0]}")
                    drained = True
                    try:
                        await asyncio.wait_for(app.runner.wait_idle(), high + _DRAIN_MARGIN)
                    except TimeoutError:
                        drained = False
                finally:
                    for task in (sampler, progress):
                        task.cancel()
                    await asyncio.gather(sampler, progress, return_exceptions=True)
                in_flight_left = app.runner.in_flight
                for job_id, posted in adapter.posted_at.items():
                    job = await app.store.get(job_id)
                    record = state.jobs.get(job.backend_id) if job and job.backend_id else None
                    if job is None or job.state is not JobState.SUCCEED or record is None:
                        continue
                    if record.completed is not None:
                        delays.append(posted - record.completed.timestamp())
            completions = [r.completed.timestamp() for r in state.jobs.values() if r.completed]
            requests = dict(state.requests)
    succeeded = len(delays)
    first_done = min(completions, default=float("inf"))
    list_rate, read_rate, window = _steady_rate(samples, jobs, first_done)
    rate = list_rate + read_rate
    lists = requests.get("list_inferences", 0)
    reads = requests.get("get_inference", 0)
    downloads = requests.get("s3_get", 0)
    per_job = (lists + reads) / succeeded if succeeded else float("nan")
    began = samples[0].at if samples else float("nan")
    seconds = max(adapter.posted_at.values(), default=began) - began
    p50 = statistics.median(delays) if delays else float("nan")
    p95 = percentile(delays, 95)
    ok_run = drained and in_flight_left == 0 and succeeded == jobs
    run = (
        f"{'full' if (low, high) == FULL_JOB_SECONDS else 'quick'} run: {jobs} jobs of "
        f"{low:.0f}–{high:.0f} s submitted at once; poll {POLL_INTERVAL:g} s → max "
        f"{POLL_MAX_INTERVAL:g} s ±20 %, list pages of "
        f"{esd.page_size} (≤ {esd.status_pages}) reused {esd.list_interval:g} s"
    )
    if not ok_run:
        run += f"; only {succeeded} delivered as succeeded, {in_flight_left} still in flight"
    return [
        (
            f"ESD status requests per second with all {jobs} jobs in flight, over the "
            f"{window:.0f} s before the first finished: {list_rate:.2f} list pages/s + "
            f"{read_rate:.2f} job reads/s ({run})",
            f"{rate:.2f}/s",
            "≤ 2/s",
            ok_run and rate <= 2,
        ),
        (
            f"ESD status requests per completed job over the whole run ({seconds:.0f} s, "
            f"{(lists + reads) / seconds:.2f}/s): {lists} list pages + {reads} job reads (one "
            f"per job fetches its result URLs) for {succeeded} jobs; "
            f"plus {downloads / max(succeeded, 1):.1f} storage downloads per job (image + "
            f"`_param.json`)",
            f"{per_job:.2f}",
            "≤ 2 plus the image downloads",
            ok_run and per_job <= 2,
        ),
        (
            f"delay from the server marking a job `succeed` to the adapter posting it, p50 "
            f"(p95 {p95:.2f} s, max {max(delays, default=float('nan')):.2f} s)",
            f"{p50:.2f} s",
            "≤ 1.5 s",
            ok_run and p50 <= 1.5,
        ),
        (
            "delay from `succeed` to delivery, p95",
            f"{p95:.2f} s",
            "≤ 4 s",
            ok_run and p95 <= 4,
        ),
    ]


__all__ = ["FULL_JOB_SECONDS", "QUICK_ENV", "QUICK_JOB_SECONDS", "esd_polling"]
