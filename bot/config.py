"""Configuration: typed settings sections from an optional TOML file plus environment overrides.

Each component declares its own `Section` (a frozen pydantic model) beside its code: the core's
is `Config` below; each backend (`cloud/…`) and each adapter (`adapters/…`) declares one of its
own, and the composition root (`adapters.cli`) lists them. `load_settings` fills every section
from one flat TOML file (`sdbot.toml`, or the file `SDBOT_CONFIG` names) and the environment:
`SDBOT_<NAME>` overrides a setting, `Env("…")` on a field adds other names (`ESD_API_URL`), and
a `Secret("…")` field comes from that environment variable only and never appears in reprs.
A section's credentials are redacted from logs and failures by value, and by shape wherever
they appear (`secret_patterns`): `Settings.redaction()` gathers both from every section.

pydantic does the typing (ints, floats, booleans, paths, comma-separated lists from the
environment); a value it cannot read, a key no section declares and each section's own checks
fail at start-up with a `ConfigError` naming the setting as the operator wrote it.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from bot.errors import ConfigError
from bot.leases import default_replica_id
from bot.logs import Redaction
from bot.model import EndpointType

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping


class Env:
    """Field metadata: environment variables that set the field besides `SDBOT_<NAME>`."""

    def __init__(self, *names: str) -> None:
        self.names = names


class Secret:
    """Field metadata: a credential, read from the environment variable `name` only (never the
    file) and kept out of reprs."""

    def __init__(self, name: str) -> None:
        self.name = name


def listed(raw: object) -> object:
    """A list setting: a TOML array, or comma-separated in the environment (`BeforeValidator`;
    pydantic then converts the items)."""
    if isinstance(raw, str):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if isinstance(raw, list):
        return tuple(raw)
    return raw


Names = Annotated[tuple[str, ...], BeforeValidator(listed)]


class Section(BaseModel):
    """A group of settings one component declares; its checks raise `ConfigError`.

    `removed` maps settings that went to the reason, so a file that still has one is told why.
    `secret_patterns` are the shapes of the component's credentials (and of tokens its platform
    or service hands out), hidden wherever they appear even when not configured: a token pasted
    into a prompt, a library's error message. Only a pattern's `secret` group is hidden when it
    has one (`/webhooks/<id>/(?P<secret>…)` keeps the path readable).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)
    removed: ClassVar[dict[str, str]] = {}
    secret_patterns: ClassVar[tuple[re.Pattern[str], ...]] = ()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        secret = _secret_fields(type(self))
        return ((k, v) for k, v in super().__repr_args__() if k not in secret)

    def secret_values(self) -> tuple[str, ...]:
        """Every credential of this section that is set, for log redaction."""
        values = (getattr(self, name) for name in _secret_fields(type(self)))
        return tuple(v for v in values if v)


def _secret_fields(section: type[Section]) -> dict[str, str]:
    """The section's credential fields, with their environment variable."""
    return {
        name: meta.name
        for name, info in section.model_fields.items()
        for meta in info.metadata
        if isinstance(meta, Secret)
    }


def _env_names(section: type[Section], name: str) -> tuple[str, ...]:
    extra = (
        n
        for meta in section.model_fields[name].metadata
        if isinstance(meta, Env)
        for n in meta.names
    )
    return (f"SDBOT_{name.upper()}", *extra)


