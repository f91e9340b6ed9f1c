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
read (`_score`): its age, times the square root of its jobs (a page of a few jobs left still
comes round), times its *heat*: how much faster than the others its jobs were seen ending
lately (the jobs that ended on its recent reads against those expected at the rate seen over
all pages at the time; recent reads weigh more, a prior damps a single read, never below
`_FLOOR`). A page is at least `_SPREAD` as hot as its neighbours on the list (jobs sent together
end together), and of pages alike the older goes first (`_OLDER`). No segment waits longer than
`stale_after`. When jobs end at random the segments come round about in turn, each about every
`segments / pages_per_second` seconds, as a full scan would; when they end in the order they
were sent (an Async endpoint runs one job per instance at a time, queued in order: esd-api.md
§10.2) the pages where jobs are ending are read several times as often as the others
(`python -m bench esd-pages` simulates both against reading the pages in turn). The first turn
after the first walk has nothing to go on: at 10,000 jobs (20 pages) the oldest page comes
round again only after the other 19.

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

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence
    from datetime import datetime

    from cloud.esd.payloads import EsdJob

# Each read of a segment counts this much less than the one after it in its heat; the rate seen
# over all pages forgets this much of the past at each read (so it follows a rate that changes).
_DECAY = 0.5
_RECENT = 0.5
# A segment's heat starts at 1 (as fast as the others), as if this many jobs had been expected
# to end on it and had: one quiet or busy read moves it only so far.
_PRIOR = 2.0
_FLOOR = 0.5
# A segment is at least this much of its neighbours' heat.
_SPREAD = 0.5
# The oldest page's heat counts this much more than the newest's (the rest in between).
_OLDER = 0.25


@dataclass(slots=True, eq=False)
class Segment:
    """The jobs in flight last found on the page that follows `key`."""

    key: str | None  # exclusive_start_key; None: the head of the list
    depth: int  # pages from the head when it was found (1: the head)
    ids: set[str] = field(default_factory=set)
    read_at: float = -math.inf  # monotonic time of its last read; -inf: never read
    # Its jobs seen ending, and how many were expected to at the rate seen over all pages at
    # the time, each read counting half as much as the one after it: how much faster (or
    # slower) than the others its jobs end lately.
    ended: float = 0.0
    expected: float = 0.0
    newest: datetime | None = None  # `createTime` of its page's first job: its place in the list


@dataclass(slots=True)
class Page:
    """One page as the book read it."""

    rows: Sequence[EsdJob]  # newest first
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
        self._ended = 0.0  # jobs seen ending, over all reads
        self._exposure = 0.0  # job-seconds those reads covered (both forget the past)

    # -- Jobs ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._where)

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
        if not segment.ids and segment.key is not None:  # the head and `_lost` stay
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
        live = [s for s in self._segments.values() if s.ids]
        for segment in live:
            if segment.read_at == -math.inf and segment not in read:
                return segment
        heat = self._heat(live)
        best: Segment | None = None
        best_key = (False, -math.inf)
        for segment in live:
            age = now - segment.read_at
            if segment in read or age < min_interval:
                continue
            stale = age >= stale_after
            key = (stale, age if stale else _score(age, len(segment.ids), heat[segment.key]))
            if key > best_key:
                best, best_key = segment, key
        return best if self._has_token() else None

    @staticmethod
    def _heat(live: list[Segment]) -> dict[str | None, float]:
        """Each segment's heat, and at least `_SPREAD` of its neighbours' on the list (jobs
        sent together end together: the page next to one where jobs end is likely next)."""
        own = {s.key: _heat(s) for s in live}
        heat = dict(own)
        placed = sorted((s for s in live if s.newest is not None), key=lambda s: s.newest or 0)
        for older, newer in itertools.pairwise(placed):
            heat[older.key] = max(heat[older.key], _SPREAD * own[newer.key])
            heat[newer.key] = max(heat[newer.key], _SPREAD * own[older.key])
        # Jobs sent earlier end earlier where an endpoint queues them (one job per instance at
        # a time, in order: esd-api.md §10.2): of pages alike, the older first.
        last = max(1, len(placed) - 1)
        for rank, segment in enumerate(placed):  # oldest first
            heat[segment.key] *= 1 + _OLDER * (last - rank) / last
        return heat

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
            rate = self._ended / self._exposure if self._exposure else 0.0
            segment.ended = segment.ended * _DECAY + mine
            segment.expected = segment.expected * _DECAY + rate * exposure
            self._ended = self._ended * _RECENT + mine
            self._exposure = self._exposure * _RECENT + exposure
        segment.read_at = now
        segment.newest = page.rows[0].created_at if page.rows else None
        gone = segment.ids.difference(seen)
        onward = self._lost
        if gone and page.next_key is not None and segment.depth < self._max_depth:
            onward = self._segments.get(page.next_key) or Segment(page.next_key, segment.depth + 1)
            self._segments[page.next_key] = onward
        for job_id in gone:
            self._move(job_id, onward)
        for job_id in seen:
            if self._takes(segment, self._where[job_id]):
                self._move(job_id, segment)
        return Read(seen, ended, sorted(gone) if onward is self._lost else [])

    def _takes(self, segment: Segment, other: Segment) -> bool:
        """Whether a job of `other` that `segment`'s page shows moves to `segment`: pages that
        overlap (found from the head at different times) keep each job once, on the newer page,
        so they are not read twice for it and the older one empties; the head's page slides
        down as jobs come in, so it takes no job but lost ones."""
        if other is segment:
            return False
        if other is self._lost:
            return True
        if segment.key is None:
            return False
        if other.key is None or other.newest is None:
            return True
        return segment.newest is not None and other.newest < segment.newest

    def lose(self, segment: Segment) -> Read:
        """`segment`'s page could not be listed (`is_unlistable`): its jobs are read on their
        own."""
        self._tokens -= 1
        lost = sorted(segment.ids)
        for job_id in lost:
            self._move(job_id, self._lost)
        return Read([], [], lost)


def _score(age: float, jobs: int, heat: float) -> float:
    """How much a read of a page promises: its age times its heat, and the more jobs the more,
    less than in proportion (a page of a few jobs left, or the sliver two bookmarks found at
    different times do not share, still comes round)."""
    return age * heat * math.sqrt(jobs)


def _heat(segment: Segment) -> float:
    """How much faster than those of all pages `segment`'s jobs end lately (1: as fast), never
    below `_FLOOR`: a page where nothing ended lately is still read in its turn, less often
    (with few reads behind it, a quiet page may just have been unlucky)."""
    return max(_FLOOR, (segment.ended + _PRIOR) / (segment.expected + _PRIOR))


def _terminal(row: EsdJob) -> bool:
    return row.state is not None and row.state.terminal
