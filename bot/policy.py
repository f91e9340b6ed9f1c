"""Who may use the bot, how much, and with which defaults (SPEC §2.1 `settings`, §7).

`Policy` answers three questions for a caller: may they use the bot here (allow-lists of
servers, channels and roles from the configuration), may they start another job now (per-user
concurrency, per-user daily quota, the global cap on jobs in flight), and what are the defaults
in their channel (the channel's settings over the server's over the configuration). Settings are
stored durably and changed by admins with the `settings` command.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING

from bot.catalog import vae_keyword
from bot.errors import ParseError, RefusedError
from bot.ports import Admission, AdmissionRefused, traits_of
from bot.recent import Recent
from bot.render import duration

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bot.catalog import Catalog
    from bot.config import Config
    from bot.model import Caller, Platform
    from bot.ports import ChatAdapter, Clock, SettingsStore

SETTING_KEYS: tuple[str, ...] = (
    "endpoint",
    "model",
    "vae",
    "max_size",
    "concurrency",
    "daily_quota",
)
SERVER_SCOPE = ""
# Settings of this many (server or channel) scopes are kept, the least recently used dropped.
_MAX_CACHED_SCOPES = 10_000


@dataclass(frozen=True)
class Defaults:
    """The settings in force for one channel, and where each came from."""

    endpoint: str | None
    model: str | None
    vae: str
    max_size: int
    concurrency: int
    daily_quota: int
    sources: Mapping[str, str]  # key → "channel" | "server" | "config"


@dataclass(frozen=True, slots=True)
class _Merged:
    """A channel's `Defaults` and the reads of its server's and its own settings they merge."""

    server: asyncio.Future[dict[str, str]]
    channel: asyncio.Future[dict[str, str]]
    defaults: Defaults


class Policy:
    """Access, limits and channel / server defaults."""

    def __init__(
        self,
        config: Config,
        store: SettingsStore,
        clock: Clock,
        catalog: Catalog,
        adapters: Mapping[Platform, ChatAdapter],
    ) -> None:
        """`adapters`: by platform, for their traits (filled in as adapters are added)."""
        self._config = config
        self._adapters = adapters
        self._store = store
        self._clock = clock
        self._catalog = catalog
        # Settings change rarely and are read for every job: cached, and dropped on update.
        # The cache holds the read itself, so a burst of commands in a new channel shares one
        # read instead of each starting its own before the first has answered.
        self._cache: Recent[tuple[Platform, str, str], asyncio.Future[dict[str, str]]] = Recent(
            _MAX_CACHED_SCOPES
        )
        # Each channel's `Defaults`, with the two reads they were made from (its server's and
        # its own): made again once either read is no longer the cached one (a change, or
        # dropped as old). Every command asks, and merging the scopes cost more than reading.
        self._defaults: Recent[tuple[Platform, str, str], _Merged] = Recent(_MAX_CACHED_SCOPES)

    # -- access ----------------------------------------------------------------------------

    def check_access(self, caller: Caller) -> None:
        """Refuse callers outside the configured allow-lists (an operator's platform, such as
        the console, is always allowed)."""
        if traits_of(self._adapters, caller.platform).operator:
            return
        config = self._config
        if config.allowed_servers and caller.server not in config.allowed_servers:
            raise RefusedError("this bot is not enabled in this server / workspace")
        if (
            config.allowed_channels
            and caller.conversation.channel not in config.allowed_channels
            and not caller.is_admin
        ):
            raise RefusedError("this bot is not enabled in this channel")
        if (
            config.allowed_roles
            and not caller.is_admin
            and not set(caller.roles) & set(config.allowed_roles)
        ):
            raise RefusedError("you need one of the roles this bot is enabled for")

    def admission(self, caller: Caller, in_flight: int, defaults: Defaults) -> Admission:
        """The limits a new job must fit in under the channel's `defaults` (as `defaults` read
        them for this command); refuses at once when this replica already drives
        `max_in_flight` jobs.

        The store counts the per-user limits and the global cap (every replica's jobs) in the
        same transaction that commits the job. The operator (the console) is bound by the
        global cap only.
        """
        if in_flight >= self._config.max_in_flight:
            raise self._busy(in_flight)
        cap = self._config.max_in_flight
        if traits_of(self._adapters, caller.platform).operator:
            return Admission(max_running=None, max_in_flight=cap)
        now = self._clock.now()
        midnight = datetime.combine(now.date(), time(0), now.tzinfo)
        return Admission(
            max_running=defaults.concurrency,
            max_today=defaults.daily_quota or None,
            day_start=midnight,
            max_in_flight=cap,
        )

    def _busy(self, in_flight: int) -> RefusedError:
        return RefusedError(
            f"the bot is busy: {in_flight} jobs are running or starting (the maximum is "
            f"{self._config.max_in_flight}); please try again in a minute",
            reason="busy",
        )

    def refusal(self, refused: AdmissionRefused, admission: Admission) -> RefusedError:
        """The message for a job the store refused under `admission`."""
        if refused.limit == "global":  # counted across every replica sharing the store
            return self._busy(refused.count)
        if refused.limit == "running":
            jobs = "job" if refused.count == 1 else "jobs"
            return RefusedError(
                f"you have {refused.count} {jobs} running; the limit here is "
                f"{admission.max_running}. Try again when one finishes, or `cancel` one",
                reason="limit",
            )
        reset = (admission.day_start or self._clock.now()) + timedelta(days=1)
        left = (reset - self._clock.now()).total_seconds()
        return RefusedError(
            f"you have used your {admission.max_today} jobs for today; the quota resets at "
            f"00:00 UTC (in {duration(left)})",
            reason="quota",
        )

    # -- settings --------------------------------------------------------------------------

    async def defaults(self, caller: Caller) -> Defaults:
        """The settings in force in the caller's channel."""
        server_key = (caller.platform, caller.server, SERVER_SCOPE)
        channel_key = (caller.platform, caller.server, caller.conversation.channel)
        merged = self._defaults.get(channel_key)
        if (
            merged is not None
            and self._cache.get(server_key) is merged.server
            and self._cache.get(channel_key) is merged.channel
        ):
            return merged.defaults
        server_read, channel_read = self._read(server_key), self._read(channel_key)
        defaults = self._merge(await self._result(server_read), await self._result(channel_read))
        self._defaults[channel_key] = _Merged(server_read, channel_read, defaults)
        return defaults

    def _merge(self, server: Mapping[str, str], channel: Mapping[str, str]) -> Defaults:
        config = self._config
        base: dict[str, str | None] = {
            "endpoint": config.endpoint,
            "model": config.model,
            "vae": config.vae,
            "max_size": str(config.max_side),
            "concurrency": str(config.user_concurrency),
            "daily_quota": str(config.daily_quota),
        }
        sources = dict.fromkeys(SETTING_KEYS, "config")
        for scope_name, scope in (("server", server), ("channel", channel)):
            for key, value in scope.items():
                if key in base:
                    base[key] = value
                    sources[key] = scope_name
        return Defaults(
            endpoint=base["endpoint"],
            model=base["model"],
            vae=base["vae"] or "Automatic",
            # Never above the operator's cap, whatever a server admin set.
            max_size=min(int(base["max_size"] or config.max_side), config.max_side),
            concurrency=int(base["concurrency"] or config.user_concurrency),
            daily_quota=int(base["daily_quota"] or 0),
            sources=sources,
        )

    def _read(self, key: tuple[Platform, str, str]) -> asyncio.Future[dict[str, str]]:
        """The cached read of one scope's settings (`key`: platform, server, scope), started
        now if there is none."""
        read = self._cache.get(key)
        if read is None:
            read = asyncio.ensure_future(self._store.settings(*key))
            self._cache[key] = read

            def forget_failure(done: asyncio.Future[dict[str, str]]) -> None:
                if (done.cancelled() or done.exception()) and self._cache.get(key) is done:
                    del self._cache[key]  # the next command reads again

            read.add_done_callback(forget_failure)
        else:
            self._cache.move_to_end(key)
        return read

    @staticmethod
    async def _result(read: asyncio.Future[dict[str, str]]) -> dict[str, str]:
        if read.done() and not read.cancelled() and read.exception() is None:
            return read.result()  # the common case: no future, no task switch
        # Shielded: one caller giving up does not cancel the read the others wait for.
        return await asyncio.shield(read)

    async def describe(self, caller: Caller) -> str:
        """What `settings` without options shows."""
        defaults = await self.defaults(caller)
        lines = ["settings in force in this channel (and where each comes from):"]
        for key in SETTING_KEYS:
            value = getattr(defaults, key)
            shown = "(backend default)" if value is None else value
            if key == "daily_quota" and value == 0:
                shown = "0 (no limit)"
            lines.append(f"{key} = {shown} · {defaults.sources[key]}")
        lines.append(
            "change with `settings key=value` (this channel) or `settings scope=server key=value`;"
            " remove with `settings reset=key`"
        )
        return "\n".join(lines)

    async def update(self, caller: Caller, options: Mapping[str, object]) -> str:
        """Apply a `settings` command from an admin; validate names against the backend."""
        if not caller.is_admin:
            raise RefusedError("only admins can change settings")
        scope_name = str(options.get("scope", "channel"))
        scope = SERVER_SCOPE if scope_name == "server" else caller.conversation.channel
        changes: dict[str, str | None] = {}
        for key in SETTING_KEYS:
            if key in options:
                changes[key] = await self._validated(key, options[key])
        reset = options.get("reset")
        if isinstance(reset, str):
            keys = (
                SETTING_KEYS
                if reset.strip().lower() == "all"
                else tuple(k.strip().lower() for k in reset.split(",") if k.strip())
            )
            unknown = [k for k in keys if k not in SETTING_KEYS]
            if unknown:
                raise ParseError(
                    f"unknown setting `{unknown[0]}`; settings: {', '.join(SETTING_KEYS)}"
                )
            for key in keys:
                if key in changes:
                    raise ParseError(f"`{key}` is both set and reset; do one or the other")
                changes[key] = None
        await self._store.put_settings(caller.platform, caller.server, scope, changes)
        self._cache.pop((caller.platform, caller.server, scope), None)
        where = "this server" if scope == SERVER_SCOPE else "this channel"
        done = ", ".join(f"{k} reset" if v is None else f"{k} = {v}" for k, v in changes.items())
        return f"settings for {where}: {done}"

    async def _validated(self, key: str, value: object) -> str:
        """A setting's value, with names as the backend spells them (any case accepted)."""
        text = str(value)
        if key == "endpoint":
            return (await self._catalog.endpoint_named(text))[0].name
        if key == "vae" and (keyword := vae_keyword(text)) is not None:
            return keyword
        if key in ("model", "vae"):
            return await self._catalog.model_named(
                text, "Stable-diffusion" if key == "model" else "VAE"
            )
        if key == "max_size" and isinstance(value, int) and value % 8:
            raise ParseError(f"`max_size` must be a multiple of 8, got {value}")
        return text
