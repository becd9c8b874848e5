"""Waiting in tests for something another thread or process does in its own time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(read: Callable[[], T], done: Callable[[T], object] = bool, timeout_s: float = 10.0,
         every_s: float = 0.1) -> T:
    """`read()` again every `every_s` until `done` holds for what it returned or `timeout_s` have passed, and
    return its last value: the caller asserts on that, so a timeout fails with the caller's own message and
    figures. Give timeouts that hold on a loaded 2-core CI machine (tests run on two workers)."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(every_s)
        value = read()
    return value
