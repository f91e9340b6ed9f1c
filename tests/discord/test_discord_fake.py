"""The fake Discord's gateway sessions and interaction answers, as Discord documents them (the
fake is the specification the replica tests rely on, `tests/replicas/test_replicas_discord.py`):
several sessions on one shard each receive its events with their own sequence numbers; an
identify too soon after another is refused; a cut-off session resumes with what it missed; shards
get their servers' events and DMs go to shard 0; an interaction takes one answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp

from tests.discord.conftest import CHANNEL, GUILD, TOKEN, guild_payload

if TYPE_CHECKING:
    from tests.discord.conftest import FakeDiscord

OTHER_SHARD_GUILD = 1 << 22  # (guild_id >> 22) % 2 == 1


async def _connect(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    socket = await http.ws_connect(url)
    hello = await socket.receive_json()
    assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
    return socket


async def _identify(
    socket: aiohttp.ClientWebSocketResponse, shard: list[int] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {"token": TOKEN, "intents": 0, "properties": {}}
    if shard is not None:
        data["shard"] = shard
    await socket.send_json({"op": 2, "d": data})
    return await _next(socket)


async def _next(socket: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next frame other than a heartbeat ACK."""
    while True:
        frame: dict[str, Any] = await socket.receive_json(timeout=5)
        if frame["op"] != 11:
            return frame


async def test_sessions_on_one_shard_each_get_its_events_with_their_own_sequence(
    fake: FakeDiscord,
) -> None:
    fake.gateway_guilds = [guild_payload(GUILD, CHANNEL)]
    async with aiohttp.ClientSession() as http:
        first = await _connect(http, fake.gateway_url_of("a"))
        ready = await _identify(first)
        assert (ready["t"], ready["s"]) == ("READY", 1)
        assert (await _next(first))["t"] == "GUILD_CREATE"
        assert fake.push("MESSAGE_CREATE", {"id": "1", "guild_id": str(GUILD)}) == 1
        assert (await _next(first))["s"] == 3

        second = await _connect(http, fake.gateway_url_of("b"))
        # One identify per 5 s (max_concurrency 1): the second is refused, to identify again.
        assert await _identify(second) == {"op": 9, "d": False, "s": None, "t": None}
        fake.identify_window = 0.0
        again = await _identify(second)
        assert (again["t"], again["s"]) == ("READY", 1)
        assert again["d"]["session_id"] != ready["d"]["session_id"]
        assert (await _next(second))["t"] == "GUILD_CREATE"

        assert fake.push("INTERACTION_CREATE", {"id": "2", "guild_id": str(GUILD)}) == 2
        one, two = await _next(first), await _next(second)
        assert (one["t"], one["s"], one["d"]) == (
            "INTERACTION_CREATE",
            4,
            {"id": "2", "guild_id": str(GUILD)},
        )
        assert (two["t"], two["s"], two["d"]) == ("INTERACTION_CREATE", 3, one["d"])
        assert [s.label for s in fake.ready_sessions()] == ["a", "b"]

        await second.send_json({"op": 1, "d": 3})
        assert (await second.receive_json(timeout=5))["op"] == 11
        await first.close()
        await second.close()


async def test_a_session_cut_off_resumes_with_what_it_missed(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as http:
        socket = await _connect(http, fake.gateway_url_of("a"))
        ready = await _identify(socket)
        await socket.close()
        await fake.wait_for(lambda: not fake.ready_sessions())
        fake.push("MESSAGE_CREATE", {"id": "1"})  # kept for the session (sequence 2)

        resumed = await _connect(http, ready["d"]["resume_gateway_url"])
        session = ready["d"]["session_id"]
        await resumed.send_json({"op": 6, "d": {"token": TOKEN, "session_id": session, "seq": 1}})
        missed, back = await _next(resumed), await _next(resumed)
        assert (missed["t"], missed["s"]) == ("MESSAGE_CREATE", 2)
        assert (back["t"], back["s"]) == ("RESUMED", 3)

        unknown = await _connect(http, fake.gateway_url)
        await unknown.send_json({"op": 6, "d": {"token": TOKEN, "session_id": "x", "seq": 1}})
        assert (await _next(unknown))["op"] == 9
        await resumed.close()
        await unknown.close()


async def test_shards_get_their_servers_events_and_dms_go_to_shard_zero(fake: FakeDiscord) -> None:
    fake.identify_window = 0.0
    fake.gateway_guilds = [guild_payload(GUILD, CHANNEL)]
    async with aiohttp.ClientSession() as http:
        zero = await _connect(http, fake.gateway_url)
        one = await _connect(http, fake.gateway_url)
        await _identify(zero, [0, 2])
        assert (await _next(zero))["t"] == "GUILD_CREATE"  # GUILD is on shard 0
        await _identify(one, [1, 2])
        assert fake.push("MESSAGE_CREATE", {"id": "1", "guild_id": str(OTHER_SHARD_GUILD)}) == 1
        assert (await _next(one))["d"]["id"] == "1"
        assert fake.push("MESSAGE_CREATE", {"id": "2"}) == 1  # a DM
        assert (await _next(zero))["d"]["id"] == "2"
        await zero.close()
        await one.close()


async def test_an_interaction_takes_one_answer(fake: FakeDiscord) -> None:
    payload = fake.interaction_payload(2, fake.slash_data("help"))
    url = f"{fake.api}/interactions/{payload['id']}/{payload['token']}/callback"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"type": 5}) as first:
            assert first.status == 200
        async with http.post(url, json={"type": 4, "data": {"content": "x"}}) as second:
            assert second.status == 400
            assert (await second.json())["code"] == 40060
