"""Codec accuracy: fp32 is exact at every cut; lossy codecs stay close and are measured, not assumed."""

from __future__ import annotations

from edgesplit.tools.codec_accuracy import measure
from splitcore.loading import LoadedModel


def test_fp32_is_exact_and_lossy_codecs_are_bounded(models: dict[str, LoadedModel]) -> None:
    loaded = models["llama"]
    tok = loaded.tokenizer
    text = tok.encode("The edge keeps the first layers and the cloud runs the rest.")
    rows = measure(loaded, text, tok.encode("Tokens stay"), ["fp32", "fp16", "int8"], new_tokens=8)
    assert len(rows) == 3 * 6  # cuts 0 < a < b <= 4
    for r in rows:
        if r.codec == "fp32":
            assert r.max_logit_diff == 0.0 and r.greedy_agreement == 1.0 and r.perplexity_ratio == 1.0
        elif r.codec == "fp16":
            assert r.max_logit_diff < 0.05 and abs(r.perplexity_ratio - 1) < 0.01
        else:
            assert r.max_logit_diff < 1.0 and abs(r.perplexity_ratio - 1) < 0.1
    assert max(r.max_logit_diff for r in rows if r.codec == "int8") > 0, "int8 must actually round"
