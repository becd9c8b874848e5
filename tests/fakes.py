"""A clock the test moves by hand, for code that takes `clock=` (session TTLs, link estimate ageing); slowed
batcher forwards, for tests of what queues while one runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


class Clock:
    """`clock()` returns `now`; a test sets or advances `now`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def slowed_forwards(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> list[int]:
    """Makes every forward of `splitcore.batching` (prompts alone or padded together, or packed groups) sleep
    `delay_s` first, so other steps can queue meanwhile; returns the list of sessions each forward held."""
    import splitcore.batching as batching_module

    rows: list[int] = []
    for name in ("forward_rows", "run_packed"):
        real = getattr(batching_module, name)

        def slow(*args: Any, _real: Callable[..., Any] = real, _groups: bool = name == "run_packed",
                 **kwargs: Any) -> Any:
            rows.append(sum(int(g.query.shape[0]) for g in args[2]) if _groups else len(args[2]))
            time.sleep(delay_s)
            return _real(*args, **kwargs)
        monkeypatch.setattr(batching_module, name, slow)
    return rows
