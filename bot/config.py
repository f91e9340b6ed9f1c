"""Configuration: frozen dataclasses from an optional TOML file plus environment overrides.

Secrets come only from the environment (`DISCORD_TOKEN`, `SLACK_BOT_TOKEN`, `SLACK_APP_TOKEN`,
`SLACK_SIGNING_SECRET`, `ESD_API_KEY`, `A1111_API_AUTH`, `SDBOT_ADMIN_TOKEN`) and never appear in
reprs. Every other setting may be set in `sdbot.toml` (or the file `SDBOT_CONFIG` names) and
overridden by `SDBOT_<NAME>` in the environment. Bad values fail at start-up with a `ConfigError`
naming the setting.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.errors import ConfigError
from bot.leases import default_replica_id

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass(frozen=True)
class Secrets:
    """Credentials, from the environment only."""

    discord_token: str | None = field(default=None, repr=False)
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    esd_api_key: str | None = field(default=None, repr=False)
    a1111_api_auth: str | None = field(default=None, repr=False)  # `user:password`
    admin_token: str | None = field(default=None, repr=False)  # turns the /admin page on

    def values(self) -> tuple[str, ...]:
        """Every secret that is set, for log redaction."""
        return tuple(v for v in dataclasses.astuple(self) if v)


@dataclass(frozen=True)
class Config:
    """Every non-secret setting, with its default."""

    backend: str = "local"  # "local" | "esd" | "a1111"
    data_dir: Path = Path("sdbot-data")
    output_dir: Path = Path("sdbot-output")  # console: result images go to <output_dir>/<job-id>/
    # Images (SPEC §3.1, §2.2).
    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_side: int = 1024
    # Defaults below the command, channel and server settings (SPEC §2.2).
    model: str | None = None
    vae: str = "Automatic"
    endpoint: str | None = None
    inference_type: str = "Async"  # "Async" | "Real-time"
    # Polling and status (SPEC §3 step 4, §4.1).
    # The core asks often; backends decide how often they really call out (ESD answers from a
    # list scan it reuses for 2 s), so asking costs little and results arrive promptly.
    poll_interval: float = 0.5
    poll_max_interval: float = 1.0
    status_interval: float = 10.0
    job_timeout: float = 1200.0
    created_timeout: float = 300.0
    # Local backend.
    local_delay: float = 1.0
    local_models_dir: Path | None = None
    # ESD (reference/esd-api.md): the REST API, and S3 + DynamoDB for interrogate.
    esd_api_url: str | None = None
    esd_username: str = "api"
    esd_timeout: float = 30.0  # per request; API Gateway itself gives up at 29 s
    realtime_max_in_flight: int = 5  # per Real-time endpoint (the container queues ~10)
    esd_bucket: str | None = None
    # Completion events (docs/esd.md "Completion events"): an SQS queue subscribed to ESD's
    # SageMaker success / error topics; polling then scans only every `esd_events_backstop` s.
    esd_events_queue_url: str | None = None
    esd_events_backstop: float = 45.0
    # AUTOMATIC1111 / Forge WebUI started with `--api` (README "Run on your own GPU").
    a1111_api_url: str | None = None
    a1111_concurrency: int = 1  # jobs sent to the WebUI at once; it runs one at a time
    a1111_reconnect: float = 120.0  # seconds a job waits for a WebUI that is restarting
    # Chat platforms.
    discord_guilds: tuple[str, ...] = ()  # sync commands to these guilds (fast); else globally
    # With the privileged message-content intent, any reply in a job thread re-generates;
    # without it, replies must mention the bot (docs/discord.md).
    discord_message_content: bool = False
    # Gateway shards (docs/discord.md "Several replicas and shards"): 0 = one session that
    # Discord sends every event to. With a count, this process runs `discord_shard_ids` of
    # them (all of them when empty); processes may run the same shards (each event is acted on
    # once) or split them.
    discord_shard_count: int = 0
    discord_shard_ids: tuple[int, ...] = ()
    slack_api_url: str | None = None  # Web API base URL override (GovSlack, proxies, tests)
    http_port: int = 3000  # Slack HTTP mode listens here at /slack/events
    # /metrics, /healthz, /readyz (and /admin) are served on http_port while chat adapters
    # run (on Slack's HTTP-mode server when it runs); on this port instead, in every mode
    # (the console too), when it is set.
    metrics_port: int | None = None
    # Permissions: Slack admin user ids (Discord admins are members with Manage Server) and
    # optional allow-lists (empty = everyone).
    admins: tuple[str, ...] = ()
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
    allowed_servers: tuple[str, ...] = ()
    allowed_channels: tuple[str, ...] = ()
    allowed_roles: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_format: str = "text"  # "text" | "json" (one JSON object per line)
    secrets: Secrets = field(default_factory=Secrets, repr=False)

    @property
    def replica(self) -> str:
        """This replica's id: `replica_id`, else host name and process id."""
        return self.replica_id or default_replica_id()

    def __post_init__(self) -> None:
        # Validate now, so a bad value fails at start-up rather than on the first job.
        if self.backend not in ("local", "esd", "a1111"):
            raise ConfigError(
                f"SDBOT_BACKEND must be `local`, `esd` or `a1111`, got {self.backend!r}"
            )
        if self.backend == "esd" and not self.esd_api_url:
            raise ConfigError("SDBOT_BACKEND is `esd` but ESD_API_URL is not set")
        if self.backend == "a1111" and not self.a1111_api_url:
            raise ConfigError("SDBOT_BACKEND is `a1111` but A1111_API_URL is not set")
        if self.secrets.a1111_api_auth is not None and ":" not in self.secrets.a1111_api_auth:
            raise ConfigError("A1111_API_AUTH must be `user:password` (the WebUI's --api-auth)")
        if self.a1111_concurrency < 1:
            raise ConfigError("a1111_concurrency must be at least 1")
        if self.a1111_reconnect < 0:
            raise ConfigError("a1111_reconnect must be zero or more seconds")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be `text` or `json`, got {self.log_format!r}")
        if self.inference_type not in ("Async", "Real-time"):
            raise ConfigError(
                f"inference_type must be `Async` or `Real-time`, got {self.inference_type!r}"
            )
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
            "esd_timeout",
            "esd_events_backstop",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.local_delay < 0:
            raise ConfigError("SDBOT_LOCAL_DELAY must be zero or more seconds")
        if not 0 < self.http_port < 65536:
            raise ConfigError("SDBOT_HTTP_PORT must be a port number (1-65535)")
        if self.metrics_port is not None and not 0 < self.metrics_port < 65536:
            raise ConfigError("SDBOT_METRICS_PORT must be a port number (1-65535)")
        for name in ("user_concurrency", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.daily_quota < 0:
            raise ConfigError("daily_quota must be 0 (no limit) or more")
        if self.retention_days <= 0:
            raise ConfigError("retention_days must be a positive number of days")
        if self.realtime_max_in_flight < 1:
            raise ConfigError("realtime_max_in_flight must be at least 1")
        if self.discord_shard_count < 0:
            raise ConfigError("discord_shard_count must be 0 (no sharding) or more")
        if self.discord_shard_ids and not self.discord_shard_count:
            raise ConfigError("discord_shard_ids needs discord_shard_count")
        for shard in self.discord_shard_ids:
            if not 0 <= shard < self.discord_shard_count:
                raise ConfigError(
                    f"discord_shard_ids: shard {shard} is not between 0 and "
                    f"discord_shard_count - 1 ({self.discord_shard_count - 1})"
                )
        if self.lease_seconds < 1:
            raise ConfigError("lease_seconds must be at least 1 second")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.replica_id is not None and not self.replica_id.strip():
            raise ConfigError("replica_id must not be blank")
        if self.poll_max_interval < self.poll_interval:
            raise ConfigError("poll_max_interval must not be below poll_interval")


# Environment names that differ from SDBOT_<FIELD>.
_ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "esd_api_url": ("ESD_API_URL",),
    "esd_username": ("ESD_USERNAME",),
    "esd_bucket": ("ESD_BUCKET",),
    "esd_events_queue_url": ("ESD_EVENTS_QUEUE_URL",),
    "slack_api_url": ("SLACK_API_URL",),
    "a1111_api_url": ("A1111_API_URL",),
}
_SECRET_ENV: dict[str, str] = {
    "discord_token": "DISCORD_TOKEN",
    "slack_bot_token": "SLACK_BOT_TOKEN",
    "slack_app_token": "SLACK_APP_TOKEN",
    "slack_signing_secret": "SLACK_SIGNING_SECRET",
    "esd_api_key": "ESD_API_KEY",
    "a1111_api_auth": "A1111_API_AUTH",
    "admin_token": "SDBOT_ADMIN_TOKEN",
}


