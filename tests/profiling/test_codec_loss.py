"""The planner's codec limit: each lossy codec's perplexity change, measured teacher-forced."""

from __future__ import annotations

from profiling.codec_loss import codec_losses
from splitcore.loading import LoadedModel


def test_codec_losses_rank_int8_above_fp16(models: dict[str, LoadedModel]) -> None:
    losses = codec_losses(models["gpt2"])
    assert set(losses) == {"fp16", "bf16", "int8"}
    assert 0 <= losses["fp16"] < losses["int8"]
