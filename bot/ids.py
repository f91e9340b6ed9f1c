"""Job ids and display names (SPEC §2.4).

An id is 10 characters of lowercase base32 (50 random bits): short enough for Discord's
100-character `custom_id` with room for the action, and easy to type as a 4-character prefix.

The random bytes come from the operating system (`os.urandom`) a few hundred ids at a time:
`os.urandom` lets go of the interpreter lock for its system call, and under a burst of commands
the event loop then waited for the store's thread to give the lock back (up to the 5 ms switch
interval) once per id (issue 11). A forked child starts with an empty buffer, so parent and
child never hand out the same ids.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from bot.model import Job

ID_LENGTH = 10
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


_ID_BYTES = 7  # 56 random bits, of which the id keeps 50
_IDS_PER_DRAW = 512


class _Entropy:
    """Random bytes from `os.urandom`, drawn `_IDS_PER_DRAW` ids' worth at a time."""

    __slots__ = ("_at", "_buffer")

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        if self._at + count > len(self._buffer):
            self._buffer = os.urandom(max(count, _ID_BYTES * _IDS_PER_DRAW))
            self._at = 0
        chunk = self._buffer[self._at : self._at + count]
        self._at += count
        return chunk

    def reset(self) -> None:
        self._buffer, self._at = b"", 0


_ENTROPY = _Entropy()
os.register_at_fork(after_in_child=_ENTROPY.reset)


def new_job_id() -> str:
    """A fresh random job id; the store refuses duplicates and the caller draws again."""
    return base64.b32encode(_ENTROPY.take(_ID_BYTES)).decode("ascii").lower()[:ID_LENGTH]


def format_time(moment: datetime) -> str:
    """UTC time as the job list shows it: `2026-11-25 12:01:33`."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def display_name(job: Job) -> str:
    """`2026-11-25 12:01:33 → inpaint-sketch → succeed → k3x9q2m7ab` (time → type → status → id)."""
    return f"{format_time(job.created_at)} → {job.command} → {job.state.value} → {job.id}"
