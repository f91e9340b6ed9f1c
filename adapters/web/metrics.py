"""Prometheus metrics for operators, measured at the ports rather than inside the core.

`Metrics` owns one `CollectorRegistry` and is the core's `bot.ports.Observer` (refusals and
acknowledgement time, the two things only the dispatcher sees). Everything else comes from
wrapping the ports at the composition root (`adapters.cli`):

- `instrument_store`: latency of every store call, and the job lifecycle read off the rows the
  core writes (created, finished, time to submit, time on the backend, succeed → posted);
- `instrument_backend`: calls and errors by method; each `statuses` call is one poller round
  (its duration and the number of jobs in it); when the backend last answered (readiness);
- `instrument_chat`: calls and errors of each `ChatAdapter` method by platform;
- `http_trace`: an aiohttp `TraceConfig` counting HTTP requests by route template and status
  (ESD's REST API, the WebUI's API, Slack's Web API, Discord's REST API), so 429s show up per
  route;
- `event_lag`: fed by ESD's completion-events consumer (`CompletionConsumer.observe_lag`);
- `watch_ownership`: the job leases this replica holds, its writes refused for an old fence
  (another replica took the job over) and the jobs it parked after too many takeovers, read
  off the runner at each scrape.

Labels carry bounded values only: command names, states, platforms, method names, exception
class names, route templates, and endpoint names capped by `LabelCap`. Never a prompt, a user
or a job id.
"""

from __future__ import annotations

import inspect
import re
import time
from typing import TYPE_CHECKING, Any, cast

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from bot.errors import BackendError, BackendUnavailableError
from bot.model import Delivery, Job, JobState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from datetime import datetime

    from yarl import URL

    from bot.ports import Backend, ChatAdapter, JobStore

# Wide enough for a 3-second acknowledgement window and 20-minute jobs alike.
_SHORT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
_LONG = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
# Events normally arrive within a second; a stalled consumer shows up in the top buckets.
_LAG = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_COUNTS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class LabelCap:
    """Keeps a label's values a bounded set: the first `size` distinct values, then "other"."""

    def __init__(self, size: int = 50) -> None:
        self._size = size
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return "none"
        if value in self._seen:
            return value
        if len(self._seen) >= self._size:
            return "other"
        self._seen.add(value)
        return value


