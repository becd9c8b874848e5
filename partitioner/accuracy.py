"""What a lossy activation codec costs in accuracy, per cut point.

For a plan `a:b`, hidden states are rounded through the codec where they
cross the link (after block `a` going up, after block `b` coming back), as
the services do. Two measures:

- teacher-forced, on a fixed text: the largest logit difference from the
  unsplit model, top-1 agreement over positions, and the perplexity ratio;
- free-running greedy generation through the real orchestrator and shard
  engine: the fraction of tokens equal to the unsplit model's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from splitcore.codec import DTYPE_BY_NAME, dequantise, quantise
from splitcore.loading import LoadedModel
from splitcore.plan import CodecName, Plan
from splitcore.ranges import LayerRange
from splitcore.shard import ShardState, run_range


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


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(logits[:-1], ids[1:]))


ACCURACY_TEXT = ("And God said, Let there be light: and there was light. And God saw the light, that it was good: "
                 "and God divided the light from the darkness. The edge keeps the first blocks of the model.")


def codec_losses(loaded: LoadedModel, text: str = ACCURACY_TEXT) -> dict[str, float]:
    """Perplexity ratio - 1 of each lossy codec at the middle cut on `text` (teacher-forced): the planner's limit."""
    assert loaded.tokenizer is not None, "codec losses are measured on text"
    ids = torch.tensor(loaded.tokenizer.encode(text))
    n = loaded.layered.num_layers
    ref_nll = _nll(split_logits(loaded, ids, Plan(num_layers=n, cut_a=n, cut_b=n)), ids)
    losses = {}
    for codec in ("fp16", "bf16", "int8"):
        plan = Plan(num_layers=n, cut_a=max(1, n // 4), cut_b=n - n // 4, codec=codec)
        losses[codec] = abs(math.exp(_nll(split_logits(loaded, ids, plan), ids) - ref_nll) - 1)
    return losses


def greedy_agreement(loaded: LoadedModel, plan: Plan, prompt: list[int], n: int, reference: list[int]) -> float:
    """Fraction of greedy tokens through edge and cloud (in process) equal to `reference`, position by position."""
    from cloud_service.engine import ShardEngine  # the real cloud engine, without the HTTP hop
    from cloud_service.sessions import SessionStore
    from edge_service.orchestrator import Finished, GenerationRequest, Orchestrator

    engine = ShardEngine(loaded, SessionStore(ttl_s=60, max_sessions=4, max_cache_bytes=2**31))
    events = list(Orchestrator(loaded, plan, engine).generate(GenerationRequest(prompt_ids=prompt, max_tokens=n)))
    done = events[-1]
    assert isinstance(done, Finished)
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
    ref_nll = _nll(ref_logits, ids)
    ref_tokens = m.model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=0)[0, len(prompt):].tolist()
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
                    perplexity_ratio=math.exp(_nll(logits, ids) - ref_nll),
                    greedy_agreement=greedy_agreement(loaded, plan, prompt, new_tokens, ref_tokens),
                ))
    return rows
