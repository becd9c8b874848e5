"""The shipped model's corpus: the King James Version from Debian's `bible-kjv`, split into training and held-out
chapters, for the training script, the perplexity script and the runtime benchmark."""

from __future__ import annotations

import re
import shutil
import subprocess

import torch
from transformers import PreTrainedTokenizerBase

HOLDOUT_EVERY = 20  # every 20th chapter is held out


def read_corpus() -> list[str]:
    """Return the KJV as a list of chapters, verse numbers stripped."""
    if shutil.which("bible") is None:
        raise SystemExit("the corpus comes from Debian's bible-kjv package: apt-get install bible-kjv")
    raw = subprocess.run(["bible", "-l1000", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters: list[str] = []
    for block in re.split(r"\n(?=\S[^\n]* \d+\n)", raw):
        lines = block.strip().splitlines()
        if len(lines) < 2:
            continue
        verses = [re.sub(r"^\s*\d+\s+", "", line).strip() for line in lines[1:] if line.strip()]
        chapters.append(" ".join(verses))
    assert len(chapters) > 1000, f"expected 1189 chapters, parsed {len(chapters)}"
    return chapters


def split_corpus(chapters: list[str]) -> tuple[list[str], list[str]]:
    train = [c for i, c in enumerate(chapters) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    held = [c for i, c in enumerate(chapters) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    return train, held


def encode_stream(tok: PreTrainedTokenizerBase, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        ids.extend(tok.encode(text))
        ids.append(tok.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)
