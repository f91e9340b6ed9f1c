"""Several `sdbot` replicas on Discord, as real processes on one PostgreSQL store
(docs/discord.md "Several replicas and shards").

Each replica is `sdbot run` (`tests/kit/discord_run.py`) against one loopback `FakeDiscord`
(`tests/discord/conftest.py`) with the local backend. Below 2,500 servers a bot runs one shard,
and every replica identifies a session on it; Discord sends each session that shard's events
(dapi: developers/events/gateway.mdx "Sharding"), so every replica receives every slash command
and every thread reply. The test plays the users' side over the gateway and checks what they
see: one job per command and per reply, one answer to each interaction (the fake refuses a
second with Discord's 40060), each result posted once in its job's thread; then the replica
driving the most jobs is killed (SIGKILL) and the others take its jobs over when their leases
expire, and post each of their results once.

What the others cannot do for a killed replica: turn its "thinking…" answers into pointers to
the jobs' threads. Only the replica that took a command holds the interaction (its token lives
15 minutes and is not stored), so a job whose status it had not posted yet is delivered in the
channel and its thread, and the person's private answer stays "thinking…".
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from typing import TYPE_CHECKING, Any

import asyncpg
from replica_kit import Replica, migrated_schema, replica_settings, started, until
from scenario_kit import png

from tests.discord.conftest import CHANNEL, GUILD, TOKEN, FakeDiscord, guild_payload

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

LEASE = 3.0  # seconds: short, so that the survivors take the killed replica's jobs within the run
NAMES = ("r1", "r2", "r3")
FIRST = 6  # slash commands while all three run
IN_FLIGHT = 6  # slash commands whose jobs are in flight when a replica is killed
UNFINISHED = "state IN ('created', 'inprogress')"


@contextlib.asynccontextmanager
async def discord_cluster(
    tmp_path: Path, database: str
) -> AsyncIterator[tuple[FakeDiscord, dict[str, Replica]]]:
    """Three replicas on one store, each with a session on the fake gateway's one shard."""
    fake = FakeDiscord()
    await fake.start()
    fake.gateway_guilds = [guild_payload(GUILD, CHANNEL)]
    env = {
        "DISCORD_TOKEN": TOKEN,
        **replica_settings(tmp_path),
        "SDBOT_DATABASE_URL": database,
        "SDBOT_LEASE_SECONDS": str(LEASE),
        "SDBOT_MAX_ATTEMPTS": "10",  # a loaded machine's late renewals cost takeovers too
        # Long enough that the jobs are still in flight when a replica is killed.
        "SDBOT_LOCAL_DELAY": "3",
    }
    replicas = {
        name: Replica(
            name,
            env,
            tmp_path,
            {"FAKE_DISCORD_ORIGIN": fake.origin, "FAKE_DISCORD_GATEWAY": fake.gateway_url_of(name)},
            module="tests.kit.discord_run",
        )
        for name in NAMES
    }
    try:
        async with started(replicas.values()):
            # Started together, they identify in turn: Discord takes one identify per 5 s
            # and answers the others Invalid Session (the fake as well), and discord.py
            # identifies again 5 s later.
            await until(
                lambda: all(fake.ready_sessions(name) for name in NAMES),
                60,
                lambda: "\n".join(r.logs() for r in replicas.values()),
            )
            yield fake, replicas
    finally:
        await fake.aclose()


