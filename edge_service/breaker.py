"""A circuit breaker for the cloud: after a failure, new generations skip it for a while.

The wait doubles with each failure in a row (capped), and one success closes the breaker. While it is open,
generations run edge-only (when fallback is allowed), so a dead or stalled cloud costs one timeout, not one per
request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CloudBreaker:
    """Thread-safe; `failed()` and `succeeded()` are called by the orchestrator after cloud steps."""

    def __init__(self, base_s: float = 1.0, cap_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0  # in a row
        self._open_until = 0.0

    def failed(self) -> float:
        """Record a failure; return how long new generations will skip the cloud, in seconds."""
        with self._lock:
            self.failures += 1
            wait = min(self.cap_s, self.base_s * 2 ** (self.failures - 1))
            self._open_until = self._clock() + wait
            return wait

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0
            self._open_until = 0.0

    @property
    def open(self) -> bool:
        """True while new generations should not try the cloud."""
        return self._clock() < self._open_until
