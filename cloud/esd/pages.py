"""Where each job in flight sits on ESD's list pages, and which page to read next.

`GET inferences?type=…` lists one task type's jobs newest first, `page_size` at a time, each
page after the `last_evaluated_key` of the one before (`reference/esd-api.md` §2.3, §4.5). That
key is DynamoDB's `ExclusiveStartKey`: a position in the index (task type, `createTime`), and
sent again later it still means "the jobs after this one", while new jobs only ever come in at
the head. So a key once seen is a bookmark: the page read from it holds the same jobs at every
later read (less those deleted since), and reading it costs one request however deep it is.

`Listing` keeps, for one task type, a *segment* per bookmark: its key (None: the head of the
list) and the jobs in flight last found on its page. A new job goes to the head segment. Reading
a segment's page, a job of it that is not on the page moved further down (newer jobs came in at
the head, or ESD cut the page short at DynamoDB's 1 MB): it goes to the segment of the page's
own `last_evaluated_key`, read next in the same round as a walk down the list would, and is
*lost* past the last page or `max_depth` pages from the head (the book reads it on its own).

Which segment a round reads is the one expected to show the most jobs ended since its last
read: its age times its jobs times the rate at which they were seen ending lately (recent reads
weigh more), drawn towards the rate seen over all segments. When jobs end at random the segments
come round in turn, each about every `segments / pages_per_second` seconds, as a full scan
would; when they end in the order they were sent (an Async endpoint runs one job per instance at
a time, queued in order: esd-api.md §10.2) the pages where jobs are ending are read several times
as often as the others. No segment waits longer than `stale_after`.

Pages are read at `pages_per_second` on average (a token bucket holding at most
`max(1, pages_per_second × max(min_interval, 1 s))`), one segment at most every `min_interval`.
A segment never read yet is read in the round that found it, even beyond the tokens (they go
negative and the next round waits for them): the first walk of thousands of jobs answers them
all at once, and then waits as long as its pages take at that rate, as a full scan did.

The rows read are kept per job; each read answers a job once (`answer`): the core takes an
answer for a read made when it asked, and a row reused minutes later must not pass for a fresh
one (`StatusBook._answer`).

Bookkeeping is proportional to the page read (its segment's jobs and its rows) and to the
segments, never to every job in flight at each call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator, Mapping

    from cloud.esd.payloads import EsdJob

# Each read of a segment counts this much less than the one after it in its rate of ended jobs.
_DECAY = 0.5
# A segment's rate starts from the rate seen over all segments, weighing as much as this many
# seconds of its own jobs' reads (so one quiet read does not sink a page, nor one busy read
# raise it far).
_PRIOR_SECONDS = 2.0
_FLOOR = 0.5
# Before any job was seen ending, segments are read by age times jobs (in turn).
_NO_RATE = 1e-6


@dataclass(slots=True, eq=False)
class Segment:
    """The jobs in flight last found on the page that follows `key`."""

    key: str | None  # exclusive_start_key; None: the head of the list
    depth: int  # pages from the head when it was found (1: the head)
    ids: set[str] = field(default_factory=set)
    read_at: float = -math.inf  # monotonic time of its last read; -inf: never read
    # Its jobs seen ending, and the job-seconds its reads covered, each read counting half as
    # much as the one after it: how fast its jobs end lately.
    ended: float = 0.0
    exposure: float = 0.0


@dataclass(slots=True)
class Page:
    """One page as the book read it."""

    rows: Iterable[EsdJob]
    next_key: str | None  # last_evaluated_key; None: the end of the list


@dataclass(slots=True)
class Read:
    """What one page told: the jobs placed here it showed, those whose row turned terminal on
    it, and those now lost (past the last page or `max_depth`)."""

    seen: list[str]
    ended: list[str]
    lost: list[str]


class Listing:
    """One task type's jobs in flight on ESD's list pages; see the module docstring."""

    def __init__(self, *, max_depth: int, now: float) -> None:
        self._max_depth = max_depth
        self._head = Segment(None, 1)
        self._segments: dict[str | None, Segment] = {None: self._head}
        self._lost = Segment(None, 0)  # jobs not on the pages, read on their own; never read
        self._where: dict[str, Segment] = {}
        self.rows: dict[str, EsdJob] = {}  # the last row read of each job placed here
        self._answered: set[str] = set()  # answered since their last read
        self._tokens = 1.0
        self._counted = now  # when `_tokens` was last refilled
        self.looked: float | None = None  # when the book first looked for its jobs on pages
        self.read_once = False  # a page was read (or a leader's post came in)
        self.not_before = -math.inf  # no round before (a follower's or a failed round's wait)
        self._ended = 0  # jobs seen ending, over all reads
        self._exposure = 0.0  # job-seconds those reads covered

    # -- Jobs ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    @property
    def segments(self) -> int:
        """Segments holding jobs to look for."""
        return sum(1 for s in self._segments.values() if s.ids)

    def place(self, job_id: str) -> None:
        """A job in flight to look for, from the head down."""
        if job_id not in self._where:
            self._move(job_id, self._head)

    def remove(self, job_id: str) -> None:
        segment = self._where.pop(job_id, None)
        if segment is not None:
            self._leave(job_id, segment)
        self.rows.pop(job_id, None)
        self._answered.discard(job_id)

    def _move(self, job_id: str, segment: Segment) -> None:
        old = self._where.get(job_id)
        if old is not None:
            self._leave(job_id, old)
        segment.ids.add(job_id)
        self._where[job_id] = segment

    def _leave(self, job_id: str, segment: Segment) -> None:
        segment.ids.discard(job_id)
        if not segment.ids and segment.key is not None and segment is not self._lost:
            self._segments.pop(segment.key, None)

    # -- Answers -------------------------------------------------------------------------------

    def answer(self, ids: Iterable[str]) -> tuple[dict[str, EsdJob], set[str], list[str]]:
        """What the rows say about `ids`, each job once per read of it: the rows not
        answered yet, the jobs that wait for the next read of their page, and those lost
        (read them on their own)."""
        found: dict[str, EsdJob] = {}
        waiting: set[str] = set()
        lost: list[str] = []
        for job_id in ids:
            if self._where.get(job_id) is self._lost:
                lost.append(job_id)
                continue
            row = self.rows.get(job_id)
            if row is None or job_id in self._answered:
                waiting.add(job_id)
            else:
                self._answered.add(job_id)
                found[job_id] = row
        return found, waiting, lost

    def learn(self, found: Mapping[str, EsdJob], missing: Collection[str]) -> None:
        """What another replica's scan posted: rows read (each answers once more), and jobs
        it looked for and did not find (lost)."""
        for job_id, row in found.items():
            if job_id in self._where:
                self.rows[job_id] = row
                self._answered.discard(job_id)
        for job_id in missing:
            if job_id in self._where:
                self._move(job_id, self._lost)
        self.read_once = True

    # -- Rounds --------------------------------------------------------------------------------

    def due(self, now: float, pages_per_second: float, min_interval: float) -> float:
        """When the next round may read a page (≤ `now`: at once)."""
        capacity = max(1.0, pages_per_second * max(min_interval, 1.0))
        self._tokens = min(capacity, self._tokens + (now - self._counted) * pages_per_second)
        self._counted = now
        waiting = [s for s in self._segments.values() if s.ids]
        if not waiting:
            return math.inf
        unread = any(s.read_at == -math.inf for s in waiting)
        if unread and not self.read_once:
            return max(now, self.not_before)  # the first walk
        tokens_at = now if self._has_token() else now + (1 - self._tokens) / pages_per_second
        if not unread:
            tokens_at = max(tokens_at, min(s.read_at for s in waiting) + min_interval)
        return max(tokens_at, self.not_before)

    def choose(
        self, now: float, *, min_interval: float, stale_after: float, read: Collection[Segment]
    ) -> Segment | None:
        """The segment this round reads next, None when it is done: one never read (found by
        this round's reads, beyond the tokens), else while a token is left the one expected to
        show the most ended jobs among those not read for `min_interval` (the oldest of those
        not read for `stale_after` first)."""
        best: Segment | None = None
        best_key = (False, -math.inf)
        rate = self._ended / self._exposure if self._ended else _NO_RATE  # per job-second
        for segment in self._segments.values():
            if not segment.ids or segment in read:
                continue
            if segment.read_at == -math.inf:
                return segment
            age = now - segment.read_at
            if age < min_interval:
                continue
            stale = age >= stale_after
            key = (stale, age if stale else age * len(segment.ids) * _rate(segment, rate))
            if key > best_key:
                best, best_key = segment, key
        return best if self._has_token() else None

    def _has_token(self) -> bool:
        return self._tokens >= 1 - 1e-9  # tokens added in tenths add up to 0.999…

    def record(self, segment: Segment, page: Page, now: float) -> Read:
        """A page read from `segment`'s key."""
        self._tokens -= 1
        self.read_once = True
        ended: list[str] = []
        seen: list[str] = []
        for row in page.rows:
            if row.id not in self._where:
                continue
            seen.append(row.id)
            before = self.rows.get(row.id)
            if _terminal(row) and (before is None or not _terminal(before)):
                ended.append(row.id)
            self.rows[row.id] = row
            self._answered.discard(row.id)
        if segment.read_at > -math.inf:
            mine = sum(1 for i in ended if self._where[i] is segment)
            exposure = len(segment.ids) * (now - segment.read_at)
            segment.ended = segment.ended * _DECAY + mine
            segment.exposure = segment.exposure * _DECAY + exposure
            self._ended += mine
            self._exposure += exposure
        segment.read_at = now
        gone = segment.ids.difference(seen)
        onward = self._lost
        if gone and page.next_key is not None and segment.depth < self._max_depth:
            onward = self._segments.get(page.next_key) or Segment(page.next_key, segment.depth + 1)
            self._segments[page.next_key] = onward
        for job_id in gone:
            self._move(job_id, onward)
        return Read(seen, ended, sorted(gone) if onward is self._lost else [])

    def lose(self, segment: Segment) -> Read:
        """`segment`'s page could not be listed (`is_unlistable`): its jobs are read on their
        own."""
        self._tokens -= 1
        lost = sorted(segment.ids)
        for job_id in lost:
            self._move(job_id, self._lost)
        return Read([], [], lost)


def _rate(segment: Segment, overall: float) -> float:
    """How fast `segment`'s jobs end lately, per job-second, drawn towards `overall`, and
    never below `_FLOOR` of it: a page where nothing ended lately is still read in its turn,
    less often (with few reads behind it, a quiet page may just have been unlucky)."""
    prior = len(segment.ids) * _PRIOR_SECONDS
    rate = (segment.ended + overall * prior) / (segment.exposure + prior)
    return max(rate, overall * _FLOOR)


def _terminal(row: EsdJob) -> bool:
    return row.state is not None and row.state.terminal
