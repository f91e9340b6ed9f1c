"""Job ids: format, uniqueness, and the operating system asked for randomness in bulk."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bot import ids
from bot.ids import ID_ALPHABET, ID_LENGTH, new_job_id

if TYPE_CHECKING:
    import pytest


def test_ids_are_ten_base32_characters_and_distinct() -> None:
    drawn = [new_job_id() for _ in range(5000)]
    assert all(len(i) == ID_LENGTH and set(i) <= set(ID_ALPHABET) for i in drawn)
    assert len(set(drawn)) == len(drawn)


def test_randomness_is_drawn_for_hundreds_of_ids_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # os.urandom lets go of the interpreter lock; once per id, a burst's event loop waited
    # for the store's thread to hand it back each time (issue 11).
    calls: list[int] = []
    real = os.urandom

    def counted(size: int) -> bytes:
        calls.append(size)
        return real(size)

    monkeypatch.setattr(os, "urandom", counted)
    ids._ENTROPY.reset()
    drawn = {new_job_id() for _ in range(1000)}
    assert len(drawn) == 1000
    assert len(calls) <= 2


def test_a_forked_child_draws_its_own_ids() -> None:
    ids._ENTROPY.reset()
    new_job_id()  # the buffer now holds the next ids, which a child must not repeat
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first ids, to the parent, then out without cleanup
        os.close(read)
        os.write(write, ",".join(new_job_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    parent_next = [new_job_id() for _ in range(3)]
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    assert len(child) == 3
    assert not set(child) & set(parent_next)
