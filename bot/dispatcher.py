"""The core's front door: every command, reply and button from every adapter comes in here.

Adapters translate platform events into `Caller` + text (or an already parsed command) +
attachment references + a `Responder`, and call `handle_text`, `handle_command`, `handle_reply`
or `handle_action`. The dispatcher checks access and routes: image commands become jobs through
`JobRunner`, queries go to `bot.queries`, replies and result buttons to `bot.regenerate`. Every
refusal is a `UserInputError` answered privately; nothing is sent to the backend for a request
that does not validate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.errors import OperationalError, RefusedError, UserInputError
from bot.inputs import assign_slots, path_refs, read_local
from bot.logs import Redaction
from bot.ports import EventClaimed, NullObserver, traits_of
from bot.queries import Queries
from bot.regenerate import Regenerator
from bot.views import Action, ActionKind
from commands import Family, GrammarError, parse
from commands.options import job_options

if TYPE_CHECKING:
    from collections.abc import Coroutine, Mapping, Sequence

    from bot.catalog import Catalog
    from bot.jobs import JobRunner
    from bot.model import AttachmentRef, Caller, Job, Platform
    from bot.policy import Policy
    from bot.ports import (
        Backend,
        ChatAdapter,
        Clock,
        ImageStore,
        JobRepo,
        Observer,
        PlatformTraits,
        Responder,
    )
    from commands import CommandSpec, ParsedCommand

_LOGGER = logging.getLogger(__name__)


def _missing_image_message(spec: CommandSpec, slot: str, traits: PlatformTraits) -> str:
    how = traits.attach_hint.format(slot=slot)
    attachment = next(a for a in spec.attachments if a.slot.value == slot)
    return f"{spec.name} needs {slot} ({attachment.help}): {how}"


class Dispatcher:
    """Routes commands, replies and actions to new jobs, queries and re-generations."""

    def __init__(
        self,
        *,
        runner: JobRunner,
        store: JobRepo,
        images: ImageStore,
        backend: Backend,
        catalog: Catalog,
        policy: Policy,
        clock: Clock,
        adapters: Mapping[Platform, ChatAdapter],
        observer: Observer | None = None,
        redaction: Redaction | None = None,
    ) -> None:
        """`adapters`: by platform, for their traits (filled in as adapters are added);
        `redaction`: what no refusal may show (a backend's message can quote anything)."""
        self._runner = runner
        self._redact = redaction or Redaction()
        self._adapters = adapters
        self._observer = observer or NullObserver()
        self._policy = policy
        self._clock = clock
        self._queries = Queries(
            runner=runner,
            store=store,
            images=images,
            backend=backend,
            catalog=catalog,
            policy=policy,
        )
        self._regenerator = Regenerator(runner=runner, store=store, images=images, clock=clock)

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
            parsed = parse(
                text,
                console=traits_of(self._adapters, caller.platform).local_files,
                now=self._clock.now(),
            )
        except GrammarError as exc:
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
        # A coroutine, not a closure: every command of a burst keeps its frames until its
        # ack, and each object they hold is walked by the collector (issue 11).
        work = self._command(caller, parsed, attachments, responder)
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
            if base_job is not None:
                base: Job | None = await self._queries.visible_job(caller, base_job)
            else:
                base = await self._regenerator.reply_base(caller, reply_to)
            if base is None:
                return None
            if base.caller.user != caller.user and not caller.is_admin:
                return None
            self._policy.check_access(caller)
            return await self._regenerator.reply(
                caller,
                base,
                text,
                attachments,
                responder,
                local_files=traits_of(self._adapters, caller.platform).local_files,
            )

        return await self._answering(responder, "reply", work())

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
            job = await self._queries.visible_job(caller, action.job_id)
            return await self._action(caller, action, job, responder, fields or {})

        return await self._answering(responder, action.kind.value, work())

    async def _answering(
        self, responder: Responder, what: str, work: Coroutine[object, None, Job | None]
    ) -> Job | None:
        """Run a request; refusals go back privately, operational failures as one short line."""
        try:
            return await work
        except EventClaimed as exc:
            # A retried or doubly delivered event whose job exists: it was answered already.
            _LOGGER.info("%s: %s; not answered again", what, exc)
        except (UserInputError, GrammarError) as exc:  # the grammar's errors are refusals too
            self._observer.refused(exc.reason)
            await responder.refuse(self._redact(str(exc)))
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
        return self._regenerator.edit_defaults(await self._queries.visible_job(caller, job_id))

    # -- routing ---------------------------------------------------------------------------

    async def _command(
        self,
        caller: Caller,
        parsed: ParsedCommand,
        attachments: Sequence[AttachmentRef],
        responder: Responder,
    ) -> Job | None:
        self._policy.check_access(caller)
        spec = parsed.spec
        if spec.family not in (Family.GENERATE, Family.INTERROGATE):
            await self._queries.answer(caller, parsed, responder)
            return None
        values = dict(parsed.options)
        local = path_refs(values)
        options = job_options(spec.name, values)
        refs = assign_slots(spec, [*local, *attachments])
        have = {r.slot for r in refs}
        for attachment in spec.attachments:
            if attachment.required and attachment.slot.value not in have:
                traits = traits_of(self._adapters, caller.platform)
                raise RefusedError(_missing_image_message(spec, attachment.slot.value, traits))
        if not local:  # nothing to read before the ack (every platform but the console)
            return await self._runner.accept(caller, spec.name, options, refs, responder)
        inputs = await read_local(self._runner, caller, spec.name, options, refs, local)
        remote = [r for r in refs if r.slot not in {i.slot for i in inputs}]
        return await self._runner.accept(
            caller, spec.name, options, remote, responder, inputs=inputs
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
            await self._queries.cancel_job(job, responder)
            return None
        if action.kind is ActionKind.DELETE:
            if not owner:
                raise RefusedError("only the requester or an admin can delete this result")
            await self._runner.delete_results(job)
            await responder.reply(f"deleted the results of job `{job.id}`", private=True)
            return None
        return await self._regenerator.action(caller, action, job, responder, fields)


__all__ = ["Dispatcher"]
