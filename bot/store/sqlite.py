"""`SqliteJobStore`: every store port of `bot.ports` on one SQLite file, called from asyncio.

Each method queues its work (a function of `bot.store.jobs`, `images`, `settings`, `claims` or
`operators`) on the store's one worker thread (`bot.store.worker`), so the event loop never
waits on disk and the connection is only ever used by the thread that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal, Self, TypeVar

from bot.errors import ConfigError, StorageError, StorageLostError
from bot.store import claims, jobs, leases, operators, settings, shared_reads
from bot.store import images as image_rows
from bot.store.jobs import query_sql
from bot.store.schema import Database, storage_failure, transaction
from bot.store.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
    from pathlib import Path
    from types import TracebackType

    from bot.model import Conversation, Job, Platform
    from bot.ports import (
        Admission,
        DayCount,
        JobQuery,
        JobStore,
        Posted,
        Replica,
        StoredImage,
        Usage,
    )

log = logging.getLogger("bot.store")

_T = TypeVar("_T")

_CLOSED: Final = "job store is closed"
# How often `wait_lost` looks at the database file when nothing writes (one `stat`).
LOST_CHECK_SECONDS: Final = 5.0


class SqliteJobStore:
    """`bot.ports.JobStore` (every store port) on a SQLite file (or `":memory:"`).

    `start()` opens the file and migrates the schema; `aclose()` closes it; `async with` does
    both. Calls are queued on one worker thread in the order they are made. A call cancelled
    while queued does not run; one cancelled while running still completes (SQLite cannot be
    interrupted halfway through a transaction from here), so a cancelled write may or may not
    have happened.
    """

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._worker: Worker | None = None
        self._db: Database | None = None  # used only on the executor's thread
        self._state: Literal["new", "open", "closed"] = "new"
        self._lost: StorageLostError | None = None
        self._lost_event = asyncio.Event()

    @property
    def path(self) -> str:
        return self._path

    async def wait_lost(self, check_every: float | None = None) -> StorageLostError:
        """Return once the database file is found deleted or replaced: by any call, or by a
        look at the file every `check_every` seconds (`LOST_CHECK_SECONDS`) while nothing
        writes. Nothing written from then on would last, so the process should stop (`sdbot
        run` does)."""
        while self._lost is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost_event.wait(), check_every or LOST_CHECK_SECONDS)
            if self._lost is None and self._state == "open":
                with contextlib.suppress(StorageLostError):
                    await self._call(lambda db: db.check_file())
        return self._lost

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("a job store starts once" if self._state == "open" else _CLOSED)
        self._state = "open"
        self._worker = Worker(self._group)
        try:
            await self._worker.submit(self._open_db)
        except sqlite3.Error as exc:
            await self.aclose()
            raise ConfigError(f"cannot open the job database {self._path}: {exc}") from exc
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Close the database; idempotent. Calls already queued finish first."""
        if self._state == "closed":
            return
        self._state = "closed"
        worker, self._worker = self._worker, None
        if worker is None:
            return
        closing = worker.submit(self._close_db)
        worker.stop()
        # Shielded: the close must run even when this await is cancelled.
        await asyncio.shield(closing)

    @contextlib.contextmanager
    def _group(self) -> Iterator[None]:
        """A group commit on the worker thread (see `_Worker`)."""
        if self._db is None:
            raise RuntimeError(_CLOSED)
        with transaction(self._db.conn):
            yield

    # `_db` is set and cleared on the worker only, so a close queued behind the open sees it.
    def _open_db(self) -> None:
        self._db = Database.open(self._path)

    def _close_db(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, work: Callable[[Database], _T], *, urgent: bool = False) -> _T:
        """Run `work` on the worker thread (in call order; `urgent` calls go first)."""
        if self._state != "open" or self._worker is None:
            raise RuntimeError(_CLOSED if self._state == "closed" else "job store not started")

        def on_worker() -> _T:
            if self._db is None:  # the open failed or a close overtook this call
                raise RuntimeError(_CLOSED)
            return work(self._db)

        return await self._outcome(self._worker.submit(on_worker, urgent=urgent))  # type: ignore[arg-type]

    async def _outcome(self, call: asyncio.Future[_T]) -> _T:
        """The result of a call on the worker; a lost or failing database noted and named."""
        try:
            return await call
        except StorageLostError as exc:
            if self._lost is None:
                log.critical("job database %s was deleted or replaced; refusing writes", self._path)
                self._lost = exc
                self._lost_event.set()
            raise
        except (sqlite3.Error, OSError) as exc:
            if storage_failure(exc):
                raise StorageError(f"job database {self._path}: {exc}") from exc
            raise

    async def insert(
        self,
        job: Job,
        inputs: Sequence[StoredImage] = (),
        admission: Admission | None = None,
        *,
        owner: str | None = None,
        ttl: float = 0.0,
        claim: str | None = None,
    ) -> None:
        """Commit a new job row and its inputs in one transaction; `KeyError` if the id is taken.

        With `admission`, refuse (`AdmissionRefused`) a job over its user's limits, checked in
        the same transaction. With `owner`, the job is born under its lease for `ttl` seconds.
        With `claim`, the event's claim goes in the same transaction (`EventClaimed` if taken).
        """
        if self._state != "open" or self._worker is None:
            raise RuntimeError(_CLOSED if self._state == "closed" else "job store not started")
        now = datetime.now(UTC)
        until = None if owner is None else now + timedelta(seconds=ttl)
        new = jobs.NewJob(job, tuple(inputs), admission, owner, until, claim, now)
        await self._outcome(self._worker.submit_group(self._insert_group, new))

    def _insert_group(self, group: list[jobs.NewJob]) -> list[BaseException | None]:
        """The inserts queued together, on the worker (`Worker.submit_group`)."""
        if self._db is None:  # the open failed or a close overtook these calls
            return [RuntimeError(_CLOSED)] * len(group)
        return jobs.insert_group(self._db, group)

    async def save(self, job: Job) -> Job:
        """Write every field of an existing job, if nobody else wrote it since `job` was read.

        Returns the job as saved (its next `version`). `JobChanged` when the row's version is
        not `job.version` (read it again and decide), `KeyError` if there is no such job.
        """
        return await self._call(lambda db: jobs.save(db, job))

    async def get(self, job_id: str) -> Job | None:
        return await self._call(lambda db: jobs.get(db, job_id))

    async def find(self, platform: Platform, server: str, prefix: str) -> Sequence[Job]:
        """Jobs of one server whose id starts with `prefix`, by id, at most `FIND_LIMIT`."""
        return await self._call(lambda db: jobs.find(db, platform, server, prefix))

    async def query(self, query: JobQuery) -> Sequence[Job]:
        """Jobs of `query`'s server matching every filter given, newest first.

        `since` is inclusive and `until` exclusive; both must be timezone-aware.
        """
        sql, params = query_sql(query)
        return await self._call(lambda db: jobs.query(db, sql, params))

    async def unfinished(self) -> Sequence[Job]:
        """Jobs not terminal or not yet delivered, of every server, oldest first."""
        return await self._call(lambda db: jobs.unfinished(db))

    async def latest_in_thread(
        self, platform: Platform, server: str, thread: Conversation
    ) -> Job | None:
        """The newest job whose messages go to `thread` (channel and thread both equal)."""
        return await self._call(lambda db: jobs.latest_in_thread(db, platform, server, thread))

    async def by_message(self, platform: Platform, server: str, message: str) -> Job | None:
        """The job whose status or result message has this id (the newest, if several do)."""
        return await self._call(lambda db: jobs.by_message(db, platform, server, message))

    async def put_images(
        self, job_id: str, images: Sequence[StoredImage], *, fence: int | None = None
    ) -> None:
        """Store images, replacing the job's earlier images of the same slots.

        Within a slot the images keep the given order. `KeyError` if there is no such job;
        with `fence`, `LeaseLost` if the job's lease has another one.
        """
        stored = tuple(images)
        await self._call(lambda db: image_rows.put_images(db, job_id, stored, fence))

    async def images(self, job_id: str, slot: str | None = None) -> Sequence[StoredImage]:
        """A job's images (or one slot's), ordered by slot then position."""
        return await self._call(lambda db: image_rows.images(db, job_id, slot))

    async def delete_images(self, job_id: str) -> None:
        await self._call(lambda db: image_rows.delete_images(db, job_id))

    async def recent_durations(self, endpoint: str, limit: int = 20) -> Sequence[float]:
        """Run times (finished − started, seconds) of the latest succeeded jobs, newest first."""
        return await self._call(lambda db: jobs.recent_durations(db, endpoint, limit))

    async def expire_images(self, before: datetime, limit: int = 500) -> Sequence[str]:
        """Delete the images of up to `limit` jobs created before `before`; return their ids.

        Job rows stay, marked `results_expired` when they had results.
        """
        return await self._call(lambda db: image_rows.expire_images(db, before, limit))

    async def claim(self, key: str) -> bool:
        """Record a platform event as acted on: True the first time `key` is claimed."""
        now = datetime.now(UTC)
        return await self._call(lambda db: claims.claim(db, key, now), urgent=True)

    async def expire_claims(self, before: datetime) -> int:
        """Forget claims made before `before` (platforms stop retrying long before)."""
        return await self._call(lambda db: claims.expire_claims(db, before))

    # -- Ownership (`JobLeases`, `LeaderLeases`, `Replicas`) ---------------------------------
    # Lease times come from this machine's clock, which is the database's: one process owns
    # the file, so at start every lease found was left by a process that has stopped.

    async def claim_jobs(
        self,
        owner: str,
        ttl: float,
        limit: int,
        platforms: Collection[Platform],
        *,
        own: bool = False,
    ) -> Sequence[Job]:
        """Take up to `limit` unfinished jobs of `platforms` whose lease is free or expired
        (with `own`, at start, every one), oldest first, each with its next fence."""
        now = datetime.now(UTC)
        until = now + timedelta(seconds=ttl)
        names = list(platforms)
        return await self._call(
            lambda db: leases.claim_jobs(db, owner, until, now, limit, names, own)
        )

    async def claim_job(self, job_id: str, owner: str, ttl: float) -> Job | None:
        """Take one unfinished job unless another owner holds a live lease on it."""
        now = datetime.now(UTC)
        until = now + timedelta(seconds=ttl)
        return await self._call(lambda db: leases.claim_job(db, job_id, owner, until, now))

    async def renew_jobs(self, owner: str, fences: Mapping[str, int], ttl: float) -> set[str]:
        """Extend the leases `owner` holds with these fences; return the ids extended."""
        until = datetime.now(UTC) + timedelta(seconds=ttl)
        held = dict(fences)
        return await self._call(lambda db: leases.renew_jobs(db, owner, held, until))

    async def release_job(self, job_id: str, owner: str, fence: int) -> None:
        await self._call(lambda db: leases.release_job(db, job_id, owner, fence))

    async def lead(self, name: str, owner: str, ttl: float) -> int | None:
        """Take or extend the named lease; its fence (always granted: one process per file)."""
        now = datetime.now(UTC)
        until = now + timedelta(seconds=ttl)
        return await self._call(lambda db: leases.lead(db, name, owner, until, now))

    async def resign(self, name: str, owner: str) -> None:
        await self._call(lambda db: leases.resign(db, name, owner))

    async def heartbeat(self, replica: str, *, stale_writes: int = 0) -> None:
        now = datetime.now(UTC)
        await self._call(lambda db: leases.heartbeat(db, replica, now, stale_writes))

    async def replicas(self, since: datetime) -> Sequence[Replica]:
        return await self._call(lambda db: leases.replicas(db, since))

    async def ask(self, topic: str, keys: Collection[str]) -> Mapping[str, Posted]:
        if not keys:
            return {}
        now = datetime.now(UTC)
        wanted = list(keys)
        return await self._call(lambda db: shared_reads.ask(db, topic, wanted, now))

    async def wanted(self, topic: str, within: float) -> set[str]:
        since = datetime.now(UTC) - timedelta(seconds=within)
        return await self._call(lambda db: shared_reads.wanted(db, topic, since))

    async def post(self, topic: str, values: Mapping[str, str | None]) -> None:
        if not values:
            return
        now = datetime.now(UTC)
        posted = dict(values)
        await self._call(lambda db: shared_reads.post(db, topic, posted, now))

    async def unask(self, topic: str, keys: Collection[str]) -> None:
        if not keys:
            return
        gone = list(keys)
        await self._call(lambda db: shared_reads.unask(db, topic, gone))

    async def recent(self, topic: str, within: float) -> Mapping[str, Posted]:
        since = datetime.now(UTC) - timedelta(seconds=within)
        return await self._call(lambda db: shared_reads.recent(db, topic, since))

    # -- What `sdbot check` reports --------------------------------------------------------

    @property
    def describe(self) -> str:
        return f"SQLite {self._path}"

    async def schema_version(self) -> int:
        """The schema version of the open database (`PRAGMA user_version`)."""
        return await self._call(
            lambda db: int(db.conn.execute("PRAGMA user_version").fetchone()[0])
        )

    async def settings(self, platform: Platform, server: str, scope: str) -> dict[str, str]:
        """Stored settings of a server (`scope` "") or one of its channels."""
        return await self._call(lambda db: settings.settings(db, platform, server, scope))

    async def put_settings(
        self, platform: Platform, server: str, scope: str, values: Mapping[str, str | None]
    ) -> None:
        """Set settings (a None value removes the key) in one transaction."""
        values = dict(values)
        await self._call(lambda db: settings.put_settings(db, platform, server, scope, values))

    # -- OperatorQueries (`adapters.web`) ----------------------------------------------------

    async def servers(self) -> Sequence[tuple[Platform, str]]:
        """Every (platform, server) with jobs, most recently active first."""
        return await self._call(lambda db: operators.servers(db))

    async def usage(
        self, platform: Platform, server: str, by: Literal["user", "channel"], since: datetime
    ) -> Sequence[Usage]:
        """Jobs and backend run time per user (or per request channel) since `since`."""
        return await self._call(lambda db: operators.usage(db, platform, server, by, since))

    async def failures(
        self, platform: Platform, server: str, since: datetime
    ) -> Sequence[tuple[str, int]]:
        """Failed jobs since `since` grouped by their failure message, commonest first."""
        return await self._call(lambda db: operators.failures(db, platform, server, since))

    async def daily(self, platform: Platform, server: str, since: datetime) -> Sequence[DayCount]:
        """Jobs and failed jobs per UTC day (of creation) since `since`, oldest first."""
        return await self._call(lambda db: operators.daily(db, platform, server, since))

    async def writable(self) -> bool:
        """Whether a write commits now (readiness): False when closed, locked or failing."""
        now = datetime.now(UTC)
        try:
            await self._call(lambda db: operators.probe_write(db, now))
        except (sqlite3.Error, RuntimeError, StorageError) as exc:
            log.warning("job database is not writable: %s", exc)
            return False
        return True


if TYPE_CHECKING:

    def _is_a_job_store(store: SqliteJobStore) -> JobStore:
        # mypy checks here that the class really is a structural `JobStore`.
        return store