class Config(Section):
    """The core's settings, with their defaults."""

    data_dir: Path = Path("sdbot-data")
    # Images (SPEC §3.1, §2.2).
    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_side: int = 1024
    # Defaults below the command, channel and server settings (SPEC §2.2).
    model: str | None = None
    vae: str = "Automatic"
    endpoint: str | None = None
    inference_type: EndpointType = EndpointType.ASYNC  # "Async" | "Real-time"
    # Polling and status (SPEC §3 step 4, §4.1).
    # The core asks often; backends decide how often they really call out (ESD answers from a
    # list scan it reuses for 2 s), so asking costs little and results arrive promptly.
    poll_interval: float = 0.5
    poll_max_interval: float = 1.0
    status_interval: float = 10.0
    job_timeout: float = 1200.0
    created_timeout: float = 300.0
    # Permissions: optional allow-lists (empty = everyone).
    allowed_servers: Names = ()
    allowed_channels: Names = ()
    allowed_roles: Names = ()
    # Limits (channel / server `settings` override the per-user ones).
    user_concurrency: int = 4  # jobs one user may have in flight
    daily_quota: int = 0  # jobs one user may start per UTC day; 0 = no limit
    max_in_flight: int = 200  # jobs in flight across the whole bot
    retention_days: float = 30.0  # stored inputs and results are deleted after this
    # Several replicas on one store (README "Run several replicas"): this process's id among
    # them (default: host name and process id), how long a job's lease lasts without renewal
    # (a stopped replica's jobs are taken over after it), and how many takeovers a job may cost
    # before it is parked as failed.
    replica_id: str | None = None
    lease_seconds: float = 30.0
    max_attempts: int = 3
    log_level: str = "INFO"
    log_format: str = "text"  # "text" | "json" (one JSON object per line)

    @property
    def replica(self) -> str:
        """This replica's id: `replica_id`, else host name and process id."""
        return self.replica_id or default_replica_id()

    @model_validator(mode="after")
    def _check(self) -> Config:
        # Validate now, so a bad value fails at start-up rather than on the first job.
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be `text` or `json`, got {self.log_format!r}")
        for name in ("max_bytes", "max_pixels", "max_side"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_side % 8 or not 64 <= self.max_side <= 4096:
            raise ConfigError("max_side must be a multiple of 8 between 64 and 4096")
        for name in (
            "poll_interval",
            "poll_max_interval",
            "status_interval",
            "job_timeout",
            "created_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        for name in ("user_concurrency", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.daily_quota < 0:
            raise ConfigError("daily_quota must be 0 (no limit) or more")
        if self.retention_days <= 0:
            raise ConfigError("retention_days must be a positive number of days")
        if self.lease_seconds < 1:
            raise ConfigError("lease_seconds must be at least 1 second")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.replica_id is not None and not self.replica_id.strip():
            raise ConfigError("replica_id must not be blank")
        if self.poll_max_interval < self.poll_interval:
            raise ConfigError("poll_max_interval must not be below poll_interval")
        return self


S = TypeVar("S", bound=Section)


class Settings:
    """Every section the composition root asked for, filled in; `settings[DiscordSettings]`."""

    def __init__(self, sections: Iterable[Section]) -> None:
        self._sections = {type(s): s for s in sections}

    def __getitem__(self, kind: type[S]) -> S:
        section = self._sections[kind]
        assert isinstance(section, kind)
        return section

    @property
    def core(self) -> Config:
        return self[Config]

    def replace(self, *sections: Section) -> Settings:
        """These settings with `sections` in place of their kinds' (tests, derived choices)."""
        return Settings([*self._sections.values(), *sections])

    def redaction(self) -> Redaction:
        """What every section declares secret: the credentials that are set and the
        credential shapes, for the logs and the failures users are shown."""
        sections = self._sections.values()
        return Redaction(
            tuple(v for s in sections for v in s.secret_values()),
            tuple(dict.fromkeys(p for s in sections for p in s.secret_patterns)),
        )


def read_file(environ: Mapping[str, str], path: Path | str | None) -> dict[str, object]:
    """The TOML file's table: `path`, else `SDBOT_CONFIG`, else ./sdbot.toml if present."""
    file = path or environ.get("SDBOT_CONFIG")
    if file is None and Path("sdbot.toml").exists():
        file = "sdbot.toml"
    if file is None:
        return {}
    try:
        with open(file, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {file} is not valid TOML: {exc}") from None


def load_settings(
    sections: Iterable[type[Section]],
    environ: Mapping[str, str] | None = None,
    path: Path | str | None = None,
) -> Settings:
    """Fill `sections` from the TOML file (if any) and the environment, and validate them."""
    env = os.environ if environ is None else environ
    kinds = list(sections)
    table = read_file(env, path)
    file = path or env.get("SDBOT_CONFIG") or "sdbot.toml"
    owner = {
        name: kind
        for kind in kinds
        for name in kind.model_fields
        if name not in _secret_fields(kind)
    }
    removed = {k: v for kind in kinds for k, v in kind.removed.items()}
    given: dict[type[Section], dict[str, tuple[str, object]]] = {kind: {} for kind in kinds}
    for key, raw in table.items():
        if key in removed:
            raise ConfigError(f"`{key}` in {file} is no longer a setting: {removed[key]}")
        if key not in owner:
            raise ConfigError(f"unknown setting `{key}` in {file}")
        kind = owner[key]
        info = kind.model_fields[key]
        if raw == "" and info.default is None:
            raw = None  # `esd_bucket = ""`: not set
        given[kind][key] = (key, raw)
    for name, kind in owner.items():
        for env_name in _env_names(kind, name):
            if env.get(env_name) not in (None, ""):
                given[kind][name] = (env_name, env[env_name])
    for kind in kinds:
        for name, env_name in _secret_fields(kind).items():
            given[kind][name] = (env_name, env.get(env_name) or None)
    return Settings(_build(kind, given[kind]) for kind in kinds)


def environment_names(sections: Iterable[type[Section]]) -> frozenset[str]:
    """Every environment variable `load_settings` reads for `sections`, `SDBOT_CONFIG` too:
    what to clear for a run that is to see only the settings it is given."""
    names = {"SDBOT_CONFIG"}
    for kind in sections:
        secret = _secret_fields(kind)
        names.update(secret.values())
        names.update(
            n for name in kind.model_fields if name not in secret for n in _env_names(kind, name)
        )
    return frozenset(names)


def _build(kind: type[S], given: Mapping[str, tuple[str, object]]) -> S:
    """The section from `given` (field → where it came from, value), naming a bad value."""
    try:
        return kind.model_validate({name: raw for name, (_, raw) in given.items()})
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        where, raw = given.get(name, (name, error.get("input")))
        raise ConfigError(
            f"setting `{where}` has an invalid value: {raw!r} ({error['msg']})"
        ) from None


__all__ = [
    "Config",
    "Env",
    "Names",
    "Secret",
    "Section",
    "Settings",
    "environment_names",
    "listed",
    "load_settings",
    "read_file",
]
