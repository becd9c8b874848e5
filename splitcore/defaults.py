"""Project-wide defaults."""

import os
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"  # the checkpoint the project ships


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, so a pinned or containerised process counts right)."""
    return len(os.sched_getaffinity(0))
