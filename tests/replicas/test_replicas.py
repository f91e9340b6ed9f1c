"""Several `sdbot` replicas on one store, as real processes (README "Run several replicas").

Each replica is `sdbot run` in Slack HTTP mode against one loopback `FakeSlack` (the Web API the
replicas post to) with the local backend, its jobs kept in one shared folder as a backend shared
by the replicas keeps them. The test plays Slack's side: it posts each event, signed, to one
replica (a load balancer's choice), and posts some again to another one with Slack's retry
headers. Then it kills replicas with SIGKILL, pauses one with SIGSTOP past its leases, and checks
what the people in the channels would see: one job per message, each result posted exactly once,
in the thread of that job's status message.
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

import aiohttp
from scenario_kit import png
from slack_sdk.signature import SignatureVerifier

from tests.slack.conftest import BOT_TOKEN, BOT_USER, SIGNING_SECRET, TEAM, FakeSlack, Message

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Replica:
    """One `sdbot run` process (Slack HTTP mode on its own port)."""

    name: str
    env: dict[str, str]
    folder: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SDBOT_", "ESD_", "SLACK_", "DISCORD_"))
        }
        env |= self.env | {"SDBOT_HTTP_PORT": str(self.port), "SDBOT_REPLICA_ID": self.name}
        self.starts += 1
        log = (self.folder / f"{self.name}-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "adapters.cli", "run"],
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


async def _until(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(what()) from None


@contextlib.asynccontextmanager
async def _cluster(
    tmp_path: Path, names: list[str], store_env: Mapping[str, str], **settings: str
) -> AsyncIterator[tuple[Slack, dict[str, Replica]]]:
    fake = FakeSlack()
    await fake.start()
    shared = tmp_path / "shared"
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": fake.api_url,
        "SDBOT_BACKEND": "local",
        "SDBOT_DATA_DIR": str(shared),
        "SDBOT_POLL_INTERVAL": "0.05",
        "SDBOT_POLL_MAX_INTERVAL": "0.2",
        "SDBOT_USER_CONCURRENCY": "1000",
        "SDBOT_MAX_IN_FLIGHT": "1000",
        "SDBOT_LOG_LEVEL": "INFO",
        **store_env,
        **settings,
    }
    replicas = {name: Replica(name, env, tmp_path) for name in names}
    try:
        async with aiohttp.ClientSession() as http:
            for replica in replicas.values():
                replica.start()
            for replica in replicas.values():
                await replica.ready(http)
            yield Slack(fake, http), replicas
    finally:
        for replica in replicas.values():
            if replica.process is not None:
                replica.stop()
        await fake.aclose()


async def test_one_replica_takes_events_and_delivers_each_result_once(tmp_path: Path) -> None:
    async with _cluster(tmp_path, ["r1"], {}, SDBOT_LOCAL_DELAY="0.2") as (slack, replicas):
        picture = slack.fake.add_file("cat.png", png())
        for n in range(5):
            body = slack.message_event(f"C{n}", f"<@{BOT_USER}> img2img cat {n}", [picture])
            assert await slack.deliver(replicas["r1"], body) == 200
            assert await slack.deliver(replicas["r1"], body, retry=1) == 200
        await _until(lambda: len(slack.results()) >= 5, 30, lambda: replicas["r1"].logs())
        for n in range(5):
            [status] = slack.statuses(f"C{n}")
            [result] = slack.results(f"C{n}")
            assert result.thread_ts == status.ts
