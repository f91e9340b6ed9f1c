"""The ESD-compatible server in a process of its own, for the ESD benchmarks.

ESD is a remote service: its work (rendering results, answering routes, storing files) is not
done in the bot's process. Run in the bot's process, it shares the event loop and the
interpreter lock with the bot being measured, and at 2,000 jobs finishing within 40 s its share
(about a third of the loop's time) decided the delays measured. `EsdProcess` runs
`cloud.esd_server.running_server` in a child (`python -m bench.esd_process`) and reads what the
benchmark needs from it over a line protocol on its stdin / stdout: the base URL first, then,
for each `stats` line, one JSON line with the request counters per route, each job's
completion time (the server's clock, seconds since the epoch) and when each list page was asked
for (this machine's clock, as the bot's). Closing stdin stops it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class ServerStats:
    requests: dict[str, int]
    completed: dict[str, float]  # job id → completion time on the server's clock
    list_times: list[float]  # when each list page was asked for (`time.time()`, not skewed)


class EsdProcess:
    """`async with EsdProcess(low, high, skew, queue) as url:` — the server in a child.

    `slots`: the Async endpoint's instances, each running one job at a time in the order jobs
    were started (ESD's `MaxConcurrentInvocationsPerInstance=1`, esd-api.md §8.1, §10.2);
    None: every started job runs at once."""

    def __init__(
        self,
        job_seconds: tuple[float, float],
        skew: float,
        events_queue: str | None,
        slots: int | None = None,
    ) -> None:
        self._args = [
            str(job_seconds[0]),
            str(job_seconds[1]),
            str(skew),
            events_queue or "",
            str(slots or 0),
        ]
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> str:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.esd_process",
            *self._args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        assert self._process.stdout is not None
        url = (await self._process.stdout.readline()).decode().strip()
        if not url.startswith("http"):
            await self.__aexit__()
            raise RuntimeError("the ESD server process did not start")
        return url

    async def stats(self) -> ServerStats:
        process = self._process
        assert process is not None
        assert process.stdin is not None
        assert process.stdout is not None
        async with self._lock:
            process.stdin.write(b"stats\n")
            await process.stdin.drain()
            data = json.loads(await process.stdout.readline())
        return ServerStats(data["requests"], data["completed"], data["list_times"])

    async def __aexit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


class _SkewedClock:
    """The server's wall clock, `skew` seconds off the bot's."""

    def __init__(self, skew: float) -> None:
        self.skew = timedelta(seconds=skew)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew


class _Requests(Counter[str]):
    """The server's requests per route (`state.requests`, counted `+= 1` by its API Gateway
    middleware), noting when each list page was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.list_times: list[float] = []

    def __setitem__(self, route: str, count: int) -> None:
        if route == "list_inferences":
            self.list_times.append(time.time())
        super().__setitem__(route, count)


async def _serve(low: float, high: float, skew: float, queue: str, slots: int) -> None:
    from cloud.esd_server import ServerConfig, running_server
    from cloud.esd_server.config import DEFAULT_ENDPOINTS, EndpointSpec

    config = ServerConfig(job_seconds=(low, high), events_queue_url=queue or None)
    if slots:
        async_endpoint = EndpointSpec(
            "sd-async-local", "Async", instance_count=slots, max_instances=slots
        )
        config = replace(
            config,
            endpoints=(async_endpoint, *DEFAULT_ENDPOINTS[1:]),
            invocations_per_instance=1,
        )
    loop = asyncio.get_running_loop()
    async with running_server(config) as url:
        state = url.state
        state.clock = _SkewedClock(skew)
        state.requests = requests = _Requests()
        print(url, flush=True)
        while await loop.run_in_executor(None, sys.stdin.readline):
            answer: dict[str, Any] = {
                "requests": dict(requests),
                "list_times": requests.list_times,
                "completed": {
                    job_id: record.completed.timestamp()
                    for job_id, record in state.jobs.items()
                    if record.completed is not None
                },
            }
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    low, high, skew = (float(arg) for arg in sys.argv[1:4])
    asyncio.run(_serve(low, high, skew, sys.argv[4], int(sys.argv[5])))
