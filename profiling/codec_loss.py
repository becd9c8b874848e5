"""What a lossy activation codec costs in accuracy: the planner's codec limit, measured teacher-forced.

For a plan `a:b`, hidden states are rounded through the codec where they
cross the link (after block `a` going up, after block `b` coming back), as
the services do, and the logits compared with the unsplit model's on a fixed
text. The free-running greedy comparison through both tiers is tooling
(`edgesplit.tools.codec_accuracy`), since it runs the services' code.
"""

from __future__ import annotations

import math

import torch

from splitcore.codec import DTYPE_BY_NAME, dequantise, quantise
from splitcore.loading import LoadedModel
from splitcore.plan import CodecName, Plan
from splitcore.shard import ShardState, run_range


def _through_codec(hidden: torch.Tensor, codec: CodecName) -> torch.Tensor:
    """Hidden states (1, seq, hidden) as the other tier would receive them."""
    dtype = DTYPE_BY_NAME[codec]
    rows = hidden[0]
    return dequantise(quantise(rows, dtype), dtype, *rows.shape).unsqueeze(0)


@torch.inference_mode()
def split_logits(loaded: LoadedModel, ids: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Logits (seq, vocab) for every position of `ids` with the plan's crossings rounded through its codec."""
    m = loaded.layered
    hidden = run_range(m, ShardState(m.new_cache()), plan.edge_front, input_ids=ids)
    hidden = _through_codec(hidden, plan.codec)
    hidden = run_range(m, ShardState(m.new_cache()), plan.cloud_layers, hidden=hidden)
    hidden = _through_codec(hidden, plan.codec)
    hidden = run_range(m, ShardState(m.new_cache()), plan.edge_back, hidden=hidden)
    return m.lm_head(m.norm(hidden))[0]


def nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean next-token negative log-likelihood of `ids` under `logits` (seq, vocab)."""
    return float(torch.nn.functional.cross_entropy(logits[:-1], ids[1:]))


ACCURACY_TEXT = ("And God said, Let there be light: and there was light. And God saw the light, that it was good: "
                 "and God divided the light from the darkness. The edge keeps the first blocks of the model.")


def codec_losses(loaded: LoadedModel, text: str = ACCURACY_TEXT) -> dict[str, float]:
    """Perplexity ratio - 1 of each lossy codec at the middle cut on `text` (teacher-forced): the planner's limit."""
    assert loaded.tokenizer is not None, "codec losses are measured on text"
    ids = torch.tensor(loaded.tokenizer.encode(text))
    n = loaded.layered.num_layers
    ref_nll = nll(split_logits(loaded, ids, Plan(num_layers=n, cut_a=n, cut_b=n)), ids)
    losses = {}
    for codec in ("fp16", "bf16", "int8"):
        plan = Plan(num_layers=n, cut_a=max(1, n // 4), cut_b=n - n // 4, codec=codec)
        losses[codec] = abs(math.exp(nll(split_logits(loaded, ids, plan), ids) - ref_nll) - 1)
    return losses
