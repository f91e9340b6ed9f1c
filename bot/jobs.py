"""The life of a job, from an accepted request to the posted result (SPEC §3 steps 1–8).

`JobRunner.accept` commits the job's row and only then acknowledges (so a crash after the ack
loses nothing), then starts the job's driver: one tracked task per job that posts the status
message, downloads and validates the inputs, submits, follows the backend through the shared
`Poller`, and delivers. Every step writes the job back to the store first, so `resume()` after
a restart picks each job up where it was, and the `Delivery.POSTING` mark plus the job-id marker
in result messages keep a result from being posted twice.

Each driver holds its job's lease (`bot.leases.JobOwnership`): its writes carry the lease's fence,
it checks the lease before posting anything, and a background task renews the leases, takes the
jobs whose lease expired (another replica stopped, or this process restarted) and stops the
drivers of jobs taken over. A job taken over more than `max_attempts` times is parked as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING

from bot import imaging, render
from bot.errors import (
    BackendError,
    BackendUnavailableError,
    ChatDeliveryError,
    ConversationClosedError,
    OperationalError,
    RefusedError,
    ResultsExpiredError,
    UserInputError,
)
from bot.ids import new_job_id
from bot.leases import CLAIM_BATCH, JobOwnership, NotHeld
from bot.logs import Redaction
from bot.model import (
    AttachmentRef,
    BackendStatus,
    Caller,
    Conversation,
    Delivery,
    InterrogateParams,
    Job,
    JobState,
    Platform,
)
from bot.ports import (
    AdmissionRefused,
    Backend,
    ChatAdapter,
    Clock,
    ImageStore,
    JobChanged,
    JobLeases,
    JobRepo,
    LeaseLost,
    NullObserver,
    Observer,
    PollTarget,
    Replicas,
    Responder,
    StoredImage,
)
from bot.recent import Recent
from bot.retry import RetryPolicy
from bot.tasks import DEFAULT_BACKOFF, stop, supervise
from bot.views import ResultImage, StatusView
from commands.options import (
    GENERATE_DEFAULTS,
    INTERROGATE_DEFAULTS,
    InterrogateOptions,
    JobOptions,
)
from commands.options import or_default as _or

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from bot.config import Config
    from bot.policy import Policy
    from bot.poller import Poller
    from bot.resolve import Resolver

_LOGGER = logging.getLogger(__name__)

RESULT_SLOT = "result"
READ_DEADLINE = 10.0  # seconds to read a job's local input files before the ack
# A result post that failed (and did not land) is tried again five times, about 1, 2, 4, 8 and
# 16 s apart; then the job stays `posting` for the next start.
_POST_RETRY = RetryPolicy(attempts=5, backoff=2.0, max_backoff=32.0)
# Unexpected failures in a row after which a job's driver waits for the next start.
_MAX_RESTARTS = 20
# Writes refused in a row (`JobChanged`) after which the driver backs off as after an error.
_MAX_CONFLICTS = 10
# The claim loop looks for jobs whose lease expired at least this often (takeover time is
# the lease length plus this, at most).
_CLAIM_INTERVAL = 2.0
# Jobs a start takes at once; any beyond are taken by the claim loop as their leases expire.
_RESUME_AT_MOST = 10_000
# An endpoint's recent run times (for the progress estimate of an `inprogress` status) are read
# from the store at most this often, and one read answers every status edit made meanwhile: a
# list scan that sees a thousand jobs start at once asked the store the same question a thousand
# times, and the deliveries of jobs ending then waited behind those queries (issue 16).
_RUN_TIMES_TTL = 10.0
# The driver of a job acknowledged here starts once no other acknowledgement is pending, and at
# the latest this long after its ack (a steady stream of commands can keep one pending).
_START_DEFERRAL = 2.0


class _Driver:
    """What `JobRunner.spawn` keeps for one job's driver across its restarts: the row it was
    claimed with (until the first run), the restarts so far and the fence of its lease. Slots,
    not a closure: one lives per job in flight (issue 11)."""

    __slots__ = ("fence", "job_id", "known", "restarts")

    def __init__(self, job_id: str, known: Job | None) -> None:
        self.job_id = job_id
        self.known = known
        self.restarts = 0
        self.fence: int | None = None


class _PostFailedError(Exception):
    """A result post that failed and did not land: worth another try (`_POST_RETRY`)."""


class JobRunner:
    """Accepts jobs and drives each one to a delivered result."""

    def __init__(
        self,
        *,
        config: Config,
        store: JobRepo,
        images: ImageStore,
        leases: JobLeases,
        replicas: Replicas,
        backend: Backend,
        adapters: Mapping[Platform, ChatAdapter],
        poller: Poller,
        resolver: Resolver,
        policy: Policy,
        clock: Clock,
        backoff: RetryPolicy | None = None,
        decode_budget: int = imaging.DECODE_BUDGET,
        observer: Observer | None = None,
        redaction: Redaction | None = None,
    ) -> None:
        """`redaction`: the configuration's credentials and their shapes, never shown in a
        failure."""
        self._config = config
        self._redact = redaction or Redaction()
        self._observer = observer or NullObserver()
        self._store = store
        self._images = images
        self._backend = backend
        self._adapters = adapters
        self._poller = poller
        self._resolver = resolver
        self._policy = policy
        self._clock = clock
        self._limits = imaging.ImageLimits(config.max_bytes, config.max_pixels)
        # Bounded: one driver per job in flight (`max_in_flight`), removed when it ends.
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Image decoding is CPU work in threads: as many at once as there are cores, so a burst
        # of jobs neither starves the event loop (acks, heartbeats) nor holds 200 decoded
        # pictures in memory at once.
        self._decoding = asyncio.Semaphore(max(1, os.cpu_count() or 1))
        self._memory = imaging.MemoryBudget(decode_budget)
        self._idle = asyncio.Event()
        self._idle.set()
        self._admitting = 0  # accept calls between the cap check and their acknowledgement
        # Jobs acknowledged here whose driver waits for the acknowledgements still pending
        # (`accept`); bounded like `_tasks`, and counted with them in `in_flight`.
        self._waiting: dict[str, Job] = {}
        self._start_timer: asyncio.TimerHandle | None = None
        self._backoff = backoff or DEFAULT_BACKOFF
        self.restarts = 0  # driver restarts after unexpected errors (supervision)
        self.leases = JobOwnership(leases, replicas, config.replica, config.lease_seconds, clock)
        self._keeper: asyncio.Task[None] | None = None
        self.parked = 0  # jobs parked as failed after too many takeovers
        self._run_times = _RunTimes(store, clock)
        # Jobs accepted here whose driver has not posted their status yet (bounded like
        # `_tasks`): the only status posts made without looking for an earlier one.
        self._accepted_here: set[str] = set()

    # -- accepting -------------------------------------------------------------------------

    async def accept(
        self,
        caller: Caller,
        command: str,
        options: JobOptions,
        attachments: Sequence[AttachmentRef],
        responder: Responder,
        *,
        inputs: Sequence[StoredImage] = (),
        parent: Job | None = None,
        thread: Conversation | None = None,
    ) -> Job:
        """The one way a job comes to exist, whatever asked for it (command, reply, button,
        modal, menu): the caller's access, what can be known to fail (names, sizes) and the
        limits (global cap; per-user concurrency and daily quota, checked in the insert's
        transaction) are decided here; then the row (with `inputs`, the images at hand) is
        committed, acknowledged, and driven. `attachments` are downloaded after the ack.

        The job's driver starts once no other acknowledgement is pending (`_START_DEFERRAL` at
        the latest): under a burst, the drivers of jobs acknowledged first would otherwise
        take the event loop from the acknowledgements still to come (issue 11)."""
        started = self._clock.monotonic()
        self._policy.check_access(caller)
        defaults = await self._policy.defaults(caller)
        options = await self._resolver.check(options, defaults)
        self._admitting += 1
        try:
            # Jobs being admitted right now count too, so a burst cannot slip past the cap.
            admission = self._policy.admission(
                caller, self.in_flight + self._admitting - 1, defaults
            )
            while True:
                job = Job(
                    id=new_job_id(),
                    command=command,
                    caller=caller,
                    state=JobState.CREATED,
                    created_at=self._clock.now(),
                    options=options,
                    attachments=tuple(attachments),
                    thread=thread,
                    parent_id=parent.id if parent else None,
                    fence=1,  # born under this replica's lease
                )
                began = self._clock.monotonic()
                try:
                    await self._store.insert(
                        job,
                        inputs,
                        admission,
                        owner=self.leases.owner,
                        ttl=self.leases.ttl,
                        claim=caller.event_key,
                    )
                except KeyError:
                    continue  # 50 random bits collided; draw again
                except AdmissionRefused as refused:
                    raise self._policy.refusal(refused, admission) from None
                break
            self.leases.held_from(job, began)
            try:
                await responder.accepted(job.id)
            except BaseException:
                # No driver here: the lease runs out and a claim takes the job then.
                self.leases.drop(job.id, job.fence)
                raise
            self._observer.acknowledged(self._clock.monotonic() - started)
            self._accepted_here.add(job.id)
            self._defer_start(job)
        finally:
            self._admitting -= 1
            if not self._admitting:
                self._start_waiting()
        return job

    def _defer_start(self, job: Job) -> None:
        """Hold an acknowledged job's driver until `_start_waiting` (see `accept`)."""
        self._waiting[job.id] = job
        self._idle.clear()
        if self._start_timer is None:
            loop = asyncio.get_running_loop()
            self._start_timer = loop.call_later(_START_DEFERRAL, self._start_waiting)

    def _start_waiting(self) -> None:
        """Start the driver of every job acknowledged and held back, in acknowledgement order."""
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        waiting, self._waiting = self._waiting, {}
        for job_id, job in waiting.items():
            self.spawn(job_id, job)

    async def read_now(self, caller: Caller, refs: Sequence[AttachmentRef]) -> list[StoredImage]:
        """Read attachments before the ack (console paths: local files), within a deadline, so
        a file that is missing, not a regular file or unreadable is a refusal, not a failed job."""
        adapter = self._adapters[caller.platform]
        images = []
        for ref in refs:
            try:
                async with asyncio.timeout(READ_DEADLINE):
                    data = await adapter.download(ref, self._config.max_bytes)
            except TimeoutError:
                raise RefusedError(
                    f"reading `{ref.url}` took more than {READ_DEADLINE:g} s; "
                    "give a file on a local disk"
                ) from None
            images.append(StoredImage(ref.slot, ref.name, data))
        return images

    async def check_inputs(
        self, command: str, options: JobOptions, inputs: Sequence[StoredImage]
    ) -> None:
        """Decode the inputs as the job will, before the ack (for inputs at hand)."""
        await self._prepare(command, options, {i.slot: i for i in inputs})

    async def _prepare(
        self, command: str, options: JobOptions, inputs: Mapping[str, StoredImage]
    ) -> imaging.PreparedInputs:
        image = inputs.get("image")
        if image is None:
            raise UserInputError(f"{command} needs an image")
        first = imaging.InputFile(image.name, image.data)
        if isinstance(options, InterrogateOptions):
            async with self._decode_slot([first]):
                return await asyncio.to_thread(imaging.prepare_interrogate, first, self._limits)
        second = inputs.get("sketch" if command == "inpaint-sketch" else "mask")
        files = [first] + ([imaging.InputFile(second.name, second.data)] if second else [])
        async with self._decode_slot(files):
            return await asyncio.to_thread(
                imaging.prepare,
                command,
                first,
                imaging.InputFile(second.name, second.data) if second else None,
                mask_blur=_or(options.mask_blur, GENERATE_DEFAULTS.mask_blur),
                limits=self._limits,
                mask_alpha=_or(options.mask_alpha, GENERATE_DEFAULTS.mask_alpha),
            )

    @contextlib.asynccontextmanager
    async def _decode_slot(self, files: Sequence[imaging.InputFile]) -> AsyncIterator[None]:
        """Decoding is admitted by the memory it will take (from the headers), then by a core:
        a burst of small pictures runs a core each, a few huge ones one after another."""
        cost = imaging.decode_cost(files, self._limits)
        async with self._memory.reserve(cost), self._decoding:
            yield

    def spawn(self, job_id: str, job: Job | None = None) -> None:
        """Start (or restart) the driver of a stored job (`job`: its row as claimed, if at hand).

        The driver first takes the job's lease unless this replica holds it (a job another
        replica drives is left alone). It is supervised: an unexpected exception (a store or
        chat failure the steps do not handle) is logged and the driver starts again from the
        stored row after a back-off, at most `_MAX_RESTARTS` times in a row; then it lets the
        lease expire, so the job is taken again later (counting an attempt).
        """
        running = self._tasks.get(job_id)
        if running is not None and not running.done():
            return
        # A driver that has just ended is still listed until its done callback runs (one
        # turn of the event loop later): the claim loop that stops it and takes its job again
        # (its own lease ran out under it) must start a new one, or the job stays held by this
        # replica, renewed, with no driver (found by tests/replicas).
        driver = _Driver(job_id, job)
        supervised = supervise(
            f"sdbot-job-{job_id}",
            functools.partial(self._run_driver, driver),
            backoff=self._backoff,
            sleep=self._clock.sleep,
            on_restart=functools.partial(self._restarted, driver),
        )
        task = supervised.task
        self._tasks[job_id] = task
        self._idle.clear()
        task.add_done_callback(functools.partial(self._done, driver))

    async def _run_driver(self, driver: _Driver) -> None:
        """One run of a job's driver (`spawn`): take or confirm the lease, then drive."""
        job_id = driver.job_id
        known, driver.known = driver.known, None  # after a restart, the row is read again
        if driver.restarts > _MAX_RESTARTS:
            _LOGGER.error("job %s: giving up; it is taken again once its lease expires", job_id)
            if driver.fence is not None:
                self.leases.drop(job_id, driver.fence)
            return
        owned = await self._owned(job_id, known)
        if owned is None:
            return
        driver.fence = owned.fence
        try:
            with self.leases.posting(job_id, owned.fence):
                await self._drive(owned)
        except LeaseLost as lost:
            if not isinstance(lost, NotHeld):
                self.leases.refused(job_id)
            _LOGGER.info("job %s: another replica drives it now", job_id)
            self.leases.drop(job_id, owned.fence)

    def _restarted(self, driver: _Driver, exc: BaseException) -> None:
        driver.restarts += 1
        self.restarts += 1

    async def _owned(self, job_id: str, known: Job | None) -> Job | None:
        """The job's row under this replica's lease: claimed now unless held already; None
        when another replica holds it or it needs no driver any more."""
        fence = self.leases.fence(job_id)
        if fence is None and self.leases.driven(job_id):
            return None  # found taken over
        if fence is None:
            claimed = await self.leases.claim(job_id)
            if claimed is None:
                # Taken by this replica's own claim loop meanwhile, or by another replica.
                fence = self.leases.fence(job_id)
                if fence is None:
                    return None
            else:
                return await self._check_attempts(claimed)
        job = known if known is not None and known.fence == fence else None
        job = job or await self._store.get(job_id)
        if job is None or job.fence != fence:
            return None
        return await self._check_attempts(job)

    async def _check_attempts(self, job: Job) -> Job:
        """Park a job that keeps stopping its drivers: failed, with a message (then delivered
        as usual); one whose delivery kept stopping them too is given up."""
        limit = self._config.max_attempts
        if job.attempts <= limit:
            return job
        if not job.state.terminal:
            self.parked += 1
            _LOGGER.error("job %s: taken over %d times; parked as failed", job.id, job.attempts)
            return await self._fail(
                job,
                f"the bot stopped {job.attempts} times while running this job, so it was set "
                "aside; try again, or with a smaller image",
            )
        if job.attempts > limit + 1 and job.delivery is not Delivery.DONE:
            _LOGGER.error("job %s: delivery kept failing; given up", job.id)
            return await self._store.save(replace(job, delivery=Delivery.DONE))
        return job

    def _done(self, driver: _Driver, task: asyncio.Task[None]) -> None:
        job_id, fence = driver.job_id, driver.fence
        self._accepted_here.discard(job_id)
        if fence is not None:
            # The job is finished, or left for a later claim: its lease is no longer renewed.
            self.leases.drop(job_id, fence)
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
        if not self._tasks and not self._waiting:
            self._idle.set()

    async def resume(self) -> int:
        """Take every job left unfinished or undelivered (by an earlier run of this replica, or
        a stopped one), start their drivers, and keep leases from then on; returns how many."""
        # One claim: a second would take back what the first took (they are this owner's now).
        jobs = await self.leases.claim_batch(_RESUME_AT_MOST, list(self._adapters), own=True)
        for job in jobs:
            self.spawn(job.id, job)
        resumed = len(jobs)
        if self._keeper is None:
            self._keeper = supervise(
                "sdbot-leases", self._keep, backoff=self._backoff, sleep=self._clock.sleep
            ).task
        return resumed

    async def _keep(self) -> None:
        """Renew this replica's leases (marking those taken over) every third of a lease,
        and take jobs whose lease expired every `_CLAIM_INTERVAL` at most."""
        ttl = self.leases.ttl
        interval = min(_CLAIM_INTERVAL, ttl / 3)
        renewed = self._clock.monotonic()
        while True:
            await self._clock.sleep(interval)
            if self._clock.monotonic() - renewed >= ttl / 3 - interval / 2:
                renewed = self._clock.monotonic()
                for job_id in await self.leases.renew():
                    # Its driver stops at its next step: a write refused for its fence, or
                    # the check before it posts.
                    _LOGGER.warning("job %s: its lease was taken over by another replica", job_id)
            # Batch after batch while full ones come back: the jobs of a replica that stopped
            # holding hundreds are all taken a claim interval after their leases expired.
            room = self._config.max_in_flight - self.in_flight
            while room > 0:
                jobs = await self.leases.claim_batch(min(room, CLAIM_BATCH), list(self._adapters))
                for job in jobs:
                    self._waiting.pop(job.id, None)  # its driver starts now, from this row
                    stale = self._tasks.get(job.id)
                    if stale is not None:  # its lease ran out under it: that driver is stale
                        await stop(stale)
                    _LOGGER.info("job %s: taken over (attempt %d)", job.id, job.attempts)
                    self.spawn(job.id, job)
                if len(jobs) < CLAIM_BATCH:
                    break
                room = self._config.max_in_flight - self.in_flight

    async def wait_idle(self) -> None:
        """Return once no job is being driven."""
        await self._idle.wait()

    @property
    def in_flight(self) -> int:
        """Jobs driven here, or acknowledged here and about to be (`accept`)."""
        return len(self._tasks) + len(self._waiting)

    async def aclose(self) -> None:
        """Stop every driver and let their leases go: their jobs stay in the store and are
        taken at once by another replica, or on the next start."""
        await stop(self._keeper)
        self._keeper = None
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        # Jobs whose driver had not started are let go with the rest (their leases are held).
        self._waiting.clear()
        held = self.leases.holding()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._tasks:
            self._idle.set()
        await self.leases.release_all(held)

    async def cancel(self, job: Job) -> Job:
        """Cancel a job unless it already ended: returns the job as it now is.

        The store decides the race with the driver: whichever of `cancelled` and the backend's
        final state is written first wins (compare-and-set), so a job that reached `succeed`
        first stays succeeded and is delivered, and a cancelled one is never posted.
        """
        while True:
            current = await self._store.get(job.id) or job
            if current.state.terminal:
                return current
            cancelled = replace(
                current,
                state=JobState.CANCELLED,
                finished_at=self._clock.now(),
                delivery=Delivery.DONE,
            )
            try:
                job = await self._store.save(cancelled)
            except JobChanged:
                continue  # the driver wrote meanwhile: look again
            break
        # The driver's next write would fail anyway; stop it now so it does no more work. One
        # not started yet starts from the cancelled row, and ends at once (its lease let go).
        if job.id in self._waiting:
            self._waiting[job.id] = job
        await stop(self._tasks.get(job.id))
        if job.backend_id:
            try:
                await self._backend.cancel(job.backend_id)
            except BackendError as exc:
                _LOGGER.warning("job %s: backend cancel failed: %s", job.id, exc)
        await self._show_status(job)
        return job

    async def delete_results(self, job: Job) -> Job:
        """Remove the bot's result messages and the stored result images (the Delete action)."""
        if job.thread is not None and job.result_messages:
            await self._adapter(job).delete_messages(job.thread, job.result_messages)
        await self._images.delete_images(job.id)
        while True:
            current = await self._store.get(job.id) or job
            try:
                return await self._store.save(
                    replace(current, result_messages=(), result_count=0, results_expired=True)
                )
            except JobChanged:
                continue

    # -- driving ---------------------------------------------------------------------------

    async def _drive(self, job: Job) -> None:
        """Drive the job from its stored row; a write refused because the row changed (a
        cancel) makes it read the row again and carry on from there (`LeaseLost`, the lease
        taken over, ends it)."""
        for _ in range(_MAX_CONFLICTS):
            try:
                await self._drive_row(job)
            except LeaseLost:
                raise
            except JobChanged:
                _LOGGER.info("job %s was changed by another writer; reading it again", job.id)
                job = await self._reread(job)
                continue
            return
        raise RuntimeError(f"job {job.id} kept changing under its driver")

    async def _reread(self, job: Job) -> Job:
        """The job as stored now, still under this driver's lease (else `NotHeld`)."""
        fresh = await self._store.get(job.id)
        if fresh is None or fresh.fence != job.fence:
            raise NotHeld(job.id)
        return fresh

    async def _drive_row(self, job: Job) -> None:
        if job.state is JobState.CANCELLED:
            return
        if job.state.terminal and job.delivery is not Delivery.DONE:
            # Found ended and not delivered (taken over, or resumed after a restart): the driver
            # that read the backend's last word may have stopped before showing it.
            await self._show_status(job)
        try:
            if job.status_message is None and not job.state.terminal:
                job = await self._open_thread(job)
            if not job.state.terminal and (job.backend_id is None or job.started_at is None):
                job = await self._start_when_available(job)
            if not job.state.terminal:
                job = await self._follow(job)
        except (asyncio.CancelledError, JobChanged):
            raise
        except ConversationClosedError as exc:
            await self._closed(job, exc)
            return
        except Exception as exc:
            job = await self._fail(await self._latest(job), _failure_message(job, exc))
        try:
            await self._deliver(job)
        except ConversationClosedError as exc:
            await self._closed(job, exc)

    async def _closed(self, job: Job, exc: ConversationClosedError) -> None:
        """The platform will not let the bot post in the job's conversation: end the job
        with the adapter's message and post nothing more there (the user was told privately)."""
        _LOGGER.warning("job %s: %s", job.id, exc)
        job = await self._latest(job)
        if not job.state.terminal:
            job = await self._fail(job, str(exc))
        await self._store.save(replace(job, delivery=Delivery.DONE))

    async def _latest(self, job: Job) -> Job:
        """The job as stored now: a step that raised may have written it meanwhile."""
        return await self._reread(job)

    def _adapter(self, job: Job) -> ChatAdapter:
        return self._adapters[job.caller.platform]

    async def _open_thread(self, job: Job) -> Job:
        """Post the status message (and open the job's thread). A platform that refuses it
        does not stop the job: it runs, and delivery opens the thread again."""
        await self.leases.ensure(job)
        # Only the driver that accepted the job posts its first status without looking: any
        # other (a takeover, a restart, a retry) may follow one that posted it and stopped
        # before the row said so.
        again = job.id not in self._accepted_here
        self._accepted_here.discard(job.id)
        try:
            posted = await self._adapter(job).open_job_thread(
                job.thread or job.caller.conversation, self._status(job), again=again
            )
        except (ConversationClosedError, LeaseLost):
            raise
        except Exception as exc:
            _LOGGER.warning("job %s: posting the status message failed: %r", job.id, exc)
            return job
        job = replace(job, thread=posted.thread, status_message=posted.message)
        return await self._store.save(job)

    async def _inputs(self, job: Job) -> dict[str, StoredImage]:
        """The job's input images: stored ones, then any attachment still to download."""
        stored = {i.slot: i for i in await self._images.images(job.id) if i.slot != RESULT_SLOT}
        missing = [a for a in job.attachments if a.slot not in stored]
        if missing:
            adapter = self._adapter(job)
            fetched = [
                StoredImage(a.slot, a.name, await adapter.download(a, self._config.max_bytes))
                for a in missing
            ]
            await self._images.put_images(job.id, fetched, fence=job.fence)
            stored.update((i.slot, i) for i in fetched)
        return stored

    async def _submit(self, job: Job) -> Job:
        inputs = await self._inputs(job)

        async def created(backend_id: str) -> None:
            # The backend hands over the new job's id before starting it (`Backend.submit`).
            nonlocal job
            job = replace(job, backend_id=backend_id)
            job = await self._store.save(job)

        prepared = await self._prepare(job.command, job.options, inputs)
        defaults = await self._policy.defaults(job.caller)
        if isinstance(job.options, InterrogateOptions):
            endpoint = await self._resolver.endpoint(
                job.options.endpoint, default=defaults.endpoint, async_only=True
            )
            method = _or(job.options.method, INTERROGATE_DEFAULTS.method)
            iparams = InterrogateParams(method, endpoint.name)
            job = replace(job, interrogate=iparams, endpoint=endpoint.name, notes=prepared.notes)
            job = await self._store.save(job)
            submitted = await self._backend.interrogate(
                job.id, iparams, prepared.init_png, created=created
            )
        else:
            params = await self._resolver.generation(
                job.options, prepared.width, prepared.height, defaults
            )
            job = replace(
                job,
                params=params,
                endpoint=params.endpoint,
                model=params.model,
                notes=prepared.notes,
            )
            job = await self._store.save(job)
            submitted = await self._backend.submit(
                job.id, params, prepared.init_png, prepared.mask_png, created=created
            )
        job = replace(
            job,
            backend_id=submitted.backend_id,
            endpoint=submitted.endpoint,
            started_at=self._clock.now(),
            # Recorded with the start, not by a status read later: a list scan that finds two
            # thousand jobs started would otherwise write two thousand rows at once, and the
            # deliveries of jobs ending then wait behind those writes (issue 16).
            state=JobState.INPROGRESS if submitted.started else job.state,
        )
        job = await self._store.save(job)
        await self._show_status(job, cold_start=submitted.cold_start)
        return job

    async def _start_when_available(self, job: Job) -> Job:
        """Submit the job (or confirm an earlier start). While the backend is unreachable (it
        restarts, a few seconds' outage) wait and try again, until `created_timeout` after the
        job was created."""
        deadline = job.created_at + timedelta(seconds=self._config.created_timeout)
        failures = 0
        while True:
            try:
                if job.backend_id and job.started_at is None:
                    job = await self._confirm_start(job)
                if job.backend_id is None:
                    job = await self._submit(job)
                return job
            except BackendUnavailableError as exc:
                failures += 1
                pause = self._backoff.wait(failures - 1)
                if self._clock.now() + timedelta(seconds=pause) > deadline:
                    raise
                _LOGGER.warning(
                    "job %s: backend unavailable, retrying in %.3g s: %s", job.id, pause, exc
                )
                await self._clock.sleep(pause)
                job = await self._reread(job)
                if job.state.terminal:
                    return job

    async def _confirm_start(self, job: Job) -> Job:
        """The bot stopped between recording the backend id and confirming the start: ask the
        backend before starting anything again (`Backend.submit`)."""
        backend_id = job.backend_id
        assert backend_id is not None
        target = PollTarget(backend_id, job.interrogate is not None, job.created_at)
        with self._poller.watch(target, None) as watch:
            status = await watch.next(self._config.created_timeout)
        if status is None:
            raise BackendUnavailableError("the backend did not say whether the job had started")
        if status.state is not JobState.CREATED:
            job = replace(job, started_at=self._clock.now())
            return await self._store.save(job)
        _LOGGER.info(
            "job %s: backend job %s was never started; submitting again", job.id, job.backend_id
        )
        # The row lets go of the old backend job before it is removed: stopped in between, the
        # bot leaves an unstarted backend job behind, not a row pointing at a deleted one (its
        # next driver would find it lost and fail the job: tests/replicas saw it).
        job = await self._store.save(replace(job, backend_id=None))
        with contextlib.suppress(BackendError):
            await self._backend.cancel(backend_id)
        return job

    async def _follow(self, job: Job) -> Job:
        """Wait for the backend until the job is terminal, editing the status as it goes.

        Deadlines count from what the backend said: `created_timeout` from submission while
        every read said `created`, `job_timeout` from the first read that said otherwise (from
        submission for a job an earlier run saw start). Only a read made after its deadline
        declares a job dead; while its status cannot be read, a job waits."""
        assert job.backend_id is not None
        loop = asyncio.get_running_loop()
        started = job.started_at or job.created_at
        target = PollTarget(job.backend_id, job.interrogate is not None, started)
        # Submission on the loop's clock, which the poller's read times are on too.
        submitted = loop.time() - max(0.0, (self._clock.now() - started).total_seconds())
        last_edit = self._clock.monotonic()
        cold = False
        with self._poller.watch(target, BackendStatus(job.backend_id, job.state)) as watch:
            while not job.state.terminal:
                never_started = job.state is JobState.CREATED and watch.started_at is None
                # A job the backend says waits in its own queue is not stuck (A1111).
                queued = watch.latest is not None and watch.latest.queue_position is not None
                if never_started and not queued:
                    limit = min(self._config.job_timeout, self._config.created_timeout)
                    deadline = submitted + limit
                else:
                    deadline = (watch.started_at or submitted) + self._config.job_timeout
                if watch.read_at is not None and watch.read_at >= deadline:
                    elapsed = watch.read_at - submitted
                    return await self._time_out(job, elapsed, never_started=never_started)
                wait = min(self._config.status_interval, max(0.0, deadline - loop.time()))
                status = await watch.next(
                    wait or self._config.status_interval, wake_on_read_after=deadline
                )
                if status is None:
                    if self._clock.monotonic() - last_edit >= self._config.status_interval:
                        await self._show_status(job, cold_start=cold, live=watch.latest)
                        last_edit = self._clock.monotonic()
                    continue
                cold = status.cold_start
                changed = job
                if status.note and status.note not in job.notes:
                    job = replace(job, notes=(*job.notes, status.note))
                if status.state is not job.state:
                    job = replace(job, state=status.state)
                    if status.state.terminal:
                        job = replace(job, finished_at=self._clock.now())
                    if status.state is JobState.FAILED:
                        job = replace(job, error=status.reason or "the backend gave no reason")
                if job is not changed:
                    job = await self._store.save(job)
                await self._show_status(job, cold_start=cold, live=status)
                last_edit = self._clock.monotonic()
        return job

    async def _time_out(self, job: Job, elapsed: float, *, never_started: bool) -> Job:
        if never_started:
            message = (
                f"the backend never started the job within {render.duration(elapsed)} "
                "(it stayed `created`; Real-time endpoints leave failed jobs there)"
            )
        else:
            message = f"the backend did not finish the job within {render.duration(elapsed)}"
        if job.backend_id:
            with contextlib.suppress(BackendError):
                await self._backend.cancel(job.backend_id)
        return await self._fail(job, message)

    async def _fail(self, job: Job, message: str) -> Job:
        # Failure messages are shown to users and stored: never with a secret or signature.
        message = self._redact(message)
        job = replace(
            job,
            state=JobState.FAILED,
            error=message,
            finished_at=job.finished_at or self._clock.now(),
        )
        job = await self._store.save(job)
        await self._show_status(job)
        return job

    def _status(
        self,
        job: Job,
        *,
        cold_start: bool = False,
        progress: float | None = None,
        live: BackendStatus | None = None,
    ) -> StatusView:
        elapsed = None
        if job.started_at is not None:
            elapsed = (self._clock.now() - job.started_at).total_seconds()
        return render.status_view(
            job, elapsed=elapsed, progress=progress, cold_start=cold_start, live=live
        )

    async def _show_status(
        self, job: Job, *, cold_start: bool = False, live: BackendStatus | None = None
    ) -> None:
        if job.status_message is None or job.thread is None:
            return
        if self.leases.driven(job.id):
            # This replica drives the job: only while it still holds the lease (a replica
            # woken from a pause must not put back a status the new owner has moved past).
            await self.leases.ensure(job)
        progress = None
        measured = live is not None and live.progress is not None
        if job.state is JobState.INPROGRESS and job.endpoint and job.started_at and not measured:
            try:
                recent = await self._run_times.of(job.endpoint)
            except Exception as exc:  # the estimate is a courtesy
                _LOGGER.warning("job %s: no run times for the estimate: %r", job.id, exc)
                recent = []
            elapsed = (self._clock.now() - job.started_at).total_seconds()
            progress = render.estimate(elapsed, recent)
        view = self._status(job, cold_start=cold_start, progress=progress, live=live)
        try:
            await self._adapter(job).edit_status(job.thread, job.status_message, view)
        except LeaseLost:
            raise
        except Exception as exc:
            # A missed status edit is cosmetic; the next state change edits again.
            _LOGGER.warning("job %s: status edit failed: %r", job.id, exc)

    # -- delivering ------------------------------------------------------------------------

    async def _fetch_results(self, job: Job) -> Job:
        backend_id = job.backend_id
        if backend_id is None:  # a damaged row: never crash the driver over it
            return await self._fail(job, "the bot lost track of this job on the backend")
        try:
            output = await self._backend.results(backend_id)
        except ResultsExpiredError:
            await self._backend.refresh(backend_id)
            output = await self._backend.results(backend_id)
        if not output.images and output.caption is None:
            return await self._fail(job, "the backend reported success but returned no images")
        await self._images.put_images(
            job.id,
            [
                StoredImage(RESULT_SLOT, f"{job.id}-{n}.png", data)
                for n, data in enumerate(output.images, start=1)
            ],
            fence=job.fence,
        )
        job = replace(
            job, result_count=len(output.images), infotext=output.infotext, caption=output.caption
        )
        job = await self._store.save(job)
        await self._release(job)  # the results are in the store now
        return job

    async def _release(self, job: Job) -> None:
        """Let the backend drop what it keeps of a finished job (bounded memory and disk)."""
        if job.backend_id is None:
            return
        try:
            await self._backend.release(job.backend_id)
        except Exception as exc:
            _LOGGER.warning("job %s: the backend could not drop its copy: %r", job.id, exc)

    async def _deliver(self, job: Job) -> None:
        """Post the outcome exactly once; a step that fails leaves it for the next start.

        Whatever fails (no thread, the store, the platform), the driver ends normally and the
        row says `pending` or `posting`; a job found `posting` has its thread searched for the
        result (`find_marker`) before anything is posted again.
        """
        if job.state is JobState.CANCELLED or job.delivery is Delivery.DONE:
            return
        if job.state is JobState.FAILED:
            await self._release(job)
        try:
            await self._post_outcome(job)
        except (asyncio.CancelledError, JobChanged, ConversationClosedError):
            raise
        except Exception as exc:
            # The lease is not renewed: the job is taken again once it expires.
            self.leases.drop(job.id, job.fence)
            _LOGGER.error(
                "job %s: delivery failed; left %s, to be taken again once its lease expires: %r",
                job.id,
                job.delivery.value,
                exc,
            )

    async def _post_outcome(self, job: Job) -> None:
        if job.thread is None:
            job = await self._open_thread(job)
        thread = job.thread
        if thread is None:
            raise ChatDeliveryError(f"job {job.id}: the job's thread could not be opened")
        if job.state is JobState.SUCCEED and job.result_count == 0 and job.caption is None:
            try:
                job = await self._fetch_results(job)
            except OperationalError as exc:
                _LOGGER.warning("job %s: fetching results failed: %r", job.id, exc)
                job = await self._fail(await self._latest(job), _operational_message(exc))
        adapter = self._adapter(job)
        images = [
            ResultImage(i.name, i.data) for i in await self._images.images(job.id, RESULT_SLOT)
        ]
        view = render.result_view(job, images, preview=self._backend.name == "local")
        if job.delivery is Delivery.POSTING and await self._posted(job, thread, view.marker):
            return
        job = await self._store.save(replace(job, delivery=Delivery.POSTING))

        async def post_once() -> Sequence[str] | None:
            await self.leases.ensure(job)
            try:
                return await adapter.post_result(thread, view)
            except (ConversationClosedError, LeaseLost):
                raise
            except Exception as exc:
                # The platform may have posted before failing (a 5xx after the work was done).
                if await self._posted(job, thread, view.marker):
                    return None  # it did: recorded as delivered
                raise _PostFailedError(repr(exc)) from exc

        try:
            posted = await _POST_RETRY.run(
                post_once,
                retry_if=lambda exc: isinstance(exc, _PostFailedError),
                what=f"job {job.id}: posting the result",
                sleep=self._clock.sleep,
            )
        except _PostFailedError as exc:
            # Left as POSTING: the next start checks the thread and posts again.
            _LOGGER.error("job %s: giving up posting the result for now: %s", job.id, exc)
            return
        if posted is not None:
            await self._store.save(
                replace(job, delivery=Delivery.DONE, result_messages=tuple(posted))
            )

    async def _posted(self, job: Job, thread: Conversation, marker: str) -> bool:
        """Whether the thread already holds the result (then it is recorded as delivered)."""
        found = await self._adapter(job).find_marker(thread, marker)
        if found:
            await self._store.save(
                replace(job, delivery=Delivery.DONE, result_messages=tuple(found))
            )
        return bool(found)


