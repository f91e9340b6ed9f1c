"""`bot.inputs.assign_slots`: which attachment fills which image slot (SPEC §2.3)."""

from __future__ import annotations

import pytest

from bot.errors import RefusedError
from bot.inputs import assign_slots
from bot.model import AttachmentRef
from commands import parse


def _ref(name: str, slot: str = "") -> AttachmentRef:
    return AttachmentRef(name, f"https://cdn.example/{name}", 10, "image/png", slot)


@pytest.mark.parametrize(
    ("command", "names", "assigned"),
    [
        # One file (the common case): the image, unless its name says mask / sketch.
        ("img2img a cat", ["a.png"], [("a.png", "image")]),
        ("img2img a cat", ["mask.png"], [("mask.png", "image")]),  # img2img takes no mask
        ("inpaint a cat", ["a.png"], [("a.png", "image")]),
        ("inpaint a cat", ["my-Mask.png"], [("my-Mask.png", "mask")]),
        ("inpaint-sketch a cat", ["sketch.png"], [("sketch.png", "sketch")]),
        # Several: first the image, second the mask or sketch; a name that says which wins.
        ("inpaint a cat", ["a.png", "b.png"], [("a.png", "image"), ("b.png", "mask")]),
        ("inpaint a cat", ["mask.png", "b.png"], [("b.png", "image"), ("mask.png", "mask")]),
    ],
)
def test_attachments_fill_slots_in_order_unless_named(
    command: str, names: list[str], assigned: list[tuple[str, str]]
) -> None:
    refs = assign_slots(parse(command).spec, [_ref(name) for name in names])
    assert [(r.name, r.slot) for r in refs] == assigned


def test_a_slot_the_adapter_named_is_kept() -> None:
    refs = assign_slots(parse("inpaint a cat").spec, [_ref("x.png", "mask")])
    assert [(r.name, r.slot) for r in refs] == [("x.png", "mask")]


def test_more_files_than_slots_is_refused() -> None:
    with pytest.raises(RefusedError, match="takes 1 image"):
        assign_slots(parse("img2img a cat").spec, [_ref("a.png"), _ref("b.png")])
