"""`Recent`: a dict that keeps only its newest entries.

What the bot remembers in memory per job, message or channel grows with its input, so each
such map has a bound: an age, a size, or the lifetime of a job in flight. `Recent` is the size
bound, for what is worth keeping for a while but is not needed for correctness once old (a
console line not printed twice, files not uploaded twice after a failed post).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(OrderedDict[K, V]):
    """An `OrderedDict` of at most `size` entries: setting a key makes it the newest, and the
    oldest are dropped beyond `size` (the `collections` documentation's recipe)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError("a Recent map holds at least one entry")
        self.size = size

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
