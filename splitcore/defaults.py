"""Project-wide defaults."""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"  # the checkpoint the project ships
