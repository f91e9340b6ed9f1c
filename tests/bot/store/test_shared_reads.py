"""`SharedReads`: the contract every store engine keeps (the ESD scan done once across
replicas, and completion events handed to the replica that follows the job:
`cloud.esd.sharing`)."""

from __future__ import annotations

from bot.ports import SharedReads


async def test_asked_keys_are_wanted_and_get_what_was_posted(store: SharedReads) -> None:
    assert await store.ask("esd:img2img", ["a", "b"]) == {}
    assert await store.wanted("esd:img2img", 60) == {"a", "b"}
    assert await store.wanted("esd:txt2img", 60) == set()
    # The reader posts what it found ("a"), what it looked for in vain ("b"), and something
    # nobody asked about, which is not kept.
    await store.post("esd:img2img", {"a": '{"id": "a"}', "b": None, "c": "{}"})
    posted = await store.ask("esd:img2img", ["a", "b", "c"])
    assert {key: entry.value for key, entry in posted.items()} == {"a": '{"id": "a"}', "b": None}
    assert posted["a"].at.tzinfo is not None
    # Asking again marks the keys wanted anew; "c" is wanted from now on.
    assert await store.wanted("esd:img2img", 60) == {"a", "b", "c"}


async def test_keys_go_when_unasked_or_not_asked_for_a_while(store: SharedReads) -> None:
    await store.ask("esd:img2img", ["a", "b"])
    await store.unask("esd:img2img", ["a"])
    assert await store.wanted("esd:img2img", 60) == {"b"}
    # Nobody asked about "b" in the last -1 s (it was asked before now): dropped.
    assert await store.wanted("esd:img2img", -1) == set()
    await store.post("esd:img2img", {"b": "{}"})
    assert await store.ask("esd:img2img", ["b"]) == {}


async def test_recent_posts_are_found_whoever_asked_for_them(store: SharedReads) -> None:
    await store.ask("esd-events", ["a", "b", "c"])
    await store.ask("esd:img2img", ["a"])
    assert await store.recent("esd-events", 60) == {}  # asked, nothing posted yet
    await store.post("esd-events", {"a": "ended", "b": None, "stranger": "ended"})
    await store.post("esd:img2img", {"a": "scanned"})
    recent = await store.recent("esd-events", 60)
    assert {key: entry.value for key, entry in recent.items()} == {"a": "ended", "b": None}
    assert recent["a"].at.tzinfo is not None
    # Posted before the last -1 s (that is, before now): not recent.
    assert await store.recent("esd-events", -1) == {}
    await store.unask("esd-events", ["a"])
    assert set(await store.recent("esd-events", 60)) == {"b"}