def _failure_message(job: Job, exc: Exception) -> str:
    """What users read about a step that failed (the full error is logged)."""
    if isinstance(exc, UserInputError):
        return str(exc)
    if isinstance(exc, OperationalError):
        _LOGGER.warning("job %s failed: %r", job.id, exc)
        return _operational_message(exc)
    _LOGGER.error("job %s: unexpected error", job.id, exc_info=exc)
    return "an unexpected error occurred in the bot"


def _operational_message(exc: OperationalError) -> str:
    if isinstance(exc, BackendError) and exc.user_message:
        return exc.user_message
    return exc.short


class _RunTimes:
    """Recent run times per endpoint, read once per `_RUN_TIMES_TTL` and shared by the callers
    meanwhile (those that come while the read runs wait for it). A failed read is not kept."""

    def __init__(self, store: JobRepo, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        # Bounded: one entry per endpoint asked about lately.
        self._reads: Recent[str, tuple[float, asyncio.Future[Sequence[float]]]] = Recent(64)

    async def of(self, endpoint: str) -> Sequence[float]:
        now = self._clock.monotonic()
        cached = self._reads.get(endpoint)
        if cached is None or now - cached[0] >= _RUN_TIMES_TTL:
            read = asyncio.ensure_future(self._store.recent_durations(endpoint))
            cached = self._reads[endpoint] = (now, read)

            def done(finished: asyncio.Future[Sequence[float]], entry: object = cached) -> None:
                failed = finished.cancelled() or finished.exception() is not None
                if failed and self._reads.get(endpoint) is entry:
                    del self._reads[endpoint]

            read.add_done_callback(done)
        # Shielded: one caller cancelled does not cancel the read the others wait for.
        return await asyncio.shield(cached[1])
