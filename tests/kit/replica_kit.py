"""Several `sdbot` replicas as real processes, and Slack's side of them (tests and benchmarks).

`Replica` is one `sdbot run` on a port of its own (its operators' endpoints, and Slack's events
in HTTP mode), with the local backend; `cluster` starts several against one loopback `FakeSlack`
(`tests/slack/conftest.py`), their backend's jobs kept in one shared folder as a backend shared
by replicas keeps them, and `Slack` plays Slack's side: events signed and posted to a replica,
and what the channels hold. `replica_settings` and `started` serve the Discord replicas too
(`tests/replicas/test_replicas_discord.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
from pg_kit import fresh_schema
from slack_sdk.signature import SignatureVerifier

from stores.postgres import PostgresJobStore
from tests.slack.conftest import BOT_TOKEN, BOT_USER, SIGNING_SECRET, TEAM, FakeSlack, Message

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Replica:
    """One `sdbot run` process (HTTP on its own port, the same after a restart).

    Each start is a replica of its own id (`ident`: `<name>-<start>`), as a restarted process
    is (host name and pid by default); `wiring` is its own environment for the platform (the
    fake Slack under `/<name>/api/`), `module` what it runs (`adapters.cli`, or a wrapper of
    it); on PostgreSQL it connects with its id as `application_name`, so the database can tell
    who wrote.
    """

    name: str
    env: dict[str, str]
    folder: Path
    wiring: Mapping[str, str]
    module: str = "adapters.cli"
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def ident_of(self, start: int) -> str:
        return f"{self.name}-{start}"

    @property
    def ident(self) -> str:
        """The id of the current (or last) start."""
        return self.ident_of(self.starts)

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SDBOT_", "ESD_", "SLACK_", "DISCORD_"))
        }
        self.starts += 1
        env |= self.env | dict(self.wiring)
        env |= {"SDBOT_HTTP_PORT": str(self.port), "SDBOT_REPLICA_ID": self.ident}
        if "SDBOT_DATABASE_URL" in env:
            query = urlencode({"application_name": self.ident})
            env["SDBOT_DATABASE_URL"] += ("&" if "?" in env["SDBOT_DATABASE_URL"] else "?") + query
        log = (self.folder / f"{self.name}-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "run"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                assert self.process is not None and self.process.poll() is None, self.logs()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.port}/healthz") as answer:
                        if answer.status == 200:
                            return
                await asyncio.sleep(0.1)

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self) -> int:
        """Wait for the process to end (after a SIGKILL)."""
        assert self.process is not None
        return self.process.wait(30)

    def stop(self) -> int:
        """SIGTERM (a graceful stop: leases let go) and wait."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
        return self.process.wait(30)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.folder.glob(f"{self.name}-*.log"))
        )


class Slack:
    """Slack's side: events signed and posted to replicas, and what the channels hold."""

    def __init__(self, fake: FakeSlack, http: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.http = http
        self._ids = itertools.count(1)

    async def deliver(self, replica: Replica, body: dict[str, Any], retry: int = 0) -> int:
        raw = json.dumps(body)
        stamp = str(int(time.time()))
        signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=stamp, body=raw)
        assert signature is not None
        headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
        }
        if retry:
            # https://docs.slack.dev/apis/events-api/#retries
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        url = f"http://127.0.0.1:{replica.port}/slack/events"
        async with self.http.post(url, data=raw.encode(), headers=headers) as answer:
            return answer.status

    def message_event(self, channel: str, text: str, files: list[dict[str, Any]]) -> dict[str, Any]:
        message = self.fake.user_message(text, channel=channel, files=files)
        return {
            "token": "legacy",
            "team_id": TEAM,
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": f"Ev{next(self._ids)}",
            "event_time": int(time.time()),
            "event": {
                "type": "message",
                "subtype": "file_share",
                "channel": channel,
                "channel_type": "channel",
                "user": "U1",
                "text": text,
                "ts": message.ts,
                "team": TEAM,
                "files": files,
            },
            "authorizations": [
                {"team_id": TEAM, "user_id": BOT_USER, "is_bot": True, "enterprise_id": None}
            ],
        }

    def statuses(self, channel: str) -> list[Message]:
        """The bot's messages at the top of a channel: each job's status (its thread)."""
        return [m for m in self.fake.bot_messages(channel) if m.thread_ts is None]

    def results(self, channel: str | None = None) -> list[Message]:
        """Result messages (with their action buttons and context), oldest first."""
        return [
            m
            for m in self.fake.bot_messages(channel)
            if any(b.get("type") == "context" for b in m.blocks)
        ]


async def until(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(what()) from None


def replica_settings(tmp_path: Path) -> dict[str, str]:
    """What every replica of a cluster is set up with: the local backend, its jobs in one
    shared folder, quick polls, and no per-user or in-flight limit in the way."""
    return {
        "SDBOT_BACKEND": "local",
        "SDBOT_DATA_DIR": str(tmp_path / "shared"),
        "SDBOT_POLL_INTERVAL": "0.05",
        "SDBOT_POLL_MAX_INTERVAL": "0.2",
        "SDBOT_USER_CONCURRENCY": "1000",
        "SDBOT_MAX_IN_FLIGHT": "1000",
        "SDBOT_LOG_LEVEL": "INFO",
    }


@contextlib.asynccontextmanager
async def started(replicas: Iterable[Replica]) -> AsyncIterator[aiohttp.ClientSession]:
    """Start the replicas, wait until each answers `/healthz`, and stop them (SIGTERM) at the
    end; the session is for the test's own requests."""
    group = list(replicas)
    try:
        async with aiohttp.ClientSession() as http:
            for replica in group:
                replica.start()
            for replica in group:
                await replica.ready(http)
            yield http
    finally:
        for replica in group:
            if replica.process is not None:
                replica.stop()


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, names: list[str], store_env: Mapping[str, str], **settings: str
) -> AsyncIterator[tuple[Slack, dict[str, Replica]]]:
    fake = FakeSlack()
    await fake.start()
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        **replica_settings(tmp_path),
        **store_env,
        **settings,
    }
    replicas = {
        name: Replica(name, env, tmp_path, {"SLACK_API_URL": f"{fake.base}/{name}/api/"})
        for name in names
    }
    try:
        async with started(replicas.values()) as http:
            yield Slack(fake, http), replicas
    finally:
        await fake.aclose()


@contextlib.asynccontextmanager
async def migrated_schema(pool_size: int) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A fresh PostgreSQL schema with the store's tables, and a pool on it for the test's own
    queries. The tables are made before the replicas start (they would migrate it alike)."""
    async with fresh_schema() as url:
        store = PostgresJobStore(url)
        await store.start()
        await store.aclose()
        db = await asyncpg.create_pool(url, min_size=1, max_size=pool_size)
        try:
            yield url, db
        finally:
            await db.close()
