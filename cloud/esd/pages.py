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
Bookmarks found from the head at different times overlap; one that falls inside a page read is
folded into the page after it (`_fold`), so the bookmarks tile the list again.

Which segment a round reads is the one expected to show the most jobs ended since its last read.
The book ranks the jobs in flight oldest first (a segment's jobs hold the ranks after the older
segments') and learns, per band of ranks a fifth of a page wide, how fast jobs there were seen
ending lately: the ends each read showed against the job-seconds it covered, both fading with a
time constant of `_MEMORY` seconds or `_MEMORY_TURNS` turns of every segment, whichever is
longer (what a read of a quiet page taught must last until that page comes round again: with
thousands of jobs queued, their pages are read a minute or more apart), with a prior of `_PRIOR`
job-seconds at the rate seen over all bands, and never below `_FLOOR` of that rate. Ranks, not
pages, because where an endpoint queues jobs (one per instance at a time, in order: esd-api.md
§10.2) jobs end oldest first: the ending front stands still at the oldest ranks while it moves
from page to page, so what the reads of one page taught carries over to the page that holds
those ranks next. When jobs end at random every band looks alike and the segments come round
about in turn, each about every `segments / pages_per_second` seconds, as a full scan would. A
segment's score is its age times its jobs' expected rate of ends per job, times the square root
of its jobs (a page of a few jobs left at the front still comes round soon). No segment waits
longer than six turns of them all (`_STALE_TURNS`). `python -m bench esd-pages` simulates both
ways of ending against reading the pages in turn.

Pages are read at `pages_per_second` on average (a token bucket that starts empty and holds at
most `max(1, pages_per_second × max(min_interval, 1 s))`, so never more pages than seconds since
the book began times the rate, once the first walk is paid back), one segment at most every
`min_interval`.
In the first walk a segment never read yet is read in the round that found it, even beyond the
tokens (they go negative and the next round waits for them): the first walk of thousands of jobs
answers them all at once, and then waits as long as its pages take at that rate, as a full scan
did. After it, a page found below a read (jobs pushed down by newer ones) waits its turn like the
others, as old as the read its jobs were last known from: a burst of submissions would otherwise
walk the whole list at every read of the head, and no page could be read for as many seconds.

The rows read are kept per job; each read answers a job once (`answer`): the core takes an
answer for a read made when it asked, and a row reused minutes later must not pass for a fresh
one (`StatusBook._answer`).

Bookkeeping is proportional to the page read (its segment's jobs and its rows) and to the
segments, never to every job in flight at each call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

    from cloud.esd.payloads import EsdJob

# Bands of ranks per page of the end-rate estimate; seconds, or turns of every segment if longer,
# over which what reads showed fades (by 1/e).
_BANDS_PER_PAGE = 5
_MEMORY = 30.0
_MEMORY_TURNS = 6
# A band's rate starts at the mean, as if reads had covered this many job-seconds there at it;
# it never drops below this share of the mean (a quiet band still comes round).
_PRIOR = 100.0
_FLOOR = 0.1
# No segment waits longer than this many turns of them all (nor this many `min_interval`s).
_STALE_TURNS = 6
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # sorts segments not placed yet (none) first
_WHOLE = 1 - 1e-9  # a token: tokens added in tenths add up to 0.999…


class Tokens:
    """A token bucket: `rate` a second, at most `capacity` held. Spending may take it below
    zero (a walk beyond the tokens); the refills pay that back first."""

    __slots__ = ("_at", "left")

    def __init__(self, left: float, now: float) -> None:
        self.left = left
        self._at = now  # when `left` was last refilled

    def count(self, now: float, rate: float, capacity: float) -> float:
        """The tokens left at `now`."""
        self.left = min(capacity, self.left + (now - self._at) * rate)
        self._at = now
        return self.left

    def take(self, wanted: int) -> int:
        """Up to `wanted` whole tokens of those left, none below zero."""
        granted = max(0, min(wanted, int(self.left + 1 - _WHOLE)))
        self.left -= granted
        return granted


@dataclass(slots=True, eq=False)
class Segment:
    """The jobs in flight last found on the page that follows `key`."""

    key: str | None  # exclusive_start_key; None: the head of the list
    depth: int  # pages from the head when it was found (1: the head)
    ids: set[str] = field(default_factory=set)
    read_at: float = -math.inf  # monotonic time of its last read; -inf: never read
    newest: datetime | None = None  # `createTime` of its page's first job: its place in the list
    after: str | None = None  # the job whose row ends the page `key` came from


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

    def __init__(self, *, max_depth: int, page_size: int, now: float) -> None:
        self._max_depth = max_depth
        self._band = max(1, page_size // _BANDS_PER_PAGE)  # ranks per band
        self._head = Segment(None, 1)
        self._segments: dict[str | None, Segment] = {None: self._head}
        self._lost = Segment(None, 0)  # jobs not on the pages, read on their own; never read
        self._where: dict[str, Segment] = {}
        self.rows: dict[str, EsdJob] = {}  # the last row read of each job placed here
        self._answered: set[str] = set()  # answered since their last read
        self._tokens = Tokens(0.0, now)  # never more pages than seconds since the book began
        self.looked: float | None = None  # when the book first looked for its jobs on pages
        self.read_once = False  # a page was read (or a leader's post came in)
        self.not_before = -math.inf  # no round before (a follower's or a failed round's wait)
        self._walked = False  # the first walk is over
        # Per band of ranks: jobs seen ending, and the job-seconds the reads covered; both fade.
        self._ends: dict[int, float] = {}
        self._covered: dict[int, float] = {}
        self._all_ends = 0.0
        self._all_covered = 0.0
        self._learned = now  # when they last faded
        self._turn = 0.0  # seconds to read every segment once, as of the last round

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
        tokens = self._tokens.count(now, pages_per_second, capacity)
        waiting = [s for s in self._segments.values() if s.ids]
        if not waiting:
            return math.inf
        unread = any(s.read_at == -math.inf for s in waiting)
        if unread and not self.read_once:
            return max(now, self.not_before)  # the first walk
        tokens_at = now if tokens >= _WHOLE else now + (1 - tokens) / pages_per_second
        if not unread:
            tokens_at = max(tokens_at, min(s.read_at for s in waiting) + min_interval)
        return max(tokens_at, self.not_before)

    def choose(
        self,
        now: float,
        *,
        min_interval: float,
        pages_per_second: float,
        read: Collection[Segment],
    ) -> Segment | None:
        """The segment this round reads next, None when it is done: in the first walk one
        never read (found by this round's reads, beyond the tokens), else while a token is left
        the one expected to show the most ended jobs among those not read for `min_interval`
        (the oldest of those not read for `_STALE_TURNS` turns of every segment first)."""
        live = [s for s in self._segments.values() if s.ids]
        for segment in live:
            if segment.read_at == -math.inf and segment not in read:
                return segment
        self._walked = True
        self._turn = len(live) / pages_per_second
        stale_after = _STALE_TURNS * max(min_interval, self._turn)
        starts = self._starts(live)
        best: Segment | None = None
        best_key = (False, -math.inf)
        for segment in live:
            age = now - segment.read_at
            if segment in read or age < min_interval:
                continue
            stale = age >= stale_after
            key = (stale, age if stale else age * self._promise(starts[segment.key], segment))
            if key > best_key:
                best, best_key = segment, key
        return best if self._tokens.left >= _WHOLE else None

    @staticmethod
    def _starts(live: Iterable[Segment]) -> dict[str | None, int]:
        """Each segment's first rank among the jobs in flight, oldest first."""
        starts: dict[str | None, int] = {}
        rank = 0
        for segment in sorted(live, key=lambda s: (s.newest is None, s.newest or _EPOCH)):
            starts[segment.key] = rank
            rank += len(segment.ids)
        return starts

    def _promise(self, start: int, segment: Segment) -> float:
        """How many of `segment`'s jobs are expected to end a second, per job, times the square
        root of its jobs."""
        if not self._all_ends:
            return 1.0  # before any job was seen ending, the pages in turn
        mean = self._all_ends / self._all_covered
        total = 0.0
        for band, jobs in _bands(start, len(segment.ids), self._band):
            ends, covered = self._ends.get(band, 0.0), self._covered.get(band, 0.0)
            total += jobs * max(_FLOOR * mean, (ends + mean * _PRIOR) / (covered + _PRIOR))
        return total / math.sqrt(len(segment.ids))

    def _learn(self, segment: Segment, ended: list[int], now: float) -> None:
        """A read of `segment` (read before) showed the jobs at `ended` (places among its
        jobs, oldest first) ended."""
        fade = math.exp(-(now - self._learned) / max(_MEMORY, _MEMORY_TURNS * self._turn))
        self._learned = now
        for table in (self._ends, self._covered):
            for band in table:
                table[band] *= fade
        seconds, jobs = now - segment.read_at, len(segment.ids)
        start = self._starts(s for s in self._segments.values() if s.ids)[segment.key]
        for band, share in _bands(start, jobs, self._band):
            self._covered[band] = self._covered.get(band, 0.0) + share * seconds
        for place in ended:
            band = (start + place) // self._band
            self._ends[band] = self._ends.get(band, 0.0) + 1
        self._all_ends = self._all_ends * fade + len(ended)
        self._all_covered = self._all_covered * fade + jobs * seconds

    def record(self, segment: Segment, page: Page, now: float) -> Read:
        """A page read from `segment`'s key."""
        self._tokens.left -= 1
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
            # Its jobs oldest first: those the page did not show went below it, then the page's.
            mine = [i for i in reversed(seen) if self._where[i] is segment]
            below = len(segment.ids) - len(mine)
            done = set(ended)
            self._learn(segment, [below + n for n, i in enumerate(mine) if i in done], now)
        last_read, segment.read_at = segment.read_at, now
        segment.newest = page.rows[0].created_at if page.rows else None
        gone = segment.ids.difference(seen)
        onward = self._lost
        if gone and page.next_key is not None and segment.depth < self._max_depth:
            onward = self._below(segment, page, last_read)
        for job_id in gone:
            self._move(job_id, onward)
        for job_id in seen:
            if self._takes(segment, self._where[job_id]):
                self._move(job_id, segment)
        if page.rows and page.next_key is not None and segment.depth < self._max_depth:
            self._fold(segment, page, now)
        return Read(seen, ended, sorted(gone) if onward is self._lost else [])

    def _fold(self, segment: Segment, page: Page, now: float) -> None:
        """Bookmarks found from the head at different times overlap: a segment whose key is a
        row of this page (it reads from the middle of this page on) holds, once this page took
        what it shows, only jobs on the page after this one. They move to that page's segment,
        as old as their last read, and the bookmarks tile the list again: fewer pages to read
        for the same jobs."""
        shown = {row.id for row in page.rows[:-1]}
        below: Segment | None = None
        for other in list(self._segments.values()):
            if other.after not in shown or other is segment or not other.ids:
                continue
            if below is None:
                below = self._below(segment, page, now)
            if other is not below:
                below.read_at = min(below.read_at, other.read_at)
                for job_id in list(other.ids):
                    self._move(job_id, below)

    def _below(self, segment: Segment, page: Page, last_read: float) -> Segment:
        """The segment of the page after `page` (whose `next_key` is set), made and kept if it
        is found now. In the first walk a new one is read in this round; after it, it waits its
        turn, placed just below `page` and as old as the read its jobs were last known from."""
        key = page.next_key
        below = self._segments.get(key)
        if below is not None:
            return below
        below = Segment(key, segment.depth + 1, after=page.rows[-1].id if page.rows else None)
        if self._walked:
            below.read_at = last_read
            below.newest = page.rows[-1].created_at if page.rows else segment.newest
        self._segments[key] = below
        return below

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
        self._tokens.left -= 1
        lost = sorted(segment.ids)
        for job_id in lost:
            self._move(job_id, self._lost)
        return Read([], [], lost)


def _bands(start: int, jobs: int, size: int) -> Iterator[tuple[int, int]]:
    """The bands of `size` ranks that ranks `start` … `start + jobs - 1` fall in, and how many
    of them in each."""
    for band in range(start // size, (start + jobs - 1) // size + 1):
        yield band, min(start + jobs, (band + 1) * size) - max(start, band * size)


def _terminal(row: EsdJob) -> bool:
    return row.state is not None and row.state.terminal