def _convert(name: str, kind: Any, raw: object) -> object:
    """Turn a TOML or environment value into the field's type, naming the setting on failure."""
    text = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if "tuple" in text:
            if isinstance(raw, str):
                items: tuple[object, ...] = tuple(p.strip() for p in raw.split(",") if p.strip())
            elif isinstance(raw, list):
                items = tuple(raw)
            else:
                raise TypeError
            if "tuple[int" in text:
                return tuple(int(str(p)) for p in items if not isinstance(p, bool))
            return tuple(str(p) for p in items)
        if "Path" in text:
            return None if raw in ("", None) else Path(str(raw))
        if text.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if text.startswith("int"):
            if isinstance(raw, bool):
                raise TypeError
            return int(str(raw))
        if text.startswith("float"):
            if isinstance(raw, bool):
                raise TypeError
            return float(str(raw))
        if text.startswith("str"):
            return None if raw == "" and "None" in text else str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"setting `{name}` has an invalid value: {raw!r}") from None
    return raw


# Settings that went, and why; a file that still has one is told so.
_REMOVED = {
    "esd_job_table": "ESD hard-codes its job table SDInferenceJobTable in its container and "
    "Lambdas, so any other name could only break interrogate; remove the line",
}


def load_config(environ: Mapping[str, str] | None = None, path: Path | str | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides and validate."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    file = path or env.get("SDBOT_CONFIG")
    if file is None and Path("sdbot.toml").exists():
        file = "sdbot.toml"
    fields = {f.name: f for f in dataclasses.fields(Config) if f.name != "secrets"}
    if file is not None:
        try:
            with open(file, "rb") as fh:
                table = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read the config file {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"the config file {file} is not valid TOML: {exc}") from None
        for key, raw in table.items():
            if key in _REMOVED:
                raise ConfigError(f"`{key}` in {file} is no longer a setting: {_REMOVED[key]}")
            if key not in fields:
                raise ConfigError(f"unknown setting `{key}` in {file}")
            values[key] = _convert(key, fields[key].type, raw)
    for name, f in fields.items():
        for env_name in (f"SDBOT_{name.upper()}", *_ENV_ALIASES.get(name, ())):
            if env.get(env_name) not in (None, ""):
                values[name] = _convert(env_name, f.type, env[env_name])
    secrets = Secrets(**{k: env.get(v) or None for k, v in _SECRET_ENV.items()})
    if "backend" not in values:
        if values.get("esd_api_url"):
            values["backend"] = "esd"
        elif secrets.discord_token or secrets.slack_bot_token:
            # The preview engine posts pictures that are not Stable Diffusion: it never reaches
            # real people unless someone chose it.
            raise ConfigError(
                "chat credentials are set (DISCORD_TOKEN / SLACK_BOT_TOKEN) but no backend is "
                'chosen: set ESD_API_URL (and ESD_API_KEY) to run on ESD, `backend = "a1111"` '
                'with A1111_API_URL for your own WebUI, or `backend = "local"` '
                "(SDBOT_BACKEND=local) to post the preview engine's pictures, which are not "
                "Stable Diffusion, on purpose"
            )
        else:
            values["backend"] = "local"
    try:
        return Config(**values, secrets=secrets)  # type: ignore[arg-type]
    except TypeError as exc:  # pragma: no cover - _convert guarantees the types
        raise ConfigError(str(exc)) from None
