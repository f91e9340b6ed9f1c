"""What a request brings with it, made ready for `JobRunner.accept`: attachments assigned to the
command's image slots, and local files (the console's `image=PATH` options) read and checked
before the ack.

New jobs (`bot.dispatcher`) and re-generations (`bot.regenerate`) share these steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.errors import RefusedError
from bot.model import AttachmentRef
from commands import Slot

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bot.jobs import JobRunner
    from bot.model import Caller
    from bot.ports import StoredImage
    from commands import CommandSpec, OptionValue
    from commands.options import JobOptions

_SLOT_OPTIONS = tuple(s.value for s in Slot)


def assign_slots(spec: CommandSpec, refs: Sequence[AttachmentRef]) -> list[AttachmentRef]:
    """Decide which attachment is the image and which the mask / sketch (SPEC §2.3).

    Adapters that know (Discord attachment options, console path keys) set `slot`; otherwise
    the first file is the image and the second the mask or sketch, unless a file name contains
    `mask` or `sketch`, which wins.
    """
    wanted = slots_of(spec)
    if len(refs) == 1 and not refs[0].slot and wanted:
        # The common case (one file, no slot named): the image, unless its name says
        # otherwise. The same decision as below, without building its maps.
        ref, lowered = refs[0], refs[0].name.lower()
        named = next((s for s in ("mask", "sketch") if s in wanted and s in lowered), None)
        return [_with_slot(ref, named or wanted[0])]
    if len(refs) > len(wanted):
        raise RefusedError(
            f"{spec.name} takes {len(wanted)} image(s) ({', '.join(wanted)}), got {len(refs)}"
        )
    fixed = {r.slot: r for r in refs if r.slot}
    loose = [r for r in refs if not r.slot]
    for ref in list(loose):
        lowered = ref.name.lower()
        for slot in ("mask", "sketch"):
            if slot in wanted and slot in lowered and slot not in fixed:
                fixed[slot] = _with_slot(ref, slot)
                loose.remove(ref)
                break
    for slot in wanted:
        if slot not in fixed and loose:
            fixed[slot] = _with_slot(loose.pop(0), slot)
    return [fixed[s] for s in wanted if s in fixed]


def slots_of(spec: CommandSpec) -> tuple[str, ...]:
    """The slots of `spec`'s images, in order (looked up once per command)."""
    slots = _SLOTS.get(spec.name)
    if slots is None:
        slots = _SLOTS[spec.name] = tuple(a.slot.value for a in spec.attachments)
    return slots


# Bounded: one entry per command of the grammar.
_SLOTS: dict[str, tuple[str, ...]] = {}


def _with_slot(ref: AttachmentRef, slot: str) -> AttachmentRef:
    return AttachmentRef(ref.name, ref.url, ref.size, ref.content_type, slot)


def path_refs(options: dict[str, OptionValue]) -> list[AttachmentRef]:
    """Console `image=PATH` style options (taken out of `options`) become attachments the
    console adapter reads."""
    refs = []
    for slot in _SLOT_OPTIONS:
        if slot in options:
            path = str(options.pop(slot))
            refs.append(AttachmentRef(path.rsplit("/", 1)[-1], path, slot=slot))
    return refs


async def read_local(
    runner: JobRunner,
    caller: Caller,
    command: str,
    options: JobOptions,
    refs: Sequence[AttachmentRef],
    local: Sequence[AttachmentRef],
    inherited: Sequence[StoredImage] = (),
) -> list[StoredImage]:
    """The images at hand before the ack: `inherited` plus the local files among `refs`
    (console paths), read and decoded now, so that a bad file is refused, not a failure."""
    reading = [r for r in refs if r in local]
    if not reading:
        return list(inherited)
    read = await runner.read_now(caller, reading)
    slots = {i.slot for i in read}
    inputs = [i for i in inherited if i.slot not in slots] + read
    await runner.check_inputs(command, options, inputs)
    return inputs


__all__ = ["assign_slots", "path_refs", "read_local"]
