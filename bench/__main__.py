"""`python -m bench [name …]`: run the benchmarks and write docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench import a1111_queue, esd_polling, memory, scenarios
from bench.machine import describe

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"

BENCHMARKS = {
    "jobs": lambda: asyncio.run(scenarios.jobs_query()),
    "image": scenarios.image_prep,
    "ack": lambda: asyncio.run(scenarios.ack_latency()),
    "inflight": lambda: asyncio.run(scenarios.in_flight()),
    "memory": lambda: asyncio.run(memory.long_run()),
    "webp": lambda: asyncio.run(memory.webp_decodes()),
    # 500 ESD jobs of 60–600 s (10+ minutes); SDBOT_BENCH_QUICK=1 runs 15–60 s jobs instead.
    "esd": lambda: asyncio.run(esd_polling.esd_polling()),
    "webui": lambda: asyncio.run(a1111_queue.webui_queue()),
}


def main(argv: list[str]) -> int:
    if "--quick" in argv:  # the ESD benchmark with 15–60 s jobs: a look, not the figures
        os.environ[esd_polling.QUICK_ENV] = "1"
        argv = [a for a in argv if a != "--quick"]
    names = argv or list(BENCHMARKS)
    rows = []
    for name in names:
        print(f"running {name} …", file=sys.stderr, flush=True)
        rows.extend(BENCHMARKS[name]())
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); timing lives here, never in tests.",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on: {describe()}.",
        "",
        "| Measure | Figure | Target | Met |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {what} | {figure} | {target} | {'yes' if ok else '**no**'} |"
        for what, figure, target, ok in rows
    ]
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
