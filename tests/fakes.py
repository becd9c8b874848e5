"""A clock the test moves by hand, for code that takes `clock=` (session TTLs, link estimate ageing)."""

from __future__ import annotations


class Clock:
    """`clock()` returns `now`; a test sets or advances `now`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
