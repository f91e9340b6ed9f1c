"""`EsdSettings`: the ESD backend's settings section; `EsdConfig`: every setting of the ESD
REST backend, validated once.

Built from the settings (`EsdConfig.from_config`) or directly by tests and benchmarks that
want tiny retry delays. The API key is the only secret and is kept out of the repr; the base URL
is normalised to end in `/` because ESD routes are joined to it without a leading slash
(`reference/esd-api.md` §1.2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, ClassVar
from urllib.parse import urlsplit

from pydantic import model_validator

from bot.config import Env, Secret, Section
from bot.errors import ConfigError
from bot.model import EndpointType
from bot.retry import RetryPolicy

if TYPE_CHECKING:
    from bot.config import Config


class EsdSettings(Section):
    """The ESD backend's settings (reference/esd-api.md): the REST API, S3 + DynamoDB for
    interrogate, and completion events (docs/esd.md)."""

    esd_api_url: Annotated[str | None, Env("ESD_API_URL")] = None
    esd_api_key: Annotated[str | None, Secret("ESD_API_KEY")] = None
    esd_username: Annotated[str, Env("ESD_USERNAME")] = "api"
    esd_timeout: float = 30.0  # per request; API Gateway itself gives up at 29 s
    realtime_max_in_flight: int = 5  # per Real-time endpoint (the container queues ~10)
    esd_bucket: Annotated[str | None, Env("ESD_BUCKET")] = None
    # Completion events: an SQS queue subscribed to ESD's SageMaker success / error topics;
    # polling then scans only every `esd_events_backstop` s.
    esd_events_queue_url: Annotated[str | None, Env("ESD_EVENTS_QUEUE_URL")] = None
    esd_events_backstop: float = 45.0

    # AWS access key ids (interrogate and completion events use boto3's credentials).
    secret_patterns: ClassVar[tuple[re.Pattern[str], ...]] = (
        re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    )

    removed: ClassVar[dict[str, str]] = {
        "esd_job_table": "ESD hard-codes its job table SDInferenceJobTable in its container and "
        "Lambdas, so any other name could only break interrogate; remove the line",
    }

    @model_validator(mode="after")
    def _check(self) -> EsdSettings:
        for name in ("esd_timeout", "esd_events_backstop"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.realtime_max_in_flight < 1:
            raise ConfigError("realtime_max_in_flight must be at least 1")
        return self


DEFAULT_RETRY = RetryPolicy(attempts=4, backoff=0.5, max_backoff=8.0, max_retry_after=30.0)


def check_api_url(url: str | None) -> str:
    """The ESD base URL with a trailing `/`, or a `ConfigError` naming `ESD_API_URL`."""
    if not url or not url.strip():
        raise ConfigError("ESD_API_URL is not set (the ApiGatewayUrl output of the ESD stack)")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "ESD_API_URL must be an http(s) URL such as "
            "https://<api id>.execute-api.<region>.amazonaws.com/prod/"
        )
    if parts.query or parts.fragment:
        raise ConfigError("ESD_API_URL must not carry a query string or fragment")
    return url if url.endswith("/") else url + "/"


@dataclass(frozen=True)
class EsdConfig:
    """Settings of `EsdBackend`; `from_config` fills them from `EsdSettings` and the core's."""

    api_url: str
    api_key: str = field(repr=False)
    username: str = "api"
    inference_type: EndpointType = EndpointType.ASYNC  # when the endpoint's own is unknown
    timeout: float = 30.0  # per request, total; API Gateway itself gives up at 29 s
    connect_timeout: float = 10.0
    realtime_max_in_flight: int = 5  # per Real-time endpoint (the container queues ~10)
    # Retries of transient failures inside the client (5xx, timeouts, 429, network): a
    # Retry-After over 30 s is left to the poller's own, slower back-off.
    retry: RetryPolicy = DEFAULT_RETRY
    # Batched polling (SPEC §4.1, cloud/esd/polling.py, cloud/esd/pages.py): list pages of
    # `page_size`, each read from a `last_evaluated_key` seen before; the first round walks down
    # until it has seen every job in flight of its task type (at most `status_pages` pages
    # deep), later ones read the page expected to show the most ended jobs, each page at most
    # every `list_interval` seconds and `list_pages_per_second` pages on average however many
    # jobs are in flight. Task types with `direct_threshold` jobs in flight or fewer, and jobs
    # beyond the pages, are read one by one, at most `direct_per_second` on average. The bot's
    # rows are ~2.5 KB as ESD stores them (the upload URL with its session token), so DynamoDB's
    # 1 MB cut ends a page of 500 at ~420 rows and its `last_evaluated_key` leads on (docs/esd.md,
    # docs/benchmarks.md): one request covers ~420 jobs in flight.
    page_size: int = 500
    status_pages: int = 20
    list_interval: float = 1.5
    list_pages_per_second: float = 1.0
    direct_threshold: int = 2
    direct_per_second: float = 5.0
    # While a job waits for a scaled-to-zero endpoint, its instance count is re-read this often.
    cold_check_interval: float = 5.0
    # Downloads from presigned URLs.
    max_result_bytes: int = 50_000_000
    # How long the backend's own endpoint / network-model lookups are reused during submits.
    catalog_ttl: float = 30.0
    # Completion events (cloud/esd/events.py): the SQS queue, and the backstop scan's pace
    # while it answers (at most one scan per `events_backstop` seconds and
    # `events_pages_per_second` pages per second on average).
    events_queue_url: str | None = None
    events_backstop: float = 45.0
    events_pages_per_second: float = 0.02
    events_wait: int = 20  # seconds a receive waits for a message (SQS allows 0-20)

    def __post_init__(self) -> None:
        object.__setattr__(self, "api_url", check_api_url(self.api_url))
        if not self.api_key:
            raise ConfigError("ESD_API_KEY is not set (the ApiGatewayUrlToken output of ESD)")
        if not self.username.strip():
            raise ConfigError("ESD_USERNAME must not be empty (ESD's built-in user is `api`)")
        for name in ("timeout", "connect_timeout", "catalog_ttl", "events_backstop"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"ESD setting {name} must be a positive number of seconds")
        for name in ("list_interval", "cold_check_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"ESD setting {name} must be zero or more seconds")
        for name in ("list_pages_per_second", "direct_per_second", "events_pages_per_second"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"ESD setting {name} must be a positive rate per second")
        for name in ("realtime_max_in_flight", "page_size", "status_pages", "max_result_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ESD setting {name} must be at least 1")
        if self.direct_threshold < 0:
            raise ConfigError("ESD setting direct_threshold must not be negative")

    @property
    def host(self) -> str:
        """The API host (and port), for messages: never the path, never a secret."""
        return urlsplit(self.api_url).netloc

    @classmethod
    def from_config(cls, esd: EsdSettings, config: Config) -> EsdConfig:
        """The backend's configuration from its settings section and the core's (image size
        cap, default endpoint type); `ConfigError` names what is missing."""
        url = check_api_url(esd.esd_api_url)
        key = esd.esd_api_key
        if not key:
            raise ConfigError("ESD_API_KEY is not set (the ApiGatewayUrlToken output of ESD)")
        return cls(
            api_url=url,
            api_key=key,
            username=esd.esd_username,
            inference_type=config.inference_type,
            timeout=esd.esd_timeout,
            realtime_max_in_flight=esd.realtime_max_in_flight,
            max_result_bytes=max(config.max_bytes, 50_000_000),
            events_queue_url=esd.esd_events_queue_url or None,
            events_backstop=esd.esd_events_backstop,
        )
