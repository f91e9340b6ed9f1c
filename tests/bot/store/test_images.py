"""`ImageStore` contract: a job's inputs and results."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from store_kit import make_job

from bot.ports import JobStore, StoredImage

if TYPE_CHECKING:
    pass

# -- images --------------------------------------------------------------------------------


async def test_images_put_replace_get_delete(store: JobStore) -> None:
    image = StoredImage("image", "in.png", b"\x89PNG image")
    mask = StoredImage("mask", "mask.png", b"\x00\xff mask")
    await store.insert(make_job("i1"), [image, mask])
    await store.insert(make_job("i2"), [StoredImage("image", "other.png", b"other")])
    assert await store.images("i1") == [image, mask]

    results = [StoredImage("result", f"{n}.png", bytes([n]) * 3) for n in range(3)]
    await store.put_images("i1", results)
    assert await store.images("i1") == [image, mask, *results]  # by slot, then position
    assert await store.images("i1", "result") == results
    assert await store.images("i1", "mask") == [mask]
    assert await store.images("i1", "sketch") == []

    fewer = [StoredImage("result", "new.png", b"new")]
    await store.put_images("i1", fewer)
    assert await store.images("i1") == [image, mask, *fewer]  # only the given slot replaced

    await store.delete_images("i1")
    assert await store.images("i1") == []
    assert await store.images("i2") == [StoredImage("image", "other.png", b"other")]
    assert await store.get("i1") is not None  # rows are kept, only images go


async def test_put_images_for_an_unknown_job_raises_key_error(store: JobStore) -> None:
    with pytest.raises(KeyError):
        await store.put_images("nosuchjob1", [StoredImage("result", "r.png", b"r")])
    assert await store.images("nosuchjob1") == []


async def test_put_images_with_nothing_changes_nothing(store: JobStore) -> None:
    image = StoredImage("image", "in.png", b"in")
    await store.insert(make_job("i3"), [image])
    await store.put_images("i3", [])
    assert await store.images("i3") == [image]
