"""`sdbot local-backend`: run the ESD-compatible server from flags and an optional TOML file.

`load_settings` turns the command line (and the file `--config` names) into a validated
`ServerConfig` plus where to listen; flags win over the file, the file over the defaults. The file
is either a server file (keys at the top level) or the bot's own `sdbot.toml` with a
`[local_backend]` table. `main` serves until SIGINT or SIGTERM and says on stderr where it listens.
The API key defaults to `ESD_API_KEY`, so the bot and the server agree when run side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.errors import ConfigError
from bot.logs import Redaction, setup_logging
from cloud.esd_server.app import running_server
from cloud.esd_server.config import (
    DEFAULT_ENDPOINTS,
    DEFAULT_USERS,
    EndpointSpec,
    Faults,
    ServerConfig,
    UserSpec,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

DEFAULT_PORT = 8787
_DEFAULT_KEY = ServerConfig().api_key
_FAULT_FLAGS = (
    "latency",
    "error_rate",
    "timeout_rate",
    "hang_seconds",
    "throttle_rate",
    "fail_rate",
    "fail_silent_rate",
    "stuck_rate",
    "seed",
)
_ENDPOINT_KEYS = {spec.name for spec in fields(EndpointSpec)}
_FAULT_KEYS = {spec.name for spec in fields(Faults)}
_SERVER_KEYS = {"host", "port", "log_level"} | {
    spec.name for spec in fields(ServerConfig) if spec.name != "faults"
}


@dataclass(frozen=True)
class CliSettings:
    """What `main` runs: the server's configuration and where it listens."""

    config: ServerConfig
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    log_level: str = "INFO"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdbot local-backend",
        description="Serve the local preview backend as an ESD-compatible REST API "
        "(base URL http://HOST:PORT/prod/), with fault injection for tests and benchmarks.",
    )
    add = parser.add_argument
    add("--config", type=Path, metavar="FILE", help="TOML file (flags win over it)")
    add("--host", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, help=f"port, 0 = any free one (default {DEFAULT_PORT})")
    add("--api-key", help="the x-api-key clients must send (default: $ESD_API_KEY or a fixed key)")
    add(
        "--user",
        action="append",
        dest="users",
        metavar="NAME[=ROLE,…]",
        help="ESD user (repeatable; default: api, an administrator, and lister, which holds "
        "only the list permissions); roles: IT Operator, byoc, lister",
    )
    add(
        "--events-queue-url",
        metavar="URL",
        help="send SageMaker-shaped completion notifications of Async jobs to this SQS queue "
        "(as ESD's SNS topics do with raw delivery; e.g. moto in server mode)",
    )
    add(
        "--rest-interrogate",
        action="store_true",
        default=None,
        help="sdbot-only convenience: accept interrogate_* jobs over REST and advertise them on "
        "/ping (real ESD does neither)",
    )
    add("--job-seconds", metavar="MIN[:MAX]", help="how long each job runs (default 1)")
    add("--cold-start", type=float, metavar="S", help="scale-from-zero wait of Async endpoints")
    add("--url-ttl", type=float, metavar="S", help="presigned URL lifetime (default 3600)")
    add("--models-dir", type=Path, metavar="DIR", help="models folder: DIR/<ESD type>/<file>")
    add("--realtime-timeout", type=float, metavar="S", help="API Gateway timeout (default 29)")
    add("--api-version", metavar="V", help="x-api-version to answer (default 1.7.0)")
    add(
        "--endpoint-status",
        action="append",
        metavar="[NAME=]STATUS",
        help="status of every endpoint, or of one (repeatable), e.g. Creating",
    )
    add("--log-level", help="DEBUG, INFO, WARNING… (default INFO)")
    faults = parser.add_argument_group("faults (shares are between 0 and 1)")
    faults.add_argument("--latency", type=float, metavar="S", help="seconds added to each answer")
    faults.add_argument("--error-rate", type=float, metavar="R", help="share answered 5xx")
    faults.add_argument("--timeout-rate", type=float, metavar="R", help="share that hang first")
    faults.add_argument("--hang-seconds", type=float, metavar="S", help="how long a hang lasts")
    faults.add_argument("--throttle-rate", type=float, metavar="R", help="share answered 429")
    faults.add_argument("--fail-rate", type=float, metavar="R", help="jobs failed with a reason")
    faults.add_argument("--fail-silent-rate", type=float, metavar="R", help="failed, no reason")
    faults.add_argument("--stuck-rate", type=float, metavar="R", help="jobs stuck in created")
    faults.add_argument("--seed", type=int, metavar="N", help="seed of the fault sequences")
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> CliSettings:
    """Parse flags (and `--config`) into settings; `ConfigError` names what is wrong."""
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    file_values = _read_toml(args.config) if args.config is not None else {}
    server = {
        key: value for key, value in file_values.items() if key not in ("faults", "endpoints")
    }
    unknown = set(server) - _SERVER_KEYS - {"cold_start", "endpoint_status"}
    if unknown:
        raise ConfigError(f"{args.config}: unknown setting(s): {', '.join(sorted(unknown))}")
    fault_values = dict(_table(file_values, "faults", args.config))
    unknown = set(fault_values) - _FAULT_KEYS
    if unknown:
        raise ConfigError(
            f"{args.config}: unknown [faults] setting(s): {', '.join(sorted(unknown))}"
        )

    flags: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "api_key": args.api_key,
        "users": tuple(args.users) if args.users else None,
        "job_seconds": args.job_seconds,
        "cold_start_seconds": args.cold_start,
        "url_ttl": args.url_ttl,
        "models_dir": args.models_dir,
        "realtime_gateway_timeout": args.realtime_timeout,
        "version": args.api_version,
        "rest_interrogate": args.rest_interrogate,
        "events_queue_url": args.events_queue_url,
        "log_level": args.log_level,
    }
    if "cold_start" in server:
        server.setdefault("cold_start_seconds", server.pop("cold_start"))
    server.update({key: value for key, value in flags.items() if value is not None})
    fault_values.update(
        {name: getattr(args, name) for name in _FAULT_FLAGS if getattr(args, name) is not None}
    )
    statuses = _endpoint_statuses(args.endpoint_status, server.pop("endpoint_status", None))
    endpoints = _endpoints(file_values, args.config, statuses, server.get("cold_start_seconds"))
    if "api_key" not in server and env.get("ESD_API_KEY"):
        server["api_key"] = env["ESD_API_KEY"]

    try:
        config = ServerConfig(
            api_key=str(server.get("api_key", _DEFAULT_KEY)),
            users=_users(server.get("users")),
            owner_roles=tuple(server.get("owner_roles", ServerConfig().owner_roles)),
            rest_interrogate=_flag(server.get("rest_interrogate", False), "rest_interrogate"),
            version=str(server.get("version", "1.7.0")),
            job_seconds=_job_seconds(server.get("job_seconds", 1.0)),
            cold_start_seconds=_seconds(server.get("cold_start_seconds", 0.0), "cold_start"),
            url_ttl=_seconds(server.get("url_ttl", 3600.0), "url_ttl"),
            endpoints=endpoints,
            models_dir=Path(server["models_dir"]) if server.get("models_dir") else None,
            realtime_gateway_timeout=_seconds(
                server.get("realtime_gateway_timeout", 29.0), "realtime_gateway_timeout"
            ),
            events_queue_url=server.get("events_queue_url") or None,
            events_lag=_seconds(server.get("events_lag", 0.05), "events_lag"),
            invocations_per_instance=server.get("invocations_per_instance"),
            faults=Faults(**fault_values),
        )
    except TypeError as exc:
        raise ConfigError(f"bad setting: {exc}") from None
    port = server.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be 0–65535, got {port!r}")
    return CliSettings(
        config=config,
        host=str(server.get("host", "127.0.0.1")),
        port=port,
        log_level=str(server.get("log_level", "INFO")).upper(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`sdbot local-backend …`: serve until SIGINT / SIGTERM; 2 on a configuration error."""
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        print(f"sdbot local-backend: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, Redaction((settings.config.api_key,)))
    try:
        asyncio.run(_serve(settings))
    except ConfigError as exc:
        print(f"sdbot local-backend: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sdbot local-backend: cannot listen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        return 130
    return 0


async def _serve(settings: CliSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with running_server(settings.config, settings.host, settings.port) as url:
            print(f"ESD-compatible server on {url} ({_describe(settings.config)})", file=sys.stderr)
            await stop.wait()
            print("sdbot local-backend: stopping", file=sys.stderr)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _describe(config: ServerConfig) -> str:
    key = config.api_key
    # The built-in key is public anyway; a chosen one is only hinted at.
    shown = key if key == _DEFAULT_KEY else f"{key[:3]}… (as configured)"
    endpoints = ", ".join(f"{spec.name} {spec.type} {spec.status}" for spec in config.endpoints)
    users = ", ".join(f"{user.name} ({', '.join(user.roles)})" for user in config.users)
    parts = [f"API key {shown}", f"users {users}", f"endpoints {endpoints}"]
    if config.rest_interrogate:
        parts.append("interrogate over REST (sdbot only)")
    active = [
        f"{name}={getattr(config.faults, name)}"
        for name in _FAULT_FLAGS
        if name not in ("seed", "hang_seconds") and getattr(config.faults, name)
    ]
    if active:
        parts.append(f"faults {' '.join(active)} seed={config.faults.seed}")
    return "; ".join(parts)


# -- Values ----------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            values = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    # The bot's own sdbot.toml keeps the server's settings in a table of their own.
    section = values.get("local_backend", values)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [local_backend] must be a table")
    return section


def _table(values: Mapping[str, Any], name: str, path: Path | None) -> Mapping[str, Any]:
    table = values.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return table


def _endpoint_statuses(flags: Sequence[str] | None, from_file: object) -> dict[str | None, str]:
    """`STATUS` (every endpoint, key None) or `NAME=STATUS` entries."""
    entries: list[str] = []
    if isinstance(from_file, str):
        entries.append(from_file)
    elif from_file is not None:
        raise ConfigError(f"endpoint_status must be a string, got {from_file!r}")
    entries.extend(flags or ())
    statuses: dict[str | None, str] = {}
    for entry in entries:
        name, _, status = entry.rpartition("=")
        if not status.strip():
            raise ConfigError(f"endpoint status must not be empty: {entry!r}")
        statuses[name or None] = status.strip()
    return statuses


def _endpoints(
    values: Mapping[str, Any],
    path: Path | None,
    statuses: Mapping[str | None, str],
    cold_start: object,
) -> tuple[EndpointSpec, ...]:
    raw = values.get("endpoints")
    if raw is None:
        specs = list(DEFAULT_ENDPOINTS)
    else:
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise ConfigError(f"{path}: endpoints must be an array of tables ([[endpoints]])")
        specs = []
        for item in raw:
            unknown = set(item) - _ENDPOINT_KEYS
            if unknown:
                raise ConfigError(
                    f"{path}: unknown endpoint setting(s): {', '.join(sorted(unknown))}"
                )
            try:
                specs.append(EndpointSpec(**item))
            except TypeError as exc:
                raise ConfigError(f"{path}: bad endpoint: {exc}") from None
    names = {spec.name for spec in specs}
    for name in statuses:
        if name is not None and name not in names:
            raise ConfigError(f"--endpoint-status names an unknown endpoint: {name}")
    answer = []
    for spec in specs:
        status = statuses.get(spec.name, statuses.get(None, spec.status))
        count = spec.instance_count
        # A cold start only happens from zero instances, so asking for one scales Async to zero.
        if cold_start and spec.type == "Async" and raw is None:
            count = 0
        answer.append(
            EndpointSpec(
                name=spec.name,
                type=spec.type,
                status=status,
                instance_type=spec.instance_type,
                instance_count=count,
                min_instances=spec.min_instances,
                max_instances=spec.max_instances,
            )
        )
    return tuple(answer)


def _job_seconds(value: object) -> tuple[float, float]:
    """`1`, `"1:5"`, `[1, 5]` → (min, max)."""
    if isinstance(value, str):
        low, _, high = value.partition(":")
        try:
            numbers = (float(low), float(high or low))
        except ValueError:
            raise ConfigError(f"job_seconds must be MIN[:MAX] seconds, got {value!r}") from None
        return numbers
    if isinstance(value, list | tuple) and len(value) in (1, 2):
        return _seconds(value[0], "job_seconds"), _seconds(value[-1], "job_seconds")
    number = _seconds(value, "job_seconds")
    return number, number


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    return float(value)


def _users(value: object) -> tuple[UserSpec, ...]:
    """`NAME` (an administrator) or `NAME=ROLE[,ROLE…]` entries; None: the default users."""
    if value is None:
        return DEFAULT_USERS
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(UserSpec.parse(item) for item in value)
    raise ConfigError(f"users must be a list of NAME[=ROLE,…] entries, got {value!r}")


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value