class Users:
    """The people's side: slash commands and thread replies over the gateway, and what the
    channel and the job threads hold."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.tokens: list[str] = []

    def slash(self, prompt: str) -> str:
        data = self.fake.slash_data("img2img", {"prompt": prompt}, {"image": png()})
        payload = self.fake.interaction_payload(2, data)
        self.fake.push("INTERACTION_CREATE", payload)
        self.tokens.append(payload["token"])
        return str(payload["token"])

    def reply(self, thread: str, text: str) -> None:
        """A reply in a job's thread that mentions the bot (the replicas run without the
        message-content intent)."""
        payload = self.fake.message_payload(
            text, channel=thread, mention=True, message_content=False
        )
        self.fake.push("MESSAGE_CREATE", payload)

    def answered(self) -> bool:
        return all(self.fake.callbacks(token) for token in self.tokens)

    def results(self, job_id: str, thread: str) -> list[dict[str, Any]]:
        return [m for m in self.fake.results(thread) if m["content"].startswith(f"job `{job_id}`")]


async def _rows(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT id, state, delivery, job_thread, status_message, parent_id, attempts,"
            " lease_owner FROM jobs ORDER BY created_at"
        )
    )


async def _until_rows(
    db: asyncpg.Pool, check: Callable[[list[asyncpg.Record]], bool], timeout: float, what: str
) -> None:
    """Poll the store until `check(rows)` holds; else fail with `what` and the rows."""
    rows: list[asyncpg.Record] = []
    try:
        async with asyncio.timeout(timeout):
            while not check(rows := await _rows(db)):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what}: {[dict(r) for r in rows]}") from None


def _delivered(rows: list[asyncpg.Record], count: int) -> bool:
    finished = [r for r in rows if r["state"] in ("succeed", "failed", "cancelled")]
    return (
        len(rows) >= count
        and all(r["delivery"] == "done" for r in finished)
        and (len(finished) == len(rows))
    )


async def test_replicas_on_one_shard_act_once_on_each_event_and_take_over_a_killed_one(
    tmp_path: Path,
) -> None:
    async with migrated_schema(2) as (url, db), discord_cluster(tmp_path, url) as cluster:
        await _run(*cluster, db)


async def _run(fake: FakeDiscord, replicas: dict[str, Replica], db: asyncpg.Pool) -> None:
    users = Users(fake)

    def logs() -> str:
        return "\n".join(r.logs() for r in replicas.values())

    # -- All three running: commands, and a reply in a job's thread.
    for n in range(FIRST):
        users.slash(f"a cat {n}")
    await until(users.answered, 30, logs)
    await _until_rows(db, lambda rows: _delivered(rows, FIRST), 60, "not every job was delivered")
    sessions = fake.ready_sessions()
    assert sorted(s.label for s in sessions) == sorted(NAMES)
    for session in sessions:  # each session of the shard was sent every command
        assert sum(f["t"] == "INTERACTION_CREATE" for f in session.sent) == FIRST
    first = await _rows(db)
    assert len(first) == FIRST  # one job per command, though three replicas received each
    base = first[0]
    users.reply(base["job_thread"], "steps=3")
    await _until_rows(db, lambda rows: _delivered(rows, FIRST + 1), 60, "the reply made no job")

    # -- Jobs in flight, and the replica driving the most of them killed.
    for n in range(IN_FLIGHT):
        users.slash(f"a dog {n}")
    await until(users.answered, 30, logs)
    total = FIRST + 1 + IN_FLIGHT
    await _until_rows(db, lambda rows: len(rows) == total, 30, "not every command made a job")
    held = Counter(
        r["lease_owner"]
        for r in await db.fetch(f"SELECT lease_owner FROM jobs WHERE {UNFINISHED}")
        if r["lease_owner"] is not None
    )
    assert held, "no job in flight to take over"
    owner, _ = held.most_common(1)[0]
    [victim] = [r for r in replicas.values() if r.ident == owner]
    victim.signal(signal.SIGKILL)
    await asyncio.to_thread(victim.wait)
    orphans = {
        r["id"]
        for r in await db.fetch(
            f"SELECT id FROM jobs WHERE lease_owner = $1 AND {UNFINISHED}", victim.ident
        )
    }
    assert orphans, "the killed replica drove no job"
    # A command after the kill: the survivors' sessions still take it.
    users.slash("after the kill")
    await until(users.answered, 30, logs)
    await _until_rows(
        db, lambda rows: _delivered(rows, total + 1), 60, "the survivors did not deliver"
    )

    # -- What the people see, and the store.
    rows = await _rows(db)
    assert len(rows) == total + 1
    assert {(r["state"], r["delivery"]) for r in rows} == {("succeed", "done")}
    for token in users.tokens:  # one answer per interaction, and no refused second one
        assert [r.status for r in fake.callbacks(token)] == [200], token
    pointers = [m["content"] for t in users.tokens for m in fake.answers_to(t)]
    for row in rows:
        job_id, thread = row["id"], row["job_thread"]
        # One status message, showing the job done; for a command, one thread started from
        # it and one private pointer to that thread.
        statuses = [
            m for m in fake.messages.values() if m["content"].startswith(f"img2img `{job_id}`")
        ]
        assert len(statuses) == 1, (job_id, [m["content"] for m in statuses])
        assert "succeed" in statuses[0]["content"]
        if row["parent_id"] is None:
            assert statuses[0]["channel_id"] == str(CHANNEL)
            assert fake.thread_of(statuses[0]["id"]) is not None and thread == statuses[0]["id"]
            pointer = f"job `{job_id}` accepted — follow it in <#{thread}>"
            mine = [p for p in pointers if f"`{job_id}`" in p]
            # Killed before the thread existed, the replica that took the command leaves its
            # "thinking…" answer (see the module's docstring).
            assert mine == [pointer] or (job_id in orphans and not mine), (job_id, mine)
        # One result message, in the job's thread.
        results = users.results(job_id, thread)
        assert len(results) == 1, (job_id, [m["content"] for m in results])
        assert sum(m["content"].startswith(f"job `{job_id}`") for m in fake.messages.values()) == 1
    assert len(fake.channels) == len(users.tokens)  # one thread per command
    [reply_job] = [r for r in rows if r["parent_id"] is not None]
    assert reply_job["parent_id"] == base["id"]
    assert reply_job["job_thread"] == base["job_thread"]
    taken = [r for r in rows if r["id"] in orphans]
    assert all(r["attempts"] > 0 for r in taken), [dict(r) for r in taken]
    assert all(r["lease_owner"] != victim.ident for r in taken)
