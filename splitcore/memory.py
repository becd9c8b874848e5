"""Giving memory back to the system once sessions end, so a tier's resident size follows its load.

PyTorch frees a finished session's KV cache to glibc's malloc, which keeps the pages for reuse: after a burst of
sessions a cloud stayed at 1.45x its starting resident size with none live. `malloc_trim(0)` returns the free
pages (1.01x after the same burst). It holds malloc's locks while it walks the heap, so it runs only when the
tier is idle (no step or request running: a step or a link probe timed across it would read a slower tier or
link), off the event loop, and only after something was freed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool

log = logging.getLogger(__name__)
RELEASE_INTERVAL_S = 2.0  # how often a tier looks whether anything was freed since it last gave memory back


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_TRIM = _malloc_trim()


def release() -> None:
    """Hand malloc's free pages back to the system (glibc only; ctypes lets other threads run meanwhile)."""
    if _TRIM is not None:
        _TRIM(0)


async def release_forever(freed: Callable[[], int], busy: Callable[[], bool],
                          interval_s: float = RELEASE_INTERVAL_S, drop: Callable[[], object] | None = None) -> None:
    """Every `interval_s`, if the count `freed()` (sessions or requests ended) has moved since memory was last given
    back and the tier is not `busy()`, give it back; `drop()` first frees what the tier keeps for later (e.g. the
    batcher's running batches whose sessions have all ended)."""
    released = freed()
    while True:
        await asyncio.sleep(interval_s)
        now = freed()
        if now != released and not busy():
            released = now
            if drop is not None:
                await run_in_threadpool(drop)
            await run_in_threadpool(release)
