"""Settings of the ESD-compatible local server: its endpoints, its faults and the server itself.

Three frozen dataclasses, validated when they are built so that a bad flag or TOML value fails at
start-up with a `ConfigError` naming the setting: `EndpointSpec` (one SageMaker endpoint row as
ESD's `GET /endpoints` lists it), `Faults` (what share of API calls and jobs go wrong, and how;
seeded so every fault sequence can be replayed) and `ServerConfig` (key, users, timings, models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

ENDPOINT_TYPES: tuple[str, ...] = ("Async", "Real-time")
# ESD's `EndpointStatus` enum (middleware_api/libs/enums.py); other values pass through as ESD does.
ENDPOINT_STATUSES: tuple[str, ...] = (
    "Creating",
    "InService",
    "Updating",
    "Deleting",
    "Deleted",
    "Failed",
    "RollingBack",
)


def _check_seconds(name: str, value: float, *, positive: bool = False) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        sign = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name} must be seconds {sign}, got {value!r}")


def _check_share(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must be a share between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class EndpointSpec:
    """One SageMaker endpoint as the server lists it (`service_type` sd)."""

    name: str
    type: str  # "Async" | "Real-time"
    status: str = "InService"
    instance_type: str = "ml.g5.xlarge"
    instance_count: int = 1  # current instances; 0 = an Async endpoint scaled to zero
    min_instances: int = 0
    max_instances: int = 1

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("endpoint name must not be empty")
        if self.type not in ENDPOINT_TYPES:
            raise ConfigError(
                f"endpoint {self.name}: type must be Async or Real-time, got {self.type!r}"
            )
        if not self.status.strip():
            raise ConfigError(f"endpoint {self.name}: status must not be empty")
        if min(self.instance_count, self.min_instances, self.max_instances) < 0:
            raise ConfigError(f"endpoint {self.name}: instance counts must be >= 0")
        if self.min_instances > self.max_instances:
            raise ConfigError(
                f"endpoint {self.name}: min_instances {self.min_instances} is above "
                f"max_instances {self.max_instances}"
            )


# ESD's permission strings (middleware_api/common/const.py) and the roles the server knows. ESD
# seeds `IT Operator` (and `byoc`) with every `:all` permission for its built-in user `api`
# (infrastructure/src/shared/resource-provider-on-event.ts); `lister` holds only the two list
# permissions, so a client that forgets ESD's `username` query parameter sees nothing with it.
ALL_PERMISSIONS: tuple[str, ...] = (
    "train:all",
    "checkpoint:all",
    "inference:all",
    "sagemaker_endpoint:all",
    "user:all",
    "role:all",
)
ROLES: dict[str, tuple[str, ...]] = {
    "IT Operator": ALL_PERMISSIONS,
    "byoc": ALL_PERMISSIONS,
    "lister": ("sagemaker_endpoint:list", "checkpoint:list"),
}
ADMIN_ROLE = "IT Operator"


@dataclass(frozen=True)
class UserSpec:
    """One row of ESD's user table: a name and its roles (names from `ROLES`)."""

    name: str
    roles: tuple[str, ...] = (ADMIN_ROLE,)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("user names must not be empty")
        if not self.roles:
            raise ConfigError(f"user {self.name}: give at least one role")
        unknown = [role for role in self.roles if role not in ROLES]
        if unknown:
            raise ConfigError(
                f"user {self.name}: unknown role(s) {', '.join(unknown)} "
                f"(known: {', '.join(ROLES)})"
            )

    @classmethod
    def parse(cls, text: str) -> UserSpec:
        """`NAME` (an administrator) or `NAME=ROLE[,ROLE…]`."""
        name, _, roles = text.partition("=")
        if not roles:
            return cls(name.strip())
        return cls(name.strip(), tuple(role.strip() for role in roles.split(",")))

    def permissions(self) -> set[str]:
        return {permission for role in self.roles for permission in ROLES[role]}


DEFAULT_USERS: tuple[UserSpec, ...] = (UserSpec("api"), UserSpec("lister", ("lister",)))


