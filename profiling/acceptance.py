"""How often a draft's greedy pick is the model's: the planner's input for choosing a speculation depth.

Greedy speculation accepts a draft exactly when the draft's pick equals the model's at that position, given
the accepted text before it, which is the model's own greedy text. So the model's greedy continuation of a few
prompts is generated once, the draft is run over it teacher-forced, and at every position the two picks are
compared: the same agreements a live edge would see, without a cloud. Two drafts are measured:

- self-speculation at every pair of cuts `a < b < L`: blocks `[0, a)`, then `[b, L)` and the head (the cloud's
  middle skipped), so the search can weigh what a cut does to acceptance;
- a draft model over the same text (its own embeddings, blocks and head), and its time per drafted token.

Acceptance is given per draft position, conditioned on the drafts before it being accepted (text comes in
runs of easy tokens; see `edge_service.speculation.DepthTuner`).
"""

from __future__ import annotations

import time

import torch
from pydantic import Field

from splitcore.loading import LoadedModel
from splitcore.plan import Plan
from splitcore.ranges import LayerRange
from splitcore.schema import StrictModel
from splitcore.shard import ShardState, run_range
from splitcore.testing import reference_tokens

PROMPTS = ("And God said unto Moses,", "Blessed are they that", "And it came to pass, when the king",
           "The LORD is my shepherd;")  # the shipped model's corpus is the King James Bible
DEPTH_MEASURED = 8  # draft positions measured


class DraftProfile(StrictModel):
    """One draft source's measured greedy acceptance, as the cost model reads it."""

    source: str = Field(description="'self' (the edge's own blocks, the cloud's middle skipped) or the draft "
                                    "model's name")
    accept_by_cut: dict[str, list[float]] = Field(
        default_factory=dict, description="self: 'a:b' -> chance draft j + 1 is accepted once the j before were")
    accept: list[float] = Field(default_factory=list, description="a draft model: the same, whatever the cut")
    rounds: dict[str, list[float]] = Field(
        default_factory=dict, description="tokens a greedy round of depth k gives (index k), replayed on the "
                                          "measured agreements; keyed 'a:b' for self, '*' for a draft model")
    draft_ms: float | None = Field(default=None, description="a draft model's time per drafted token on the edge; "
                                                             "self: None (the edge profile's blocks)")
    tokens: int = Field(description="generated positions the figures were measured on")
    weights_bytes: int = Field(default=0, ge=0, description="a draft model's weights the edge holds besides the "
                                                            "plan's (0 for self)")

    def round_tokens(self, plan: Plan, depth: int) -> float | None:
        """Tokens a round of `depth` drafts gives on `plan`: replayed where measured, else from the per-position
        acceptance; None when the plan cannot draft with this source."""
        accept = self.acceptance(plan)
        if accept is None:
            return None
        measured = self.rounds.get(f"{plan.cut_a}:{plan.cut_b}" if self.source == "self" else "*", [])
        return measured[depth] if depth < len(measured) else expected_tokens(accept, depth)

    def acceptance(self, plan: Plan) -> list[float] | None:
        """The per-position acceptance on `plan`, or None when the plan cannot draft with this source."""
        if not can_draft(plan):
            return None
        return self.accept_by_cut.get(f"{plan.cut_a}:{plan.cut_b}") if self.source == "self" else self.accept


def expected_tokens(accept: list[float], depth: int) -> float:
    """Tokens a round of `depth` drafts gives on average: 1 + the sum over i of the chance the first i drafts are
    all accepted. `accept[j]` is the chance draft j + 1 is accepted once the ones before it were; drafts past
    the measured ones take the last measured chance."""
    total, chance = 1.0, 1.0
    for i in range(depth):
        chance *= accept[min(i, len(accept) - 1)]
        total += chance
    return total


def can_draft(plan: Plan) -> bool:
    """Whether a generation on `plan` can speculate (the edge's orchestrator and the planner both ask): the edge
    embeds the tokens (front blocks) and runs the back blocks and head (the draft skips only the cloud's middle),
    and the cloud runs something (an edge-only plan has no round trip to save)."""
    return plan.uses_cloud and plan.cut_a > 0 and plan.head == "edge" and len(plan.edge_back) > 0


def conditional_acceptance(agree: list[list[bool]], depth: int = DEPTH_MEASURED) -> list[float]:
    """From runs of agreements (one list per text), the chance that draft j + 1 of a round is accepted once the
    j before it were, j < `depth`, over every position a round could start at; an unseen position takes the
    chance before it (1.0 when none was seen)."""
    out: list[float] = []
    for j in range(depth):
        tried = hit = 0
        for run in agree:
            for t in range(len(run) - j):
                if all(run[t:t + j]):
                    tried += 1
                    hit += run[t + j]
        out.append(hit / tried if tried else (out[-1] if out else 1.0))
    return out


