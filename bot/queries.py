"""The queries: `job`, `jobs`, `endpoints`, `models`, `cancel`, `help` and `settings`, answered
at once from the store, the backend and the policy (no job is created).

`Queries.visible_job` is the one way a command, reply or button names a job: a prefix of its id
(or the backend's id), among the jobs the caller may see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot import render
from bot.errors import BackendError, BackendUnavailableError, ParseError, RefusedError
from bot.ids import display_name
from bot.jobs import RESULT_SLOT
from bot.model import JobState
from bot.ports import JobQuery
from bot.views import ResultImage
from commands import BACKEND_JOB_ID, COMMANDS, MODEL_TYPES, Family, help_text
from commands.options import JobsOptions, jobs_options

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bot.catalog import Catalog
    from bot.jobs import JobRunner
    from bot.model import Caller, Job
    from bot.policy import Policy
    from bot.ports import Backend, ImageStore, JobRepo, Responder
    from commands import ParsedCommand

_PAGE = 50  # lines per message when `jobs all=true` lists many
_ALL_CAP = 500  # `jobs all=true` lists at most this many; the rest page with `until=`


class Queries:
    """Answers the query commands."""

    def __init__(
        self,
        *,
        runner: JobRunner,
        store: JobRepo,
        images: ImageStore,
        backend: Backend,
        catalog: Catalog,
        policy: Policy,
    ) -> None:
        self._runner = runner
        self._store = store
        self._images = images
        self._backend = backend
        self._catalog = catalog
        self._policy = policy

    async def answer(self, caller: Caller, parsed: ParsedCommand, responder: Responder) -> None:
        """Answer the query or admin command `parsed` (`Family.QUERY` or `Family.ADMIN`)."""
        handlers: dict[str, Callable[[Caller, ParsedCommand, Responder], Awaitable[None]]] = {
            "job": self._job,
            "jobs": self._jobs,
            "endpoints": self._endpoints,
            "models": self._models,
            "cancel": self._cancel,
            "help": self._help,
            "settings": self._settings,
        }
        await handlers[parsed.spec.name](caller, parsed, responder)

    async def visible_job(self, caller: Caller, prefix: str) -> Job:
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
                f"no bot job you can see ran as backend job `{prefix}` (admins see jobs the "
                "bot did not start, such as the WebUI's, with `job <id>` and `jobs source=cloud`)"
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
        try:
            job = await self.visible_job(caller, job_id)
        except RefusedError:
            if not BACKEND_JOB_ID.fullmatch(job_id.lower()):
                raise
            await self._backend_job(caller, job_id.lower(), responder)
            return
        images = [
            ResultImage(i.name, i.data) for i in await self._images.images(job.id, RESULT_SLOT)
        ]
        await responder.reply(render.job_details(job), images=images)

    async def _backend_job(self, caller: Caller, backend_id: str, responder: Responder) -> None:
        """A backend job no bot job the caller can see ran as (another server's, a WebUI
        user's): the backend's own record and a succeeded one's results. Admins only, as for
        `jobs source=cloud`, which lists the same jobs."""
        if not caller.is_admin:
            raise RefusedError(
                f"no bot job you can see ran as backend job `{backend_id}` (only admins can "
                "look at the backend's own jobs)"
            )
        try:
            row = await self._backend.job(backend_id)
        except BackendError as exc:
            if exc.user_message is None or isinstance(exc, BackendUnavailableError):
                raise
            raise RefusedError(exc.user_message) from None
        if row is None:
            raise RefusedError(f"the backend has no job `{backend_id}`")
        output, note = None, ""
        if row.state == JobState.SUCCEED.value:
            try:
                output = await self._backend.results(backend_id)
            except BackendError as exc:
                note = f"its results could not be read: {exc.user_message or 'refused'}"
        images = [
            ResultImage(f"{backend_id}-{n}.png", data)
            for n, data in enumerate(output.images if output else (), 1)
        ]
        await responder.reply(render.cloud_job_details(row, output, note), images=images)

    async def _jobs(self, caller: Caller, parsed: ParsedCommand, responder: Responder) -> None:
        opts = jobs_options(parsed.options)
        if (opts.user is not None or opts.source == "cloud") and not caller.is_admin:
            raise RefusedError("only admins can list other people's jobs or the backend's history")
        if opts.source == "cloud":
            await self._cloud_jobs(opts, responder)
            return
        if opts.type is not None and opts.type not in COMMANDS:
            names = ", ".join(n for n, c in COMMANDS.items() if c.family is not Family.QUERY)
            raise RefusedError(f"unknown job type `{opts.type}`; types: {names}")
        query = JobQuery(
            platform=caller.platform,
            server=caller.server,
            user=opts.user if opts.user is not None else (None if caller.is_admin else caller.user),
            states=(JobState(opts.status),) if opts.status is not None else (),
            command=opts.type,
            endpoint=opts.endpoint,
            model=opts.model,
            since=opts.since,
            until=opts.until,
            limit=_ALL_CAP + 1 if opts.all else 10,
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

    async def _cloud_jobs(self, opts: JobsOptions, responder: Responder) -> None:
        task_type = opts.type or "img2img"
        limit = 1000 if opts.all else 10
        try:
            rows = await self._backend.history(task_type, 1000 if opts.filtered else limit)
        except BackendError as exc:
            if exc.user_message is None or isinstance(exc, BackendUnavailableError):
                raise
            raise RefusedError(exc.user_message) from None  # what the backend cannot list
        since, until = opts.since, opts.until
        lines = []
        for row in rows:
            if opts.status is not None and row.state != opts.status:
                continue
            if opts.endpoint not in (None, row.endpoint):
                continue
            if opts.model not in (None, row.model):
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
        job = await self.visible_job(caller, job_id)
        await self.cancel_job(job, r)

    async def cancel_job(self, job: Job, r: Responder) -> None:
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


__all__ = ["Queries"]
