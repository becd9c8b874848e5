"""How a tier's OpenMP threads wait between parallel regions.

The two tiers take turns on the same cores, so a tier's threads must not keep a core busy once its step is done:
libgomp's default spins each worker for 300,000 pauses after every parallel region (about 9 ms on this machine), on
the core the other tier (or the cloud's own event loop) needs next. libgomp reads these variables once, when torch
loads it, so a process applies `openmp_env()` before anything imports torch (this module imports nothing heavy).

The bounded spin (`IDLE_SPIN`, about 0.1-0.4 ms here) keeps the workers awake between the back-to-back parallel
regions of one forward, and lets them sleep soon after. README ("OpenMP threads between steps") has the
measurements that chose it against sleeping at once (`OMP_WAIT_POLICY=PASSIVE` alone) and the old spin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

OPENMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
IDLE_SPIN = 10_000  # GOMP_SPINCOUNT: pause instructions a libgomp worker spins before it sleeps


def openmp_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The OpenMP variables a tier's process sets before torch loads: none when the operator already chose a wait
    policy or a spin count (their choice wins). OMP_WAIT_POLICY=PASSIVE is for other OpenMP runtimes; libgomp,
    which torch's Linux wheels use, takes GOMP_SPINCOUNT over it."""
    if any(name in environ for name in OPENMP_VARS):
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(IDLE_SPIN)}


def openmp_passed_on(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The OpenMP variables for a tier's worker processes started from here (Ray's replicas): the operator's, or
    `openmp_env()`'s."""
    return {name: environ[name] for name in OPENMP_VARS if name in environ} or openmp_env(environ)