class Metrics:
    """Every sdbot metric, in its own registry (so tests and several apps never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.endpoint_label = LabelCap(50)
        self.route_label = LabelCap(100)
        self.jobs_created = Counter(
            "sdbot_jobs_created",
            "Jobs accepted (row committed)",
            ["command", "platform"],
            registry=r,
        )
        self.jobs_finished = Counter(
            "sdbot_jobs_finished",
            "Jobs that reached a terminal state",
            ["command", "state", "endpoint", "platform"],
            registry=r,
        )
        self.jobs_in_flight = Gauge(
            "sdbot_jobs_in_flight", "Jobs being driven by this process", registry=r
        )
        self.leases_held = Gauge(
            "sdbot_job_leases_held", "Job leases this replica holds", registry=r
        )
        self.refusals = Counter(
            "sdbot_refusals", "Requests refused, by reason", ["reason"], registry=r
        )
        self.ack_seconds = Histogram(
            "sdbot_ack_seconds",
            "JobRunner.accept → job committed and acknowledged",
            buckets=_SHORT,
            registry=r,
        )
        self.submit_seconds = Histogram(
            "sdbot_submit_seconds",
            "Job created → accepted by the backend (download, validation, submit)",
            ["command"],
            buckets=_LONG,
            registry=r,
        )
        self.backend_seconds = Histogram(
            "sdbot_backend_seconds",
            "Job accepted by the backend → terminal (queue and run time on the endpoint)",
            ["endpoint", "state"],
            buckets=_LONG,
            registry=r,
        )
        self.post_seconds = Histogram(
            "sdbot_post_seconds",
            "Job seen succeeded → its result posted in chat",
            ["platform"],
            buckets=_LONG,
            registry=r,
        )
        self.backend_calls = Counter(
            "sdbot_backend_calls", "Backend port calls", ["method"], registry=r
        )
        self.backend_errors = Counter(
            "sdbot_backend_errors",
            "Backend port calls that raised",
            ["method", "error"],
            registry=r,
        )
        self.backend_http = Counter(
            "sdbot_backend_http_requests",
            "HTTP requests to the backend's API by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.chat_calls = Counter(
            "sdbot_chat_calls", "ChatAdapter calls by the core", ["platform", "method"], registry=r
        )
        self.chat_errors = Counter(
            "sdbot_chat_errors",
            "ChatAdapter calls that raised",
            ["platform", "method", "error"],
            registry=r,
        )
        self.chat_http = Counter(
            "sdbot_chat_http_requests",
            "HTTP requests to the chat platform's API by route template and status (429s too)",
            ["platform", "method", "route", "status"],
            registry=r,
        )
        self.poll_seconds = Histogram(
            "sdbot_poll_round_seconds",
            "Duration of one batched status call",
            buckets=_SHORT,
            registry=r,
        )
        self.poll_jobs = Histogram(
            "sdbot_poll_round_jobs",
            "Jobs asked about in one status call",
            buckets=_COUNTS,
            registry=r,
        )
        self.event_lag = Histogram(
            "sdbot_event_queue_lag_seconds",
            "Completion event sent (SQS SentTimestamp, or SNS Timestamp) → received by the bot",
            buckets=_LAG,
            registry=r,
        )
        self.store_seconds = Histogram(
            "sdbot_store_call_seconds",
            "Job store call latency",
            ["method"],
            buckets=_SHORT,
            registry=r,
        )
        # When the backend last answered anything (monotonic seconds); None = never.
        self.backend_answered: float | None = None

    def watch_ownership(
        self, held: Callable[[], int], stale_writes: Callable[[], int], parked: Callable[[], int]
    ) -> None:
        """Read this replica's leases and its counts of refused writes and parked jobs (kept by
        `bot.leases.JobOwnership` and the runner) at each scrape."""
        self.leases_held.set_function(held)
        self.registry.register(
            _Counts(
                {
                    "sdbot_stale_writes_refused": (
                        "Writes of this replica refused for an old fence (the job was taken "
                        "over by another replica)",
                        stale_writes,
                    ),
                    "sdbot_jobs_parked": (
                        "Jobs parked as failed after too many takeovers",
                        parked,
                    ),
                }
            )
        )

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    # -- bot.ports.Observer ----------------------------------------------------------------

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def acknowledged(self, seconds: float) -> None:
        self.ack_seconds.observe(seconds)

    # -- the job lifecycle, read off the rows the core writes ------------------------------

    def job_created(self, job: Job) -> None:
        self.jobs_created.labels(job.command, job.caller.platform).inc()

    def job_saved(self, before: Job, job: Job, now: datetime) -> None:
        """`job` replaced `before` in the store: count the transitions between them."""
        if job.started_at is not None and before.started_at is None:
            seconds = (job.started_at - job.created_at).total_seconds()
            self.submit_seconds.labels(job.command).observe(max(0.0, seconds))
        endpoint = self.endpoint_label(job.endpoint)
        if job.state.terminal and not before.state.terminal:
            self.jobs_finished.labels(
                job.command, job.state.value, endpoint, job.caller.platform
            ).inc()
            if job.started_at is not None and job.finished_at is not None:
                seconds = (job.finished_at - job.started_at).total_seconds()
                self.backend_seconds.labels(endpoint, job.state.value).observe(max(0.0, seconds))
        if (
            job.delivery is Delivery.DONE
            and before.delivery is not Delivery.DONE
            and job.state is JobState.SUCCEED
            and job.finished_at is not None
        ):
            seconds = (now - job.finished_at).total_seconds()
            self.post_seconds.labels(job.caller.platform).observe(max(0.0, seconds))


# -- Port wrappers ---------------------------------------------------------------------------


class _Wrapper:
    """Forwards every attribute to `inner`; each coroutine method call is reported to `_after`
    with its duration, its outcome and its arguments (wrapped methods are cached on first use)."""

    def __init__(self, inner: object, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await attr(*args, **kwargs)
            except Exception as exc:
                self._after(name, time.perf_counter() - started, exc, args, None)
                raise
            self._after(name, time.perf_counter() - started, None, args, result)
            return result

        setattr(self, name, call)
        return call

    def _after(
        self, name: str, seconds: float, error: Exception | None, args: Sequence[Any], result: Any
    ) -> None:
        raise NotImplementedError


class _Store(_Wrapper):
    def __init__(self, inner: JobStore, metrics: Metrics, now: Callable[[], datetime]) -> None:
        super().__init__(inner, metrics)
        self._now = now
        # The last row written of every job not yet delivered: enough to see transitions.
        # Bounded by the unfinished jobs: dropped once delivered or cancelled.
        self._live: dict[str, Job] = {}

    def _after(
        self, name: str, seconds: float, error: Exception | None, args: Sequence[Any], result: Any
    ) -> None:
        self._metrics.store_seconds.labels(name).observe(seconds)
        if error is not None:
            return
        if name == "insert":
            job = cast("Job", args[0])
            self._metrics.job_created(job)
            self._live[job.id] = job
        elif name == "save":
            job = cast("Job", args[0])
            before = self._live.get(job.id)
            if before is not None:
                self._metrics.job_saved(before, job, self._now())
            if job.delivery is Delivery.DONE or job.state is JobState.CANCELLED:
                self._live.pop(job.id, None)
            else:
                self._live[job.id] = job
        elif name in ("unfinished", "claim_jobs"):
            self._live.update((job.id, job) for job in cast("Sequence[Job]", result))
        elif name == "claim_job" and result is not None:
            self._live[result.id] = result


class _Backend(_Wrapper):
    def _after(
        self, name: str, seconds: float, error: Exception | None, args: Sequence[Any], result: Any
    ) -> None:
        metrics = self._metrics
        metrics.backend_calls.labels(name).inc()
        if name == "statuses":
            metrics.poll_seconds.observe(seconds)
            metrics.poll_jobs.observe(len(args[0]))
        if error is not None:
            metrics.backend_errors.labels(name, type(error).__name__).inc()
        # An error the backend itself sent (a 4xx with a message) is an answer too.
        if error is None or (
            isinstance(error, BackendError) and not isinstance(error, BackendUnavailableError)
        ):
            metrics.backend_answered = time.monotonic()


class _Chat(_Wrapper):
    def _after(
        self, name: str, seconds: float, error: Exception | None, args: Sequence[Any], result: Any
    ) -> None:
        platform = str(getattr(self._inner, "platform", "unknown"))
        self._metrics.chat_calls.labels(platform, name).inc()
        if error is not None:
            self._metrics.chat_errors.labels(platform, name, type(error).__name__).inc()


def instrument_store(store: JobStore, metrics: Metrics, now: Callable[[], datetime]) -> JobStore:
    return cast("JobStore", _Store(store, metrics, now))


def instrument_backend(backend: Backend, metrics: Metrics) -> Backend:
    return cast("Backend", _Backend(backend, metrics))


def instrument_chat(adapter: ChatAdapter, metrics: Metrics) -> ChatAdapter:
    return cast("ChatAdapter", _Chat(adapter, metrics))


# -- HTTP requests ---------------------------------------------------------------------------

# Path segments kept as they are: lowercase words (`inferences`, `sd-models`; one digit between
# letters for the WebUI's `img2img`, unless the whole segment is hex, as ids are;
# `chat.postMessage` by the dot rule) and API versions; anything else (ids, tokens) is `{id}`.
_WORD = re.compile(
    r"(?=.{1,40}$)[a-z][a-z_-]*(?:(?<=[a-z])[0-9][a-z][a-z_-]*)?"
    r"|v\d{1,2}|[a-z]+\.[A-Za-z.]{1,60}"
)
_HEX = re.compile(r"[0-9a-f]+")


def _kept(part: str) -> bool:
    return _WORD.fullmatch(part) is not None and not (
        any(c.isdigit() for c in part) and _HEX.fullmatch(part)
    )


def route_template(url: URL, base: URL) -> str:
    """The route of `url` under `base` with ids replaced (`/inferences/{id}/start`); requests
    to any other host (presigned S3 URLs, CDNs) are `external`."""
    if url.host != base.host or url.port != base.port:
        return "external"
    prefix = base.path.rstrip("/")
    path = url.path
    if not path.startswith(prefix):
        return "external"
    parts = [p for p in path[len(prefix) :].split("/") if p]
    return "/" + "/".join(p if _kept(p) else "{id}" for p in parts)


def http_trace(
    metrics: Metrics, base: URL, count: Callable[[str, str, str], None]
) -> aiohttp.TraceConfig:
    """A `TraceConfig` calling `count(method, route, status)` once per finished request
    (`status` "error" when no response came)."""
    trace = aiohttp.TraceConfig()

    async def on_end(
        _session: aiohttp.ClientSession, _ctx: object, params: aiohttp.TraceRequestEndParams
    ) -> None:
        route = metrics.route_label(route_template(params.url, base))
        count(params.method, route, str(params.response.status))

    async def on_error(
        _session: aiohttp.ClientSession,
        _ctx: object,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        count(params.method, metrics.route_label(route_template(params.url, base)), "error")

    trace.on_request_end.append(on_end)
    trace.on_request_exception.append(on_error)
    return trace


def backend_trace(metrics: Metrics, base: URL) -> aiohttp.TraceConfig:
    return http_trace(
        metrics,
        base,
        lambda method, route, status: metrics.backend_http.labels(method, route, status).inc(),
    )


def chat_trace(metrics: Metrics, platform: str, base: URL) -> aiohttp.TraceConfig:
    return http_trace(
        metrics,
        base,
        lambda method, route, status: metrics.chat_http.labels(
            platform, method, route, status
        ).inc(),
    )


class _Counts(Collector):
    """Counters a component keeps itself, read when scraped."""

    def __init__(self, counts: dict[str, tuple[str, Callable[[], int]]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, (documentation, read) in self._counts.items():
            yield CounterMetricFamily(name, documentation, value=read())
