"""Counting how many threads are inside a function at once: the tests of concurrency bounds and locks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Overlap:
    """`wrap(fn, before)` returns `fn` counted: `most` is the largest number of threads ever inside at once,
    `calls` how many calls began. `before` runs inside, first (a barrier, a pause that makes overlaps visible)."""

    def __init__(self) -> None:
        self.inside = self.most = self.calls = 0
        self._guard = threading.Lock()

    def wrap(self, fn: Callable[..., Any], before: Callable[[], object] | None = None) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._guard:
                self.inside += 1
                self.calls += 1
                self.most = max(self.most, self.inside)
            try:
                if before is not None:
                    before()
                return fn(*args, **kwargs)
            finally:
                with self._guard:
                    self.inside -= 1
        return counted
