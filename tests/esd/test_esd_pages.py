"""Which list page to read next (`cloud.esd.pages`, SPEC §4.1).

The rules alone (`Listing` on made-up pages and a clock the test moves), then the `StatusBook`
against the ESD-compatible server, whose `exclusive_start_key` is a position in the list as
DynamoDB's is: request counts come from the server's per-route counters.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.model import JobState
from cloud.esd import EsdBackend
from cloud.esd.client import EsdClient
from cloud.esd.pages import Listing, Page, Segment
from cloud.esd.payloads import EsdJob
from tests.esd.esd_kit import esd_config, state_of, target
from tests.esd.test_esd_polling import _book, _FakeClock, _status_requests, _submit_many

if TYPE_CHECKING:
    pass

PAGE = 50
_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _row(job_id: str, state: JobState, created_at: datetime | None = None) -> EsdJob:
    return EsdJob(job_id, "img2img", state.value, state, created_at=created_at)


class _List:
    """ESD's list of one task type, newest first, with position keys (esd-api.md §2.3)."""

    def __init__(self, count: int) -> None:
        self.ids = [f"job-{n:05}" for n in range(count)][::-1]  # newest first
        self.created = {
            job_id: _T0 + timedelta(seconds=n) for n, job_id in enumerate(self.ids[::-1])
        }
        self.ended: set[str] = set()
        self.reads: Counter[str | None] = Counter()

    def page(self, key: str | None) -> Page:
        self.reads[key] += 1
        start = 0 if key is None else self.ids.index(key) + 1
        ids = self.ids[start : start + PAGE]
        rows = [
            _row(i, JobState.SUCCEED if i in self.ended else JobState.INPROGRESS, self.created[i])
            for i in ids
        ]
        more = start + PAGE < len(self.ids)
        return Page(rows, ids[-1] if more else None)

    def add(self, count: int) -> list[str]:
        new = [f"new-{len(self.ids) + n:05}" for n in range(count)]
        for n, job_id in enumerate(new):
            self.created[job_id] = _T0 + timedelta(seconds=len(self.ids) + n)
        self.ids[:0] = new[::-1]
        return new


def _round(
    listing: Listing, esd: _List, now: float, *, interval: float = 1.0, rate: float = 1.0
) -> list[Segment]:
    """What `StatusBook._scan` does with the pages, without the I/O."""
    read: list[Segment] = []
    if listing.due(now, rate, interval) > now:
        return read
    while segment := listing.choose(now, min_interval=interval, pages_per_second=rate, read=read):
        read.append(segment)
        listing.record(segment, esd.page(segment.key), now)
    return read


def _placed(esd: _List, max_depth: int = 20) -> Listing:
    """A book looking for every job on `esd`'s list."""
    listing = Listing(max_depth=max_depth, page_size=PAGE, now=0.0)
    for job_id in esd.ids:
        listing.place(job_id)
    return listing


def _forget_ended(
    listing: Listing, now: float, ended_at: dict[str, float], delays: list[float]
) -> None:
    """Each job a read showed ended is forgotten, as the book forgets a job once it reported its
    end; the delay from its end (`ended_at`) to `now` is noted."""
    for job_id, row in list(listing.rows.items()):
        if row.state is JobState.SUCCEED:
            delays.append(now - ended_at[job_id])
            listing.remove(job_id)


def test_the_first_round_walks_down_until_every_job_was_seen() -> None:
    esd = _List(200)
    listing = _placed(esd)
    read = _round(listing, esd, 0.0)
    assert [s.depth for s in read] == [1, 2, 3, 4]
    found, waiting, lost = listing.answer(esd.ids)
    assert len(found) == 200 and not waiting and not lost
    # Each read answers once: asked again before the next read of its page, a job waits.
    assert listing.answer(esd.ids)[1] == set(esd.ids)
    # Then a page at a time, as the tokens come in: the book starts with none and the walk took
    # them 4 below zero, so the fifth page is read at 5 s, never more pages than seconds.
    assert listing.due(0.0, 1.0, 1.0) == 5.0 and _round(listing, esd, 4.9) == []
    assert len(_round(listing, esd, 5.0)) == 1


