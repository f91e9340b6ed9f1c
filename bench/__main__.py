"""`python -m bench [name …] [--jobs N,N] [--runs R]`: run benchmarks, update docs/benchmarks.md.

Each benchmark writes its own section of the report (between `<!-- bench:NAME -->` markers),
so running one leaves the others' figures alone. Every section says the command that made it.
Figures are medians of `--runs` runs (default 3), as ratios to a floor measured in the same run
where one exists.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bench import a1111_queue, esd_pages, esd_polling, memory, scenarios, stores, takeover
from bench.machine import describe

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Row = tuple[str, str, str, bool]

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"

# name → (default sizes, runner(sizes, runs) → rows)
BENCHMARKS: dict[str, tuple[tuple[int, ...], Callable[[Sequence[int], int], list[Row]]]] = {
    "jobs": ((1_000_000,), lambda sizes, runs: asyncio.run(scenarios.jobs_query(sizes, runs))),
    "image": ((2048,), lambda sizes, runs: scenarios.image_prep(sizes, runs)),
    "ack": ((200, 1000, 5000), lambda sizes, runs: asyncio.run(scenarios.ack_latency(sizes, runs))),
    "inflight": ((1000,), lambda sizes, runs: scenarios.in_flight(sizes, runs)),
    # The job store on PostgreSQL beside SQLite (bench/stores.py).
    "ack-pg": ((1000,), lambda sizes, runs: asyncio.run(stores.ack_burst(sizes, runs))),
    "claims": ((20_000,), lambda sizes, runs: asyncio.run(stores.claims(sizes, runs))),
    # Jobs of a replica killed with SIGKILL, resumed by another (bench/takeover.py).
    "takeover": ((50, 200), lambda sizes, runs: asyncio.run(takeover.takeover(sizes, runs))),
    "esd": ((500, 2000), lambda sizes, runs: esd_polling.esd_polling(sizes, runs)),
    # Jobs queued on the endpoint's instances, as ESD runs them; a window of steady state.
    "esd-queue": ((500, 2000), lambda sizes, runs: esd_polling.esd_queue(sizes, runs)),
    # Which list page to read next, simulated: the chosen page against pages in turn.
    "esd-pages": ((500, 2000, 10000), lambda sizes, runs: esd_pages.esd_pages(sizes, runs)),
    "esd-events": ((500, 2000), lambda sizes, runs: esd_polling.esd_events(sizes, runs)),
    # The same with backstop scans landing in the run (delivery must not wait for them).
    "esd-events-scans": ((2000,), lambda sizes, runs: esd_polling.esd_events_scans(sizes, runs)),
    # One size and run of their own (bench/a1111_queue.py, bench/memory.py).
    "webui": ((1,), lambda sizes, runs: asyncio.run(a1111_queue.webui_queue())),
    "memory": ((1,), lambda sizes, runs: asyncio.run(memory.long_run())),
    "webp": ((1,), lambda sizes, runs: asyncio.run(memory.webp_decodes())),
}


def _section(name: str, command: str, rows: list[Row]) -> str:
    """The report section of one benchmark run, between markers named `name`."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"<!-- bench:{name} -->",
        f"### `{name}`",
        "",
        f"`{command}` — run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {describe()}; "
        f"load average at the end {load} (the machine is shared).",
        "",
        "| Measure | Figure | Target | Met |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {what} | {figure} | {target} | {'yes' if ok else '**no**'} |"
        for what, figure, target, ok in rows
    ]
    lines.append(f"<!-- /bench:{name} -->")
    return "\n".join(lines)


def _write(name: str, section: str) -> None:
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    REPORT.write_text(text)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], metavar="name")
    parser.add_argument("--jobs", help="comma-separated sizes instead of the defaults")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    for name in args.names or list(BENCHMARKS):
        default, runner = BENCHMARKS[name]
        sizes = tuple(int(n) for n in args.jobs.split(",")) if args.jobs else default
        command, key = f"python -m bench {name}", name
        if sizes != default:
            command += f" --jobs {','.join(str(n) for n in sizes)}"
            key += "-" + "-".join(str(n) for n in sizes)
        if args.runs != 3:
            command += f" --runs {args.runs}"
            key += f"-runs{args.runs}"
        print(f"running {command} …", file=sys.stderr, flush=True)
        section = _section(key, command, runner(sizes, args.runs))
        _write(key, section)
        print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