@dataclass(frozen=True)
class Faults:
    """What goes wrong, and how often. Shares are probabilities drawn from a seeded generator.

    The API-call shares (`throttle_rate`, `error_rate`, `timeout_rate`) are one draw per call and
    so must add up to at most 1; likewise the job shares (`stuck_rate`, `fail_rate`,
    `fail_silent_rate`), one draw per started job.
    """

    latency: float = 0.0  # seconds added before every API answer
    error_rate: float = 0.0  # share of API calls answered 500/502/503 (API Gateway-style body)
    timeout_rate: float = 0.0  # share of API calls that hang (sleep `hang_seconds`) first
    hang_seconds: float = 60.0
    throttle_rate: float = 0.0  # share answered 429 {"message":"Too Many Requests"}
    fail_rate: float = 0.0  # share of jobs ending `failed` with a sagemakerRaw reason
    fail_silent_rate: float = 0.0  # share of jobs ending `failed` with no sagemakerRaw
    stuck_rate: float = 0.0  # share of jobs that never leave `created` after start
    seed: int = 0  # RNG seed: fault sequences are reproducible

    def __post_init__(self) -> None:
        _check_seconds("latency", self.latency)
        _check_seconds("hang_seconds", self.hang_seconds)
        for name in (
            "error_rate",
            "timeout_rate",
            "throttle_rate",
            "fail_rate",
            "fail_silent_rate",
            "stuck_rate",
        ):
            _check_share(name, getattr(self, name))
        if self.throttle_rate + self.error_rate + self.timeout_rate > 1.0 + 1e-9:
            raise ConfigError("throttle_rate + error_rate + timeout_rate must be at most 1")
        if self.stuck_rate + self.fail_rate + self.fail_silent_rate > 1.0 + 1e-9:
            raise ConfigError("stuck_rate + fail_rate + fail_silent_rate must be at most 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    @property
    def any_api_fault(self) -> bool:
        return bool(self.throttle_rate or self.error_rate or self.timeout_rate)


DEFAULT_ENDPOINTS: tuple[EndpointSpec, ...] = (
    EndpointSpec("sd-async-local", "Async"),
    EndpointSpec("sd-real-time-local", "Real-time"),
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything `make_app` needs. The API key is a secret and stays out of the repr."""

    api_key: str = field(default="local-backend-key", repr=False)  # x-api-key must equal this
    users: tuple[UserSpec, ...] = DEFAULT_USERS  # ESD's user table: `username` values (else 401)
    # Roles that own every endpoint and checkpoint (`owner_group_or_role`,
    # `allowed_roles_or_users`); listings filtered by `username` show them to these roles only.
    owner_roles: tuple[str, ...] = (ADMIN_ROLE,)
    # The sdbot-only convenience: accept `interrogate_*` task types over REST and advertise them
    # on `/ping`. Real ESD does neither (esd-api.md §7.3), so it is off by default.
    rest_interrogate: bool = False
    version: str = "1.7.0"  # x-api-version on every Lambda answer
    job_seconds: tuple[float, float] = (1.0, 1.0)  # each job takes uniform(min, max) seconds
    cold_start_seconds: float = 0.0  # extra wait when an Async endpoint has instance_count 0
    url_ttl: float = 3600.0  # presigned URL lifetime (seconds)
    endpoints: tuple[EndpointSpec, ...] = DEFAULT_ENDPOINTS
    models_dir: Path | None = None  # <dir>/<ESD type>/<file>, like LocalBackendConfig.models_dir
    realtime_gateway_timeout: float = 29.0  # Real-time start answers 504 after this
    # SageMaker notifications of Async jobs sent to this SQS queue (cloud/esd_server/events.py),
    # `events_lag` seconds before the job's row says it ended, as on a real stack.
    events_queue_url: str | None = None
    events_lag: float = 0.05
    # How many jobs one instance of an Async endpoint runs at once; the others wait in the order
    # they were started. ESD sets SageMaker's `MaxConcurrentInvocationsPerInstance` to 1 for SD
    # (esd-api.md §8.1, §10.2). None: every started job runs at once (the default here).
    invocations_per_instance: int | None = None
    faults: Faults = Faults()

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ConfigError("api_key must not be empty")
        if not self.users:
            raise ConfigError("users must name at least one user")
        user_names = [user.name for user in self.users]
        if len(set(user_names)) != len(user_names):
            raise ConfigError("user names must be unique")
        if not self.owner_roles or any(role not in ROLES for role in self.owner_roles):
            raise ConfigError(f"owner_roles must name known roles ({', '.join(ROLES)})")
        if not self.version.strip():
            raise ConfigError("version must not be empty")
        low, high = self.job_seconds
        _check_seconds("job_seconds", low)
        _check_seconds("job_seconds", high)
        if low > high:
            raise ConfigError(f"job_seconds: minimum {low} is above maximum {high}")
        _check_seconds("cold_start_seconds", self.cold_start_seconds)
        _check_seconds("url_ttl", self.url_ttl, positive=True)
        _check_seconds("realtime_gateway_timeout", self.realtime_gateway_timeout, positive=True)
        per_instance = self.invocations_per_instance
        if per_instance is not None and (
            isinstance(per_instance, bool) or not isinstance(per_instance, int) or per_instance < 1
        ):
            raise ConfigError(
                f"invocations_per_instance must be an integer >= 1, got {per_instance!r}"
            )
        names = [endpoint.name for endpoint in self.endpoints]
        if len(set(names)) != len(names):
            raise ConfigError("endpoint names must be unique")
