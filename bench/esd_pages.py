"""Which ESD list page to read next (`cloud.esd.pages`), simulated: how long after a job ends a
page read shows it, with the `Listing`'s choice against reading the pages in turn.

No server and no event loop: a list of N jobs (newest first, pages of `_ROWS`, position keys as
DynamoDB's), a clock moved in steps of 0.1 s, a round whenever `Listing.due` says so at one page
a second (each page at most every 1.5 s, the ESD defaults), and each job forgotten once a read
showed it ended (as the book does once the poller took the answer). Two ways jobs end:

- *at random*: every job takes uniform(20, 60) s from when it is sent, all running at once
  (the `esd` benchmark's server);
- *in order*: jobs run on 500 slots, one job per slot at a time, in the order sent (an Async
  endpoint runs one job per instance at a time, queued: esd-api.md §10.2), each taking
  uniform(20, 60) s; the jobs ending in the 60 s from the last one sent are measured, as the
  `esd-queue` benchmark measures them (a read up to 15 s after the window still counts).

Jobs are sent at 150 a second (the `esd` benchmark's bot sends 2,000 in about 14 s), so pages
are read while the list grows, and bookmarks found at different times overlap.

"In turn" is the same `Listing` with every page promising alike, so the oldest read goes first: what
a scan of every page at a page a second gives. The figure is the delay from a job's end to the
read that shows it, p50 and p95 over every job measured, median of `runs` seeds. It leaves out
what follows the read (the poller's call, the result read, the post: `esd` measures those).
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from bench.machine import percentile
from bot.model import JobState
from cloud.esd.config import EsdConfig
from cloud.esd.pages import Listing, Page, Segment
from cloud.esd.payloads import EsdJob

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

Row = tuple[str, str, str, bool]

_STEP = 0.1
# Jobs ending in order: those that end in this window from the last one sent, each seen up to
# `_GRACE` s after it (the `esd-queue` benchmark's window and grace).
_WINDOW = 60.0
_GRACE = 15.0
_SLOTS = 500
# Rows a page holds: the book asks for `page_size` (500), and ESD's 1 MB cap cuts a page of the
# bot's rows (presigned upload URLs with a session token in each) at about 420, as the
# ESD-compatible server does (tests/esd_server/test_esd_server_listing.py).
_ROWS = 420
_JOB_SECONDS = (20.0, 60.0)
_T0 = datetime(2026, 1, 1, tzinfo=UTC)
# The `esd` benchmark's bot sends 2,000 jobs in about 14 s.
_SEND_RATE = 150.0


@dataclass(frozen=True)
class _Result:
    p50: float
    p95: float
    pages_per_second: float


def _ends(count: int, in_order: bool, rng: random.Random) -> list[float]:
    """When each job ends, oldest first (job i is sent at i / `_SEND_RATE`)."""
    low, high = _JOB_SECONDS
    if not in_order:
        return [i / _SEND_RATE + rng.uniform(low, high) for i in range(count)]
    slots = [0.0] * _SLOTS
    ends = []
    for i in range(count):
        start = max(heapq.heappop(slots), i / _SEND_RATE)
        ends.append(start + rng.uniform(low, high))
        heapq.heappush(slots, ends[-1])
    return ends


def _row(index: int, ended: bool) -> EsdJob:
    state = JobState.SUCCEED if ended else JobState.INPROGRESS
    created = _T0 + timedelta(milliseconds=index)
    return EsdJob(f"job-{index:06}", "img2img", state.value, state, created_at=created)


def _simulate(count: int, in_order: bool, seed: int) -> _Result:
    config = EsdConfig(api_url="http://127.0.0.1/", api_key="bench")
    size, rate, interval = config.page_size, config.list_pages_per_second, config.list_interval
    ends = _ends(count, in_order, random.Random(seed))
    listing = Listing(max_depth=config.status_pages, page_size=size, now=0.0)
    opens = count / _SEND_RATE if in_order else 0.0
    closes = opens + _WINDOW if in_order else math.inf
    horizon = closes + _GRACE if in_order else max(ends) + 30.0
    delays: list[float] = []
    reads, step, sent = 0, 0, 0
    while (now := step * _STEP) < horizon:
        step += 1
        while sent < count and sent / _SEND_RATE <= now:
            listing.place(f"job-{sent:06}")
            sent += 1
        if listing.due(now, rate, interval) > now:
            continue
        read: list[Segment] = []
        while segment := listing.choose(
            now, min_interval=interval, pages_per_second=rate, read=read
        ):
            read.append(segment)
            reads += 1
            # Newest first, after the key (the index of the page's last job, as text).
            top = sent - 1 if segment.key is None else int(segment.key) - 1
            chunk = list(range(top, max(-1, top - _ROWS), -1))
            rows = [_row(i, ends[i] <= now) for i in chunk]
            more = bool(chunk) and chunk[-1] > 0
            listing.record(segment, Page(rows, str(chunk[-1]) if more else None), now)
        for job_id, row in list(listing.rows.items()):
            if row.state is JobState.SUCCEED:
                ended = ends[int(job_id[4:])]
                if opens <= ended < closes:
                    delays.append(now - ended)
                listing.remove(job_id)
    return _Result(statistics.median(delays), percentile(delays, 95), reads / horizon)


@contextmanager
def _in_turn() -> Iterator[None]:
    """Pages in turn: every segment promises alike, so the oldest read goes first."""
    promise = Listing._promise
    Listing._promise = lambda self, start, segment: 1.0  # type: ignore[method-assign]
    try:
        yield
    finally:
        Listing._promise = promise  # type: ignore[method-assign]


def esd_pages(sizes: Sequence[int], runs: int) -> list[Row]:
    rows: list[Row] = []
    for in_order in (False, True):
        for count in sizes:
            chosen = [_simulate(count, in_order, seed) for seed in range(runs)]
            with _in_turn():
                turn = [_simulate(count, in_order, seed) for seed in range(runs)]
            p50 = statistics.median(r.p50 for r in chosen)
            p95 = statistics.median(r.p95 for r in chosen)
            way = "in the order sent, 500 at a time" if in_order else "at random, all at once"
            rows.append(
                (
                    f"job ended → page read shows it, {count:,} jobs ending {way} (simulated, "
                    f"median of {runs} seeds): p50 (p95 {p95:.2f} s; pages in turn: p50 "
                    f"{statistics.median(r.p50 for r in turn):.2f} s, p95 "
                    f"{statistics.median(r.p95 for r in turn):.2f} s); "
                    f"{statistics.median(r.pages_per_second for r in chosen):.2f} pages/s",
                    f"{p50:.2f} s",
                    "≤ pages in turn",
                    p50 <= statistics.median(r.p50 for r in turn) + 0.05,
                )
            )
    return rows