def replayed_rounds(agree: list[list[bool]], depth: int = DEPTH_MEASURED) -> list[float]:
    """Tokens per greedy round of each depth 0..`depth`, replaying rounds along the agreement runs: a round at a
    position accepts the drafts that agree there and after, up to its depth, and gives one token more. Greedy
    acceptance is decided by these agreements alone, so this is what rounds give on this text; conditional
    chances (`conditional_acceptance`) over every start count easy stretches a round seldom starts in (measured on
    the shipped model's own blocks, 2:6: 3.3 tokens predicted from them at depth 4, 2.8 given by real rounds)."""
    out = []
    for k in range(depth + 1):
        tokens = rounds = 0
        for run in agree:
            t = 0
            while t < len(run):
                n = 0
                while n < k and t + n < len(run) and run[t + n]:
                    n += 1
                tokens, rounds, t = tokens + n + 1, rounds + 1, t + n + 1
        out.append(tokens / rounds if rounds else 1.0)
    return out


@torch.inference_mode()
def greedy_texts(loaded: LoadedModel, tokens: int = 48, prompts: tuple[str, ...] = PROMPTS
                 ) -> list[tuple[torch.Tensor, int]]:
    """The model's own greedy continuation of each prompt: (ids of prompt and continuation, prompt length)."""
    assert loaded.tokenizer is not None, "acceptance is measured on text"
    out = []
    for prompt in prompts:
        ids = list(loaded.tokenizer.encode(prompt))
        n = min(tokens, loaded.layered.max_positions - len(ids) - 1)
        out.append((torch.tensor(ids + reference_tokens(loaded, ids, n, min_new_tokens=n)), len(ids)))
    return out


def _agree(picks: torch.Tensor, ids: torch.Tensor, prompt: int) -> list[bool]:
    """Whether the pick at each position (seq,) is the next token, over the generated part."""
    return [bool(picks[t] == ids[t + 1]) for t in range(prompt - 1, len(ids) - 1)]


@torch.inference_mode()
def self_agreements(loaded: LoadedModel, texts: list[tuple[torch.Tensor, int]]) -> dict[str, list[list[bool]]]:
    """Self-speculation's agreements with the model at every pair of cuts `a < b < L`, keyed 'a:b'."""
    m = loaded.layered
    n = m.num_layers
    agree: dict[str, list[list[bool]]] = {}
    for ids, prompt in texts:
        hidden = run_range(m, ShardState(m.new_cache()), LayerRange(start=0, end=0), input_ids=ids)
        fronts = []  # the hidden states after blocks [0, a), a = 1 .. n - 2
        for a in range(1, n - 1):
            hidden = run_range(m, ShardState(m.new_cache()), LayerRange(start=a - 1, end=a), hidden=hidden)
            fronts.append(hidden)
        for a in range(1, n - 1):
            for b in range(a + 1, n):
                back = run_range(m, ShardState(m.new_cache()), LayerRange(start=b, end=n), hidden=fronts[a - 1])
                picks = m.logits_all(back).argmax(-1)
                agree.setdefault(f"{a}:{b}", []).append(_agree(picks, ids, prompt))
    return agree


@torch.inference_mode()
def model_agreements(draft: LoadedModel, texts: list[tuple[torch.Tensor, int]]) -> tuple[list[list[bool]], float]:
    """A draft model's agreements with the model over the texts, and its median time per drafted token (one
    position on a cache, as it drafts), in ms."""
    m = draft.layered
    everything = LayerRange(start=0, end=m.num_layers)
    runs, times = [], []
    for ids, prompt in texts:
        picks = m.logits_all(run_range(m, ShardState(m.new_cache()), everything, input_ids=ids)).argmax(-1)
        runs.append(_agree(picks, ids, prompt))
        state = ShardState(m.new_cache())
        run_range(m, state, everything, input_ids=ids[:prompt])
        for t in range(prompt, min(len(ids), prompt + 16)):
            started = time.perf_counter()
            m.logits(run_range(m, state, everything, input_ids=ids[t:t + 1]))
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return runs, times[len(times) // 2]


def measure_drafts(loaded: LoadedModel, draft: LoadedModel | None = None, tokens: int = 48,
                   slowdown: float = 1.0) -> DraftProfile:
    """The acceptance of the draft the edge would use: `draft`, or self-speculation when None; a draft model's
    time per token is scaled by the edge's emulated `slowdown`, as its profile is."""
    texts = greedy_texts(loaded, tokens)
    generated = sum(len(ids) - prompt for ids, prompt in texts)
    if draft is None:
        by_cut = self_agreements(loaded, texts)
        return DraftProfile(source="self", accept_by_cut={c: conditional_acceptance(r) for c, r in by_cut.items()},
                            rounds={c: replayed_rounds(r) for c, r in by_cut.items()}, tokens=generated)
    runs, ms = model_agreements(draft, texts)
    weights = sum(p.numel() * p.element_size() for p in draft.layered.model.parameters())
    return DraftProfile(source=draft.name, accept=conditional_acceptance(runs), rounds={"*": replayed_rounds(runs)},
                        draft_ms=ms * slowdown, tokens=generated, weights_bytes=weights)
