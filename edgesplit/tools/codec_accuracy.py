"""Codec accuracy at every cut, teacher-forced and free-running through both tiers: `bench/codec_accuracy.py`.

The teacher-forced figures come from `profiling.codec_loss`; the greedy agreement runs the real orchestrator and
shard engine in process (`inprocess.split_generate`), so it lives here, above the services, not in the measuring
package.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from edgesplit.tools.inprocess import split_generate
from profiling.codec_loss import nll, split_logits
from splitcore.loading import LoadedModel
from splitcore.plan import CodecName, Plan
from splitcore.ranges import LayerRange
from splitcore.shard import ShardState, run_range
from splitcore.testing import reference_tokens


@dataclass(frozen=True)
class CodecAccuracy:
    codec: str
    cut_a: int
    cut_b: int
    max_logit_diff: float
    top1_agreement: float
    perplexity_ratio: float
    greedy_agreement: float

    def as_dict(self) -> dict:
        return asdict(self)


def greedy_agreement(loaded: LoadedModel, plan: Plan, prompt: list[int], n: int, reference: list[int]) -> float:
    """Fraction of greedy tokens through edge and cloud (in process) equal to `reference`, position by position."""
    done = split_generate(loaded, plan, prompt, n)
    same = sum(a == b for a, b in zip(done.token_ids, reference, strict=False))
    return same / max(len(reference), 1)


def measure(loaded: LoadedModel, text_ids: list[int], prompt: list[int], codecs: list[CodecName],
            new_tokens: int = 32) -> list[CodecAccuracy]:
    """Accuracy of each codec at every U-shaped cut `0 < a < b <= L` (head on the edge)."""
    m = loaded.layered
    ids = torch.tensor(text_ids)
    with torch.inference_mode():
        full = run_range(m, ShardState(m.new_cache()), LayerRange(start=0, end=m.num_layers), input_ids=ids)
        ref_logits = m.lm_head(m.norm(full))[0]
    ref_nll = nll(ref_logits, ids)
    ref_tokens = reference_tokens(loaded, prompt, new_tokens)
    rows = []
    for codec in codecs:
        for a in range(1, m.num_layers):
            for b in range(a + 1, m.num_layers + 1):
                plan = Plan(num_layers=m.num_layers, cut_a=a, cut_b=b, codec=codec)
                logits = split_logits(loaded, ids, plan)
                rows.append(CodecAccuracy(
                    codec=codec, cut_a=a, cut_b=b,
                    max_logit_diff=float((logits - ref_logits).abs().max()),
                    top1_agreement=float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
                    perplexity_ratio=math.exp(nll(logits, ids) - ref_nll),
                    greedy_agreement=greedy_agreement(loaded, plan, prompt, new_tokens, ref_tokens),
                ))
    return rows
