"""The core's front door: every command, reply and button from every adapter comes in here.

Adapters translate platform events into `Caller` + text (or an already parsed command) +
attachment references + a `Responder`, and call `handle_text`, `handle_command`, `handle_reply`
or `handle_action`. Image commands become jobs through `JobRunner`; queries are answered at
once. Every refusal is a `UserInputError` answered privately; nothing is sent to the backend
for a request that does not validate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from bot import render
from bot.errors import (
    BackendError,
    BackendUnavailableError,
    OperationalError,
    ParseError,
    RefusedError,
    UserInputError,
)
from bot.ids import display_name
from bot.jobs import RESULT_SLOT, JobRunner
from bot.model import AttachmentRef, Caller, GenerationParams, Job, JobState, Platform
from bot.ports import (
    Backend,
    Clock,
    JobQuery,
    JobStore,
    NullObserver,
    Observer,
    Responder,
    StoredImage,
)
from bot.views import EDIT_FIELDS, Action, ActionKind, ResultImage
from commands import (
    BACKEND_JOB_ID,
    COMMANDS,
    MODEL_TYPES,
    CommandSpec,
    Family,
    ParsedCommand,
    Size,
    Slot,
    build,
    help_text,
    parse,
    parse_reply,
)
from commands.parse import PROMPT_CAP

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from bot.policy import Policy
    from bot.resolve import Catalog

_LOGGER = logging.getLogger(__name__)

_PAGE = 50  # lines per message when `jobs all=true` lists many
_ALL_CAP = 500  # `jobs all=true` lists at most this many; the rest page with `until=`
_SLOT_OPTIONS = tuple(s.value for s in Slot)
# The ways to give the output size; a reply that uses one replaces the base job's others.
_SIZE_OPTIONS = ("size", "width", "height", "scale")


def _pinned_seeds(params: GenerationParams) -> dict[str, str]:
    """The seeds a re-generation keeps: the seed, and the variation seed when it is in use."""
    pinned = {"seed": str(params.seed)}
    if params.subseed_strength > 0:
        pinned["subseed"] = str(params.subseed)
    return pinned


def text_value(value: object) -> str:
    """An option value in the text form the grammar reads back (`Size` → `512x512`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Size):
        return str(value)
    return str(value)


def assign_slots(spec: CommandSpec, refs: Sequence[AttachmentRef]) -> list[AttachmentRef]:
    """Decide which attachment is the image and which the mask / sketch (SPEC §2.3).

    Adapters that know (Discord attachment options, console path keys) set `slot`; otherwise
    the first file is the image and the second the mask or sketch, unless a file name contains
    `mask` or `sketch`, which wins.
    """
    wanted = [a.slot.value for a in spec.attachments]
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


def _with_slot(ref: AttachmentRef, slot: str) -> AttachmentRef:
    return AttachmentRef(ref.name, ref.url, ref.size, ref.content_type, slot)


def _missing_image_message(spec: CommandSpec, slot: str, platform: Platform) -> str:
    how = {
        Platform.CONSOLE: f"give it as `{slot}=PATH`",
        Platform.DISCORD: f"use the command's `{slot}` option",
        Platform.SLACK: "attach the file(s) to a message that mentions the bot",
    }[platform]
    attachment = next(a for a in spec.attachments if a.slot.value == slot)
    return f"{spec.name} needs {slot} ({attachment.help}): {how}"


@dataclass(frozen=True)
class _Base:
    """The job a reply or button works on, with its inputs."""

    job: Job
    inputs: Sequence[StoredImage]


