"""Project-wide defaults."""

import contextlib
import os
import sysconfig
import threading
from contextlib import AbstractContextManager
from pathlib import Path


def _shipped_model(name: str = "default") -> Path:
    """A checkpoint the project ships: beside the code in a checkout (or an editable install), else where `pip
    install` put it (pyproject's data-files: `<prefix>/share/edgesplit/models/<name>`)."""
    checkout = Path(__file__).resolve().parent.parent / "models" / name
    installed = Path(sysconfig.get_path("data")) / "share" / "edgesplit" / "models" / name
    return checkout if (checkout / "config.json").is_file() or not (installed / "config.json").is_file() else installed


DEFAULT_MODEL_DIR = _shipped_model()
DEFAULT_DRAFT_DIR = _shipped_model("draft")  # the shipped model's speculation draft (same tokenizer, 1.05M params)
MIB = 2**20  # bytes in a mebibyte: settings and flags give sizes in MiB


def mib_bytes(mib: float | None) -> int | None:
    """A size in MiB as bytes; None or 0 (no limit, as the settings document it) is None."""
    return int(mib * MIB) if mib else None


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, so a pinned or containerised process counts right)."""
    return len(os.sched_getaffinity(0))


def step_bound(n: int | None) -> AbstractContextManager[object]:
    """What a tier holds while it computes a step: a semaphore of `n`, or nothing to wait for when None."""
    return threading.BoundedSemaphore(n) if n else contextlib.nullcontext()
