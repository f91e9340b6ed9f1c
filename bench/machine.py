"""What the benchmarks ran on, for the report."""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import platform
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

_P = ParamSpec("_P")
_T = TypeVar("_T")


def describe() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}, Pillow {version('Pillow')}, "
        f"SQLite {__import__('sqlite3').sqlite_version}"
    )


def rss_mb() -> float:
    """Resident memory of this process now (Linux), in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def in_own_process(
    run: Callable[_P, Coroutine[Any, Any, _T]], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """`asyncio.run(run(*args, **kwargs))` in a new interpreter (spawned), its answer pickled
    back. A run then starts from a fresh process, not from what earlier runs left to the
    allocator and the collector: in one shared process the third 10,000-job `inflight` run
    measured 318 MB, and the later runs of a benchmark carry the heap of all the runs before."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(_run_in_loop, functools.partial(run, *args, **kwargs)).result()


def _run_in_loop(run: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    return asyncio.run(run())