class Dispatcher:
    """Routes commands, replies and actions to jobs and queries."""

    def __init__(
        self,
        *,
        runner: JobRunner,
        store: JobStore,
        backend: Backend,
        catalog: Catalog,
        policy: Policy,
        clock: Clock,
        observer: Observer | None = None,
    ) -> None:
        self._runner = runner
        self._observer = observer or NullObserver()
        self._policy = policy
        self._store = store
        self._backend = backend
        self._catalog = catalog
        self._clock = clock

    # -- entry points ----------------------------------------------------------------------

    async def handle_text(
        self,
        caller: Caller,
        text: str,
        attachments: Sequence[AttachmentRef],
        responder: Responder,
    ) -> Job | None:
        """A command in text form (console, Slack)."""
        try:
            parsed = parse(text, console=caller.platform is Platform.CONSOLE, now=self._clock.now())
        except ParseError as exc:
            self._observer.refused(exc.reason)
            await responder.refuse(str(exc))
            return None
        return await self.handle_command(caller, parsed, attachments, responder)

    async def handle_command(
        self,
        caller: Caller,
        parsed: ParsedCommand,
        attachments: Sequence[AttachmentRef],
        responder: Responder,
    ) -> Job | None:
        """A parsed command (Discord builds these from typed options)."""

        async def work() -> Job | None:
            self._policy.check_access(caller)
            return await self._command(caller, parsed, attachments, responder)

        return await self._answering(responder, parsed.name, work)

    async def handle_reply(
        self,
        caller: Caller,
        text: str,
        attachments: Sequence[AttachmentRef],
        responder: Responder,
        *,
        base_job: str | None = None,
        reply_to: str | None = None,
    ) -> Job | None:
        """A message in a job's thread: a re-generation request (SPEC §3.2), or nothing.

        `base_job` names the base job outright (console `reply <id>`); `reply_to` is the message
        a platform reply points at (Discord). Otherwise the thread's most recent job is the base.
        Messages from anyone but the requester or an admin, `//` comments and messages in
        threads that hold no job are ignored.
        """
        if text.lstrip().startswith("//"):
            return None

        async def work() -> Job | None:
            base = await self._reply_base(caller, base_job, reply_to)
            if base is None:
                return None
            if base.caller.user != caller.user and not caller.is_admin:
                return None
            self._policy.check_access(caller)
            reply = parse_reply(
                text,
                base.command,
                console=caller.platform is Platform.CONSOLE,
                now=self._clock.now(),
            )
            if not (reply.options or reply.prompt or reply.append or reply.again or attachments):
                raise RefusedError(
                    "this reply asks for nothing new, so no job was started: write a new "
                    "prompt, `+ words` to add to it, options such as `steps=30`, or `again` "
                    "for a new seed"
                )
            options = dict(base.options)
            if any(name in reply.options for name in _SIZE_OPTIONS):
                for name in _SIZE_OPTIONS:
                    options.pop(name, None)
            options.update((k, text_value(v)) for k, v in reply.options.items())
            if reply.prompt is not None:
                options["prompt"] = reply.prompt
            elif reply.append:
                current = options.get("prompt", "")
                options["prompt"] = f"{current}, {reply.append}" if current else reply.append
                if len(options["prompt"]) > PROMPT_CAP:
                    # Each `+ words` is checked alone; the prompt they grow is capped here.
                    raise ParseError(
                        f"the prompt would be {len(options['prompt'])} characters long; the "
                        f"limit is {PROMPT_CAP} — send a shorter prompt instead of adding to it"
                    )
            if base.params is not None:
                pinned = _pinned_seeds(base.params).items()
                options.update((k, v) for k, v in pinned if k not in reply.options)
            if reply.again:
                options["seed"] = "-1"
            result_index = reply.options.get("input")
            options.pop("input", None)
            local = self._path_refs(options)
            return await self._regenerate(
                caller,
                base,
                options,
                local + list(attachments),
                responder,
                local=local,
                result_index=result_index if isinstance(result_index, int) else None,
            )

        return await self._answering(responder, "reply", work)

    async def handle_action(
        self,
        caller: Caller,
        action_id: str,
        responder: Responder,
        fields: Mapping[str, str] | None = None,
    ) -> Job | None:
        """A button press or a submitted Edit modal (`fields`), routed by the action id."""
        action = Action.parse(action_id)
        if action is None:
            await responder.refuse("that button is not one of this bot's")
            return None

        async def work() -> Job | None:
            self._policy.check_access(caller)
            job = await self._visible_job(caller, action.job_id)
            return await self._action(caller, action, job, responder, fields or {})

        return await self._answering(responder, action.kind.value, work)

    async def _answering(
        self, responder: Responder, what: str, work: Callable[[], Awaitable[Job | None]]
    ) -> Job | None:
        """Run a request; refusals go back privately, operational failures as one short line."""
        try:
            return await work()
        except UserInputError as exc:
            self._observer.refused(exc.reason)
            await responder.refuse(str(exc))
        except OperationalError as exc:
            _LOGGER.warning("%s failed: %r", what, exc)
            await responder.refuse(f"{what}: {exc.short}; please try again later")
        except Exception:
            # A bug or a failure no layer translated: logged in full, answered in one line.
            _LOGGER.exception("%s failed unexpectedly", what)
            await responder.refuse(f"{what}: {OperationalError.short}; please try again later")
        return None

    async def edit_defaults(self, caller: Caller, job_id: str) -> dict[str, str]:
        """Current values for the Edit modal's fields (`bot.views.EDIT_FIELDS`)."""
        job = await self._visible_job(caller, job_id)
        values = {name: job.options.get(name, "") for name in EDIT_FIELDS}
        if job.params is not None:
            values.update(
                prompt=job.params.prompt,
                negative=job.params.negative,
                strength=f"{job.params.strength:g}",
                seed=str(job.params.seed),
            )
        return values

    # -- commands --------------------------------------------------------------------------

    async def _command(
        self,
        caller: Caller,
        parsed: ParsedCommand,
        attachments: Sequence[AttachmentRef],
        responder: Responder,
    ) -> Job | None:
        spec = parsed.spec
        if spec.family in (Family.GENERATE, Family.INTERROGATE):
            options = {k: text_value(v) for k, v in parsed.options.items()}
            local = self._path_refs(options)
            refs = assign_slots(spec, local + list(attachments))
            have = {r.slot for r in refs}
            for attachment in spec.attachments:
                if attachment.required and attachment.slot.value not in have:
                    raise RefusedError(
                        _missing_image_message(spec, attachment.slot.value, caller.platform)
                    )
            inputs = await self._read_local(caller, spec.name, options, refs, local)
            remote = [r for r in refs if r.slot not in {i.slot for i in inputs}]
            return await self._runner.accept(
                caller, spec.name, options, remote, responder, inputs=inputs
            )
        handler = {
            "job": self._job,
            "jobs": self._jobs,
            "endpoints": self._endpoints,
            "models": self._models,
            "cancel": self._cancel,
            "help": self._help,
            "settings": self._settings,
        }[spec.name]
        await handler(caller, parsed, responder)
        return None

    async def _read_local(
        self,
        caller: Caller,
        command: str,
        options: Mapping[str, str],
        refs: Sequence[AttachmentRef],
        local: Sequence[AttachmentRef],
        inherited: Sequence[StoredImage] = (),
    ) -> list[StoredImage]:
        """The images at hand before the ack: `inherited` plus the local files among `refs`
        (console paths), read and decoded now, so that a bad file is refused, not a failure."""
        reading = [r for r in refs if r in local]
        if not reading:
            return list(inherited)
        read = await self._runner.read_now(caller, reading)
        slots = {i.slot for i in read}
        inputs = [i for i in inherited if i.slot not in slots] + read
        await self._runner.check_inputs(command, options, inputs)
        return inputs

    @staticmethod
    def _path_refs(options: dict[str, str]) -> list[AttachmentRef]:
        """Console `image=PATH` style options become attachments the console adapter reads."""
        refs = []
        for slot in _SLOT_OPTIONS:
            path = options.pop(slot, None)
            if path is not None:
                refs.append(AttachmentRef(path.rsplit("/", 1)[-1], path, slot=slot))
        return refs

    async def _visible_job(self, caller: Caller, prefix: str) -> Job:
        """The one job `prefix` names that the caller may see (own jobs; admins: the server's)."""
        prefix = prefix.lower()
        if BACKEND_JOB_ID.fullmatch(prefix):
            # A backend's id from `jobs source=cloud`: the bot job that ran as it.
            query = JobQuery(caller.platform, caller.server, backend_id=prefix, limit=2)
            found = list(await self._store.query(query))
        else:
            found = list(await self._store.find(caller.platform, caller.server, prefix))
        if not caller.is_admin:
            found = [j for j in found if j.caller.user == caller.user]
        if not found and BACKEND_JOB_ID.fullmatch(prefix):
            raise RefusedError(
                f"no bot job you can see ran as backend job `{prefix}` (jobs the bot did not "
                "start, such as the WebUI's, are only in `jobs source=cloud`)"
            )
        if not found:
            raise RefusedError(f"no job `{prefix}` among the jobs you can see")
        exact = [j for j in found if j.id == prefix]
        if exact:
            return exact[0]
        if len(found) > 1:
            names = ", ".join(f"`{j.id}`" for j in found)
            raise RefusedError(f"`{prefix}` matches several jobs ({names}); give more characters")
        return found[0]

    async def _job(self, caller: Caller, parsed: ParsedCommand, responder: Responder) -> None:
        job_id = parsed.options.get("id")
        if not isinstance(job_id, str):
            raise ParseError("which job? `job <id>` (the id or its first 4 characters)")
        job = await self._visible_job(caller, job_id)
        images = [
            ResultImage(i.name, i.data) for i in await self._store.images(job.id, RESULT_SLOT)
        ]
        await responder.reply(render.job_details(job), images=images)

    async def _jobs(self, caller: Caller, parsed: ParsedCommand, responder: Responder) -> None:
        opts = parsed.options
        user = opts.get("user")
        if (user is not None or opts.get("source") == "cloud") and not caller.is_admin:
            raise RefusedError("only admins can list other people's jobs or the backend's history")
        if opts.get("source") == "cloud":
            await self._cloud_jobs(parsed, responder)
            return
        command = opts.get("type")
        if command is not None and command not in COMMANDS:
            names = ", ".join(n for n, c in COMMANDS.items() if c.family is not Family.QUERY)
            raise RefusedError(f"unknown job type `{command}`; types: {names}")
        status = opts.get("status")
        query = JobQuery(
            platform=caller.platform,
            server=caller.server,
            user=str(user) if user is not None else (None if caller.is_admin else caller.user),
            states=(JobState(status),) if isinstance(status, str) else (),
            command=str(command) if command is not None else None,
            endpoint=_opt_str(opts, "endpoint"),
            model=_opt_str(opts, "model"),
            since=_opt_time(opts, "since"),
            until=_opt_time(opts, "until"),
            limit=_ALL_CAP + 1 if opts.get("all") is True else 10,
        )
        jobs = list(await self._store.query(query))
        if not jobs:
            await responder.reply("no jobs match", private=True)
            return
        lines = [display_name(j) for j in jobs[:_ALL_CAP]]
        if len(jobs) > _ALL_CAP:
            # Paging by time: the next page is everything created before the last one shown.
            older = jobs[_ALL_CAP - 1].created_at.isoformat(timespec="microseconds")
            lines.append(
                f"… showing the newest {_ALL_CAP}; for older ones, send the same command "
                f"with `until={older}`"
            )
        for start in range(0, len(lines), _PAGE):
            await responder.reply("\n".join(lines[start : start + _PAGE]), private=True)

    async def _cloud_jobs(self, parsed: ParsedCommand, responder: Responder) -> None:
        opts = parsed.options
        task_type = str(opts.get("type") or "img2img")
        limit = 1000 if opts.get("all") is True else 10
        try:
            rows = await self._backend.history(task_type, limit if not _has_filters(opts) else 1000)
        except BackendError as exc:
            if exc.user_message is None or isinstance(exc, BackendUnavailableError):
                raise
            raise RefusedError(exc.user_message) from None  # what the backend cannot list
        since, until = _opt_time(opts, "since"), _opt_time(opts, "until")
        lines = []
        for row in rows:
            if isinstance(opts.get("status"), str) and row.state != opts["status"]:
                continue
            if _opt_str(opts, "endpoint") not in (None, row.endpoint):
                continue
            if _opt_str(opts, "model") not in (None, row.model):
                continue
            if since and (row.created_at is None or row.created_at < since):
                continue
            if until and (row.created_at is None or row.created_at >= until):
                continue
            when = row.created_at.strftime("%Y-%m-%d %H:%M:%S") if row.created_at else "?"
            lines.append(f"{when} → {row.task_type} → {row.state} → {row.backend_id}")
            if len(lines) >= limit:
                break
        if not lines:
            await responder.reply("no backend jobs match", private=True)
            return
        for start in range(0, len(lines), _PAGE):
            await responder.reply("\n".join(lines[start : start + _PAGE]), private=True)

    async def _endpoints(self, caller: Caller, parsed: ParsedCommand, r: Responder) -> None:
        self._catalog.invalidate()
        await r.reply(render.endpoint_lines(await self._catalog.endpoints()))

    async def _models(self, caller: Caller, parsed: ParsedCommand, r: Responder) -> None:
        kind = parsed.options.get("type")
        esd_type: str | None = None
        if isinstance(kind, str):
            lowered = kind.lower().rstrip("s")
            known = {k.rstrip("s"): v for k, v in MODEL_TYPES.items()}
            known.update({v.lower().rstrip("s"): v for v in MODEL_TYPES.values()})
            if lowered not in known:
                raise RefusedError(f"unknown model type `{kind}`; types: {', '.join(MODEL_TYPES)}")
            esd_type = known[lowered]
        await r.reply(render.model_lines(await self._backend.models(esd_type)))

    async def _cancel(self, caller: Caller, parsed: ParsedCommand, r: Responder) -> None:
        job_id = parsed.options.get("id")
        if not isinstance(job_id, str):
            raise ParseError("which job? `cancel <id>`")
        job = await self._visible_job(caller, job_id)
        await self._cancel_job(job, r)

    async def _cancel_job(self, job: Job, r: Responder) -> None:
        if job.state.terminal:
            if job.state is JobState.CANCELLED:
                raise RefusedError(f"job `{job.id}` was already cancelled")
            raise RefusedError(f"job `{job.id}` has already finished ({job.state.value})")
        was_started = job.backend_id is not None
        job = await self._runner.cancel(job)
        if job.state is not JobState.CANCELLED:
            # It ended before the cancel was recorded: say what really happens.
            outcome = "its result is being posted" if job.state is JobState.SUCCEED else ""
            raise RefusedError(
                f"job `{job.id}` had already finished ({job.state.value}); {outcome}".rstrip("; ")
            )
        note = (
            " It had already been sent to the endpoint, which may still run it."
            if was_started
            else ""
        )
        await r.reply(f"job `{job.id}` cancelled; its result will not be posted.{note}")

    async def _help(self, caller: Caller, parsed: ParsedCommand, r: Responder) -> None:
        command = parsed.options.get("command")
        await r.reply(help_text(str(command) if command else None), private=True)

    async def _settings(self, caller: Caller, parsed: ParsedCommand, r: Responder) -> None:
        if not parsed.options:
            await r.reply(await self._policy.describe(caller), private=True)
            return
        await r.reply(await self._policy.update(caller, parsed.options), private=True)

    # -- replies and actions ---------------------------------------------------------------

    async def _reply_base(
        self, caller: Caller, base_job: str | None, reply_to: str | None
    ) -> Job | None:
        if base_job is not None:
            return await self._visible_job(caller, base_job)
        if reply_to is not None:
            job = await self._store.by_message(caller.platform, caller.server, reply_to)
            if job is not None:
                return job
        return await self._store.latest_in_thread(
            caller.platform, caller.server, caller.conversation
        )

    async def _base_inputs(self, base: Job) -> tuple[list[StoredImage], list[AttachmentRef]]:
        """A base job's inputs from the moment it was accepted: the images stored with it, and
        the attachments it has not downloaded yet (a reply may come before it has)."""
        stored = [i for i in await self._store.images(base.id) if i.slot != RESULT_SLOT]
        if base.results_expired:  # retention or Delete removed the inputs for good
            return stored, []
        slots = {i.slot for i in stored}
        return stored, [a for a in base.attachments if a.slot not in slots]

    async def _regenerate(
        self,
        caller: Caller,
        base: Job,
        options: dict[str, str],
        attachments: Sequence[AttachmentRef],
        responder: Responder,
        *,
        local: Sequence[AttachmentRef] = (),
        result_index: int | None = None,
    ) -> Job:
        """A new job in the base job's thread, inheriting its inputs unless replaced."""
        spec = COMMANDS[base.command]
        refs = assign_slots(spec, attachments) if attachments else []
        replaced = {r.slot for r in refs}
        stored, pending = await self._base_inputs(base)
        inherited = [i for i in stored if i.slot not in replaced]
        pending = [a for a in pending if a.slot not in replaced]
        if result_index is not None:
            results = await self._store.images(base.id, RESULT_SLOT)
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
        inputs = await self._read_local(caller, spec.name, options, refs, local, inherited)
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

    async def _action(
        self,
        caller: Caller,
        action: Action,
        job: Job,
        responder: Responder,
        fields: Mapping[str, str],
    ) -> Job | None:
        owner = job.caller.user == caller.user or caller.is_admin
        if action.kind is ActionKind.CANCEL:
            if not owner:
                raise RefusedError("only the requester or an admin can cancel this job")
            await self._cancel_job(job, responder)
            return None
        if action.kind is ActionKind.DELETE:
            if not owner:
                raise RefusedError("only the requester or an admin can delete this result")
            await self._runner.delete_results(job)
            await responder.reply(f"deleted the results of job `{job.id}`", private=True)
            return None
        if action.kind is ActionKind.USE_AS_PROMPT:
            if job.caption is None:
                raise RefusedError(f"job `{job.id}` has no caption")
            inputs = [i for i in await self._store.images(job.id) if i.slot == "image"]
            if not inputs:
                raise RefusedError(f"job `{job.id}`'s image is no longer stored; attach it again")
            return await self._runner.accept(
                caller,
                "img2img",
                {"prompt": job.caption},
                [],
                responder,
                parent=job,
                inputs=inputs,
                thread=job.thread,
            )
        options = dict(job.options)
        if action.kind is ActionKind.REROLL:
            options["seed"] = "-1"
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
        given = {k: v.strip() for k, v in fields.items() if k in EDIT_FIELDS and k not in blank}
        checked = build(job.command, given)
        if job.params is not None:
            options.update(_pinned_seeds(job.params))
        options.update((k, text_value(v)) for k, v in checked.options.items())
        for name in blank:
            if name in ("prompt", "negative"):
                options[name] = ""
            elif name == "seed":
                options["seed"] = "-1"
            else:
                options.pop(name, None)
        return await self._regenerate(caller, job, options, [], responder)


def _opt_str(options: Mapping[str, object], name: str) -> str | None:
    value = options.get(name)
    return value if isinstance(value, str) else None


def _opt_time(options: Mapping[str, object], name: str) -> datetime | None:
    value = options.get(name)
    return value if isinstance(value, datetime) else None


def _has_filters(options: Mapping[str, object]) -> bool:
    return any(
        options.get(k) is not None for k in ("status", "endpoint", "model", "since", "until")
    )


__all__ = ["Dispatcher", "assign_slots", "text_value"]