def test_pages_where_jobs_end_are_read_most() -> None:
    # An Async endpoint runs one job per instance at a time, in the order they were sent
    # (esd-api.md §10.2): the oldest jobs end first, a page's worth every 50 s here.
    esd = _List(200)
    listing = _placed(esd)
    oldest = esd.ids[::-1]
    _round(listing, esd, 0.0)
    esd.reads.clear()
    ended_at: dict[str, float] = {}
    delays: list[float] = []
    for second in range(4, 124):
        for job_id in oldest[: second - 3]:  # a job ends every second, oldest first
            ended_at.setdefault(job_id, second)
        esd.ended.update(ended_at)
        _round(listing, esd, float(second))
        _forget_ended(listing, float(second), ended_at, delays)
    # One page a second in all (the walk's four at 0 s paid back by 4 s, the book having started
    # with no token: 119 in the 120 s from 4 s to 123 s), and most of them where jobs end: seen
    # within a second or two, where reading the four pages in turn would take 2 s on average.
    assert sum(esd.reads.values()) == 119
    assert len(delays) > 100
    delays.sort()
    assert delays[len(delays) // 2] <= 1 and delays[int(len(delays) * 0.9)] <= 2


def test_pages_of_jobs_still_queued_are_read_seldom_however_many() -> None:
    # 1,200 jobs on 24 pages, ending oldest first two a second: most pages hold jobs still
    # queued. A read of one taught that none end there; that lasts until the page comes round
    # again (six turns of every page, 72 s with 12 pages), not 30 s, so the tokens go where
    # jobs end. With 30 s, 80 of the 225 reads from 100 s on showed no job ending.
    esd = _List(1200)
    listing = _placed(esd, max_depth=30)
    oldest = esd.ids[::-1]
    _round(listing, esd, 0.0)
    ended_at: dict[str, float] = {}
    delays: list[float] = []
    quiet = 0
    for second in range(25, 325):
        for job_id in oldest[: 2 * (second - 24)]:
            ended_at.setdefault(job_id, second)
        esd.ended.update(ended_at)
        for segment in _round(listing, esd, float(second)):
            if second >= 100 and not any(i in ended_at for i in segment.ids):
                quiet += 1
        _forget_ended(listing, float(second), ended_at, delays)
    assert quiet <= 60
    delays.sort()
    assert delays[int(len(delays) * 0.9)] <= 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_when_jobs_end_at_random_every_page_comes_round_in_turn(seed: int) -> None:
    rng = random.Random(seed)
    esd = _List(200)
    listing = _placed(esd)
    _round(listing, esd, 0.0)
    esd.reads.clear()
    running = list(esd.ids)
    last: dict[int, float] = {}
    for second in range(4, 84):
        for _ in range(2):
            if running:
                esd.ended.add(running.pop(rng.randrange(len(running))))
        for segment in _round(listing, esd, float(second)):
            last[segment.depth] = second
        # No page waits much longer than a turn of all four (the staleness bound is 24 s).
        assert all(second - at <= 12 for at in last.values()), (second, last)
    assert sum(esd.reads.values()) == 79  # a page a second from 5 s to 83 s


def test_jobs_pushed_down_by_new_ones_are_followed_to_the_next_page() -> None:
    esd = _List(40)
    listing = _placed(esd)
    _round(listing, esd, 0.0)  # one page holds all 40
    assert len(listing.answer(esd.ids)[0]) == 40
    new = esd.add(30)  # 30 newer jobs: the 20 oldest are now on the second page
    for job_id in new:
        listing.place(job_id)
    # After the first walk, the page below waits its turn (the next token), not read at once.
    assert [s.depth for s in _round(listing, esd, 5.0)] == [1]
    found, waiting, lost = listing.answer(esd.ids)
    assert len(found) == 50 and len(waiting) == 20 and not lost
    assert [s.depth for s in _round(listing, esd, 6.0)] == [2]
    found, waiting, lost = listing.answer(esd.ids)
    assert len(found) == 20 and len(waiting) == 50 and not lost


def test_a_burst_of_new_jobs_is_found_a_page_a_second_not_in_one_walk() -> None:
    # 500 jobs sent at once after the first walk: reading them all in the round that finds
    # them would take the tokens ten below zero and leave every page unread for ten seconds,
    # the busy ones too. They are found at the pages' pace instead.
    esd = _List(50)
    listing = _placed(esd)
    _round(listing, esd, 0.0)
    for job_id in esd.add(500):
        listing.place(job_id)
    rounds = [len(_round(listing, esd, float(second))) for second in range(2, 16)]
    assert max(rounds) == 1 and sum(rounds) == 14
    found, waiting, lost = listing.answer(esd.ids)
    assert len(found) == len(esd.ids) and not waiting and not lost


def test_jobs_sent_while_pages_are_read_end_on_as_few_pages_as_they_fill() -> None:
    # The bot sends thousands of jobs over a few seconds while it reads pages: each head read
    # pushes some down to a new bookmark, and those pages overlap. A job stays on one of them.
    esd = _List(0)
    listing = Listing(max_depth=20, page_size=PAGE, now=0.0)
    for second in range(12):
        for job_id in esd.add(23):
            listing.place(job_id)
        _round(listing, esd, second * 2.0)
    for second in range(12, 40):
        _round(listing, esd, second * 2.0)
    # 276 jobs: 6 pages. Bookmarks that fall inside a page read fold into the page after it, so
    # they tile the list again (7 were kept without that).
    assert listing.segments <= math.ceil(len(esd.ids) / PAGE)
    found, _, lost = listing.answer(esd.ids)
    assert len(found) == len(esd.ids) and not lost


def test_jobs_beyond_the_last_page_or_the_depth_are_lost() -> None:
    esd = _List(120)
    listing = Listing(max_depth=2, page_size=PAGE, now=0.0)
    for job_id in [*esd.ids, "deleted"]:
        listing.place(job_id)
    _round(listing, esd, 0.0)
    found, waiting, lost = listing.answer([*esd.ids, "deleted"])
    # Two pages of 50 read; the 20 oldest and a job the list does not have are lost.
    assert len(found) == 100 and not waiting
    assert set(lost) == {*esd.ids[100:], "deleted"}


def test_a_removed_job_leaves_no_trace() -> None:
    esd = _List(60)
    listing = _placed(esd)
    _round(listing, esd, 0.0)
    for job_id in esd.ids:
        listing.remove(job_id)
    assert len(listing) == 0 and listing.segments == 0 and not listing.rows
    assert listing.due(10.0, 1.0, 1.0) == math.inf


async def test_a_job_a_page_shows_ending_is_asked_about_at_once(server: str) -> None:
    # The poller asks about a job every 0.5–1 s; a page that shows it ended has the poller
    # ask at once (`on_change` is `Poller.nudge` in the bot), not at its next turn.
    clock = _FakeClock()
    async with EsdBackend(esd_config(server)) as esd:
        ids = await _submit_many(esd, 120)
    client = EsdClient(
        esd_config(server, page_size=PAGE, list_interval=1.0, list_pages_per_second=1.0)
    )
    await client.start()
    changed: list[str] = []
    book = _book(client, clock)
    book.on_change = changed.append
    for job_id in ids:
        book.track(job_id, "img2img", submitted_at=datetime.now(UTC))
    targets = [target(i) for i in ids]
    try:
        await book.statuses(targets)  # the first walk: 3 pages
        oldest = ids[:10]  # submitted first: on the last page
        for job_id in oldest:
            await state_of(server).finish(job_id)
        before = _status_requests(server)
        for tick in range(1, 13):
            clock.now = 2.0 + tick * 0.5
            await book.statuses(targets[60:])  # the poller happens to ask about others
            if changed:
                break
        assert sorted(changed) == sorted(oldest)
        spent = _status_requests(server) - before
        assert spent["get_inference"] == 0 and spent["list_inferences"] <= 4
        answer = await book.statuses([target(i) for i in oldest])
        assert {s.state.terminal for s in answer.values()} == {True} and len(answer) == 10
    finally:
        await client.aclose()
