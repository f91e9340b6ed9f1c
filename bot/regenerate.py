"""Re-generation (SPEC §3.2): new jobs made from an earlier one, in its thread.

A reply in a job's thread, and the Re-roll, Use as input, Use as prompt and Edit buttons, all
start from a base job: its options, with the seeds it ran with pinned unless the request asks
for new ones, and its input images unless the request replaces them. The rules for what is kept
and what is replaced live here; `bot.dispatcher` only routes to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.errors import ParseError, RefusedError
from bot.inputs import assign_slots, path_refs, read_local
from bot.jobs import RESULT_SLOT
from bot.ports import StoredImage
from bot.views import EDIT_FIELDS, ActionKind
from commands import COMMANDS, OptionValue, build, parse_reply
from commands.options import given, job_options, text_form
from commands.parse import PROMPT_CAP

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from bot.jobs import JobRunner
    from bot.model import AttachmentRef, Caller, GenerationParams, Job
    from bot.ports import Clock, ImageStore, JobRepo, Responder
    from bot.views import Action

# The ways to give the output size; a reply that uses one replaces the base job's others.
_SIZE_OPTIONS = ("size", "width", "height", "scale")


def _pinned_seeds(params: GenerationParams) -> dict[str, OptionValue]:
    """The seeds a re-generation keeps: the seed, and the variation seed when it is in use."""
    pinned: dict[str, OptionValue] = {"seed": params.seed}
    if params.subseed_strength > 0:
        pinned["subseed"] = params.subseed
    return pinned


class Regenerator:
    """Makes new jobs from a base job: thread replies and the result's buttons."""

    def __init__(
        self, *, runner: JobRunner, store: JobRepo, images: ImageStore, clock: Clock
    ) -> None:
        self._runner = runner
        self._store = store
        self._images = images
        self._clock = clock

    async def reply_base(self, caller: Caller, reply_to: str | None) -> Job | None:
        """The job a thread message works on: the one `reply_to` (the message a platform reply
        points at) belongs to, else the thread's most recent job; None in a thread without one."""
        if reply_to is not None:
            job = await self._store.by_message(caller.platform, caller.server, reply_to)
            if job is not None:
                return job
        return await self._store.latest_in_thread(
            caller.platform, caller.server, caller.conversation
        )

    async def reply(
        self,
        caller: Caller,
        base: Job,
        text: str,
        attachments: Sequence[AttachmentRef],
        responder: Responder,
        *,
        local_files: bool,
    ) -> Job:
        """A re-generation request written in `base`'s thread; `local_files`: the platform's
        users name files on this machine (`image=PATH`)."""
        reply = parse_reply(text, base.command, console=local_files, now=self._clock.now())
        if not (reply.options or reply.prompt or reply.append or reply.again or attachments):
            raise RefusedError(
                "this reply asks for nothing new, so no job was started: write a new "
                "prompt, `+ words` to add to it, options such as `steps=30`, or `again` "
                "for a new seed"
            )
        options = given(base.options)
        if any(name in reply.options for name in _SIZE_OPTIONS):
            for name in _SIZE_OPTIONS:
                options.pop(name, None)
        options.update(reply.options)
        if reply.prompt is not None:
            options["prompt"] = reply.prompt
        elif reply.append:
            current = str(options.get("prompt", ""))
            prompt = f"{current}, {reply.append}" if current else reply.append
            if len(prompt) > PROMPT_CAP:
                # Each `+ words` is checked alone; the prompt they grow is capped here.
                raise ParseError(
                    f"the prompt would be {len(prompt)} characters long; the "
                    f"limit is {PROMPT_CAP} — send a shorter prompt instead of adding to it"
                )
            options["prompt"] = prompt
        if base.params is not None:
            pinned = _pinned_seeds(base.params).items()
            options.update((k, v) for k, v in pinned if k not in reply.options)
        if reply.again:
            options["seed"] = -1
        result_index = reply.options.get("input")
        options.pop("input", None)
        local = path_refs(options)
        return await self._regenerate(
            caller,
            base,
            options,
            local + list(attachments),
            responder,
            local=local,
            result_index=result_index if isinstance(result_index, int) else None,
        )

    async def action(
        self,
        caller: Caller,
        action: Action,
        job: Job,
        responder: Responder,
        fields: Mapping[str, str],
    ) -> Job:
        """Re-roll, Use as input, Use as prompt, or a submitted Edit modal (`fields`)."""
        if action.kind is ActionKind.USE_AS_PROMPT:
            if job.caption is None:
                raise RefusedError(f"job `{job.id}` has no caption")
            inputs = [i for i in await self._images.images(job.id) if i.slot == "image"]
            if not inputs:
                raise RefusedError(f"job `{job.id}`'s image is no longer stored; attach it again")
            return await self._runner.accept(
                caller,
                "img2img",
                job_options("img2img", {"prompt": job.caption}),
                [],
                responder,
                parent=job,
                inputs=inputs,
                thread=job.thread,
            )
        options = given(job.options)
        if action.kind is ActionKind.REROLL:
            options["seed"] = -1
            return await self._regenerate(caller, job, options, [], responder)
        if action.kind is ActionKind.USE_AS_INPUT:
            if job.params is not None:
                options.update(_pinned_seeds(job.params))
            return await self._regenerate(
                caller, job, options, [], responder, result_index=action.index or 1
            )
        # Edit: the modal's fields override the job's options, validated like typed options.
        # A field left blank means: empty prompt / negative, a new random seed, the default
        # strength.
        blank = {k for k in EDIT_FIELDS if k in fields and not fields[k].strip()}
        written = {k: v.strip() for k, v in fields.items() if k in EDIT_FIELDS and k not in blank}
        checked = build(job.command, written)
        if job.params is not None:
            options.update(_pinned_seeds(job.params))
        options.update(checked.options)
        for name in blank:
            if name in ("prompt", "negative"):
                options[name] = ""
            elif name == "seed":
                options["seed"] = -1
            else:
                options.pop(name, None)
        return await self._regenerate(caller, job, options, [], responder)

    @staticmethod
    def edit_defaults(job: Job) -> dict[str, str]:
        """Current values for the Edit modal's fields (`bot.views.EDIT_FIELDS`)."""
        current = given(job.options)
        values = {name: text_form(current[name]) if name in current else "" for name in EDIT_FIELDS}
        if job.params is not None:
            values.update(
                prompt=job.params.prompt,
                negative=job.params.negative,
                strength=f"{job.params.strength:g}",
                seed=str(job.params.seed),
            )
        return values

    async def _base_inputs(self, base: Job) -> tuple[list[StoredImage], list[AttachmentRef]]:
        """A base job's inputs from the moment it was accepted: the images stored with it, and
        the attachments it has not downloaded yet (a reply may come before it has)."""
        stored = [i for i in await self._images.images(base.id) if i.slot != RESULT_SLOT]
        if base.results_expired:  # retention or Delete removed the inputs for good
            return stored, []
        slots = {i.slot for i in stored}
        return stored, [a for a in base.attachments if a.slot not in slots]

    async def _regenerate(
        self,
        caller: Caller,
        base: Job,
        values: dict[str, OptionValue],
        attachments: Sequence[AttachmentRef],
        responder: Responder,
        *,
        local: Sequence[AttachmentRef] = (),
        result_index: int | None = None,
    ) -> Job:
        """A new job in the base job's thread, inheriting its inputs unless replaced."""
        spec = COMMANDS[base.command]
        options = job_options(spec.name, values)
        refs = assign_slots(spec, attachments) if attachments else []
        replaced = {r.slot for r in refs}
        stored, pending = await self._base_inputs(base)
        inherited = [i for i in stored if i.slot not in replaced]
        pending = [a for a in pending if a.slot not in replaced]
        if result_index is not None:
            results = await self._images.images(base.id, RESULT_SLOT)
            if not results:
                why = " (they have expired)" if base.results_expired else ""
                if not base.state.terminal:
                    why = f" yet (it is {base.state.value})"
                raise RefusedError(f"job `{base.id}` has no stored result images{why}")
            if not 1 <= result_index <= len(results):
                raise RefusedError(
                    f"job `{base.id}` has {len(results)} result image(s); "
                    f"input=result:{result_index} is not one of them"
                )
            chosen = results[result_index - 1]
            inherited = [i for i in inherited if i.slot != "image"]
            inherited.append(StoredImage("image", chosen.name, chosen.data))
            refs = [r for r in refs if r.slot != "image"]
            pending = [a for a in pending if a.slot != "image"]
        have = {i.slot for i in inherited} | {r.slot for r in [*refs, *pending]}
        if "image" not in have:
            raise RefusedError(
                f"job `{base.id}`'s input images are no longer stored; attach the image again"
            )
        inputs = await read_local(self._runner, caller, spec.name, options, refs, local, inherited)
        read = {i.slot for i in inputs}
        return await self._runner.accept(
            caller,
            spec.name,
            options,
            [r for r in [*refs, *pending] if r.slot not in read],
            responder,
            parent=base,
            inputs=inputs,
            thread=base.thread,
        )


__all__ = ["Regenerator"]
