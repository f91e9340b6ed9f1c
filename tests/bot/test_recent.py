"""`bot.recent.Recent`: the size bound of what adapters remember per job or message."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from bot.model import Conversation, JobState
from bot.recent import Recent
from bot.views import StatusView


def test_recent_keeps_the_newest_entries() -> None:
    recent: Recent[str, int] = Recent(3)
    for n, key in enumerate("abcd"):
        recent[key] = n
    assert list(recent) == ["b", "c", "d"]
    recent["b"] = 10  # written again: the newest now
    recent["e"] = 4
    assert list(recent.items()) == [("d", 3), ("b", 10), ("e", 4)]
    with pytest.raises(ValueError, match="at least one"):
        Recent(0)


async def test_the_console_remembers_a_bounded_number_of_jobs(tmp_path: Path) -> None:
    out = io.StringIO()
    console = ConsoleAdapter(tmp_path, out)
    thread = Conversation("console")
    for n in range(2500):
        await console.edit_status(
            thread, "", StatusView(f"job{n}", "img2img", JobState.SUCCEED, "done")
        )
    assert len(console._shown) == 1000
    # A recent job's repeated state still prints no second line.
    await console.edit_status(
        thread, "", StatusView("job2499", "img2img", JobState.SUCCEED, "done")
    )
    assert out.getvalue().count("job job2499 succeed") == 1
