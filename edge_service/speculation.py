"""More than one token per round trip: the edge drafts k tokens, one frame carries them through the cloud.

Self-speculation (as LayerSkip drafts with a model's own early layers, arXiv 2404.16710): the draft is the
edge's own blocks with the cloud's middle skipped, front blocks straight into the back blocks and the head, so
it needs no extra weights and no link. One round, at sequence position p of the latest token t:

1. The front blocks run t, then each draft d_1..d_k in turn (their keys stay: the verify needs them); after
   each, the back blocks (on the draft's own cache, fed the front's output) and the head propose the next draft.
2. One frame carries the k + 1 front outputs (t, d_1..d_k) through the cloud's blocks; the edge runs the back
   blocks and the head over all of them: the model's own prediction at each of the k + 1 positions.
3. The longest prefix of drafts the model agrees with is accepted, plus the model's own next token (so a round
   gives 1 to k + 1 tokens). Greedy, agreement is equality, and the output is the model's greedy output token
   for token. Sampling, d_i is accepted with probability min(1, p(d_i) / q(d_i)), and a rejection draws from
   the residual max(0, p - q) (Leviathan et al., arXiv 2211.17192): the tokens are distributed as the model's.
4. Every cache is cut back to the accepted prefix: the edge's at once, the cloud's by the ROLLBACK flag on the
   next frame (whose position is the cut, checked by the cloud).

Both probabilities live on the device (the U-shaped split keeps the head there), so no logits cross the link.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from profiling.acceptance import expected_tokens
from splitcore.backends import Runner, TorchRunner
from splitcore.errors import UserError
from splitcore.loading import LoadedModel, load_checkpoint
from splitcore.ranges import LayerRange
from splitcore.sampling import Sampler

if TYPE_CHECKING:
    from edge_service.orchestrator import Orchestrator, _Context

MAX_DEPTH = 16  # drafts per round at most (settings refuse more)


@dataclass(frozen=True)
class DraftModel:
    """A small model with the same token ids that drafts instead of the edge's own blocks, on its own runner."""

    loaded: LoadedModel
    runner: Runner

    @property
    def blocks(self) -> LayerRange:
        return LayerRange(start=0, end=self.loaded.layered.num_layers)

    @classmethod
    def load(cls, path: Path, model: LoadedModel) -> DraftModel:
        """Load the draft at `path` for `model`.

        Raises:
            UserError: the draft does not share the model's tokenizer (its ids would mean other text).
        """
        draft = load_checkpoint(path)
        if draft.tokenizer is None or model.tokenizer is None or \
                draft.tokenizer.get_vocab() != model.tokenizer.get_vocab():
            raise UserError(f"draft model {path} does not share the model's tokenizer: train it with "
                            "scripts/train_default_model.py --tokenizer <the model's directory>", param="draft_model")
        return cls(draft, TorchRunner(draft.layered))


@dataclass
class SpeculationStats:
    """What speculation did in one generation."""

    depth: int  # the deepest round's drafts (0: no round drafted)
    drafted: int = 0
    accepted: int = 0
    round_trips: int = 0  # verify rounds

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def propose(sampler: Sampler, logits: torch.Tensor, position: int) -> tuple[int, torch.Tensor | None]:
    """The draft's token for sequence position `position` from its logits (1, vocab), and, when sampling, the
    distribution it was drawn from (speculative sampling's q)."""
    if sampler.greedy:
        return sampler(logits, position=position), None
    q = sampler.probs(logits, position)
    return sampler.draw(q), q


def accept_greedy(drafts: list[int], targets: list[int]) -> int:
    """How many drafts the model's own greedy picks confirm: the longest prefix with drafts[i] == targets[i]."""
    n = 0
    while n < len(drafts) and drafts[n] == targets[n]:
        n += 1
    return n


def accept_sampled(sampler: Sampler, drafts: list[int], q: list[torch.Tensor], p: list[torch.Tensor]
                   ) -> tuple[int, int]:
    """Speculative sampling: (drafts accepted, the next token after them). `q[i]` is the draft's distribution
    that `drafts[i]` was drawn from, `p[i]` the model's at the same position (both (1, vocab)); `p` has one more,
    for the token after a fully accepted round. Accepting d with probability min(1, p(d) / q(d)) and otherwise
    drawing from max(0, p - q), normalised, gives exactly the model's distribution."""
    for i, d in enumerate(drafts):
        ratio = float(p[i][0, d]) / max(float(q[i][0, d]), 1e-30)
        if sampler.uniform() < min(1.0, ratio):
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        total = float(residual.sum())
        return i, sampler.draw(residual / total if total > 0 else p[i])
    return len(drafts), sampler.draw(p[len(drafts)])


def choose_depth(accept: list[float], draft_ms: float, round_ms: Callable[[int], float], max_depth: int) -> int:
    """The depth with the most tokens per unit of time: a round of depth k gives `expected_tokens(accept, k)`
    and costs k drafts plus `round_ms(k)`: the rest of the round (the front steps left, the exchange, the back
    blocks and the head over k + 1 positions); `round_ms(0)` is a plain step."""
    best, best_rate = 0, 1.0 / max(round_ms(0), 1e-6)
    for k in range(1, max_depth + 1):
        rate = expected_tokens(accept, k) / (k * draft_ms + round_ms(k))
        if rate > best_rate * 1.02:  # a deeper round must pay for itself clearly
            best, best_rate = k, rate
    return best


class DepthTuner:
    """`--speculate auto`: the depth that the measured acceptance, draft time and round time favour, shared by
    the generations of one edge (moving averages). While depth 0 wins, one round in `explore_every` (then in
    twice as many, up to 16x) drafts `first_depth` tokens, so a change in acceptance (another kind of text) is
    still seen.

    Acceptance is measured per draft position, given the drafts before it were accepted: text comes in runs of
    easy tokens, so a draft that follows accepted ones is accepted more often than the first (measured on the
    shipped model: 0.41 for the first, about 0.75 for the next). One chance for all positions chose depth 0 on
    Wi-Fi, where depth 4 took 0.80x the time per token.

    A round's own time is measured per depth, and a plain step's apart: the back blocks and the head over k + 1
    positions cost more than over one (on a 3x slower edge, a depth-2 round of self-speculation cost more than
    it gave on the LAN while one round time for every depth said it paid). Depths not measured yet are
    extrapolated from the nearest measured one, linearly from a plain step. While speculation wins, one round
    in `explore_every` is a plain step, so its time stays known.
    """

    def __init__(self, max_depth: int = 8, first_depth: int = 2, explore_every: int = 16, weight: float = 0.1,
                 margin: float = 0.05) -> None:
        self.max_depth, self.first_depth, self.margin = max_depth, first_depth, margin
        self.explore_every, self.weight = explore_every, weight
        self.accept: list[float | None] = [None] * max_depth  # draft j + 1's chance, once the j before it were
        self.draft_ms: float | None = None
        self.round_ms: list[float | None] = [None] * (max_depth + 1)  # by depth; [0]: a plain step
        self.rate: list[float | None] = [None] * (max_depth + 1)  # tokens per ms rounds of each depth gave
        self._zero_rounds = 0
        self._zero_gap = explore_every  # plain rounds between explorations while depth 0 wins; doubles each time
        self._rounds = 0
        self.last = first_depth  # the depth the latest round asked for
        self._lock = threading.Lock()

    def depth(self) -> int:
        """The next round's depth (rounds that explore included)."""
        with self._lock:
            self.last = self._pick()
            return self.last

    def snapshot(self) -> dict:
        """What auto has measured, for the dashboard: per-position acceptance, times, tokens per ms by depth."""
        with self._lock:
            return {"depth": self.last, "acceptance": self.accept, "draft_ms": self.draft_ms,
                    "round_ms": self.round_ms, "tokens_per_s": [None if r is None else r * 1000 for r in self.rate]}

    def _pick(self) -> int:
        """The depth for the next round; the caller holds the lock."""
        measured = [a for a in self.accept if a is not None]
        timed = [k for k, ms in enumerate(self.round_ms) if ms is not None and k > 0]
        if not measured or self.draft_ms is None or not timed:
            return self.first_depth
        self._rounds += 1
        if self.round_ms[0] is None or (self._rounds % self.explore_every == 0 and self._zero_rounds == 0):
            return 0  # time a plain step
        accept, last = [], measured[0]
        for a in self.accept:  # positions not measured yet take the chance of the one before
            last = a if a is not None else last
            accept.append(last)
        k = choose_depth(accept, self.draft_ms, self._round_cost(timed), self.max_depth)
        if self.rate[k] is None:
            return k  # the model's pick, not tried yet: try it
        # What rounds of each depth really gave, catch-ups and all, overrules the model: self-speculation on a
        # slow edge over the LAN was predicted to pay at depth 2 and gave 1.20x the time per token.
        best = max((d for d, r in enumerate(self.rate) if r is not None), key=lambda d: self.rate[d] or 0.0)
        plain = self.rate[0]
        if best and plain is not None and (self.rate[best] or 0.0) < (1 + self.margin) * plain:
            best = 0  # drafting must clearly beat a plain step: within the noise, plain steps cost nothing extra
        self._zero_rounds = self._zero_rounds + 1 if best == 0 else 0
        if best != 0:
            self._zero_gap = self.explore_every
        elif self._zero_rounds % self._zero_gap == 0:
            # Each exploration that leaves depth 0 winning waits twice as long for the next (up to 16x): a draft
            # that does not pay (own blocks on a slow edge over the LAN) costs less and less while it is rechecked.
            self._zero_rounds, self._zero_gap = 0, min(2 * self._zero_gap, 16 * self.explore_every)
            return self.first_depth if k == 0 else k
        if best != k and self._rounds % self.explore_every == 0:
            return k  # look again at what the model favours: the measured rate may be stale
        return best

    def _round_cost(self, timed: list[int]) -> Callable[[int], float]:
        plain = self.round_ms[0]
        assert plain is not None

        def cost(k: int) -> float:
            ms = self.round_ms[k]
            if ms is not None:
                return ms
            near = min(timed, key=lambda t: abs(t - k))
            measured = self.round_ms[near]
            assert measured is not None
            return plain + (measured - plain) * k / near
        return cost

    def observe_plain(self, step_ms: float) -> None:
        """One plain step (no drafts) took `step_ms`."""
        with self._lock:
            self.round_ms[0] = _ema(self.round_ms[0], step_ms, self.weight)
            self.rate[0] = _ema(self.rate[0], 1.0 / max(step_ms, 1e-6), self.weight)

    def observe(self, drafted: int, accepted: int, draft_ms: float, round_ms: float, total_ms: float | None = None
                ) -> None:
        """One verify round: `accepted` of `drafted` drafts, `draft_ms` per draft, `round_ms` for the rest,
        `total_ms` in all (the draft's catch-up included; default: drafts and the rest)."""
        total = total_ms if total_ms is not None else drafted * draft_ms + round_ms
        with self._lock:
            self.rate[drafted] = _ema(self.rate[drafted], (accepted + 1) / max(total, 1e-6), self.weight)
            for j in range(min(drafted, accepted + 1)):  # drafts that were judged: accepted ones and the first miss
                self.accept[j] = _ema(self.accept[j], 1.0 if j < accepted else 0.0, self.weight)
            self.draft_ms = _ema(self.draft_ms, draft_ms, self.weight)
            self.round_ms[drafted] = _ema(self.round_ms[drafted], round_ms, self.weight)


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1 - weight) * old + weight * new


@torch.inference_mode()
def speculate(orch: Orchestrator, ctx: _Context, token: int, depth: int) -> list[int]:
    """One round at the latest token `token` (not yet in any cache): its tokens, 1 to `depth` + 1 of them."""
    plan, runner, sampler, model = ctx.plan, ctx.runner, ctx.sampler, orch.draft
    assert ctx.draft is not None and ctx.spec is not None, "speculation needs the draft's state"
    p = ctx.front.position  # the sequence position of `token`
    rows: list[torch.Tensor] = []  # front outputs (1, hidden) of token, d_1..d_k
    drafts: list[int] = []
    q: list[torch.Tensor] = []
    began = time.perf_counter()
    # A round at depth k, again and again, catches up on one position at most (after a round it fully accepted):
    # a longer catch-up is of the prompt or of plain steps, and is left out of what the round gave, or a depth
    # explored after a run of plain steps pays for them and auto stays off (measured: own blocks on the LAN under
    # auto took 1.11x depth 0's time per token, while depth 2 alone took 0.91x).
    lag_rows = sum(int(t.shape[0]) for t in ctx.draft_lag)
    with orch._device(runner):
        if ctx.draft_lag:  # positions the draft has not seen (the prompt, plain steps, a fully accepted round)
            if model is None:
                runner.run(ctx.draft, plan.edge_back, hidden=torch.cat(ctx.draft_lag))
            else:
                model.runner.run(ctx.draft, model.blocks, input_ids=torch.cat(ctx.draft_lag))
            ctx.draft_lag.clear()
        # Timed from here: the catch-up above is the prompt or the steps since the last round, not drafting (an
        # exploring depth-1 round after 16 plain steps once read as a 16x dearer draft, and auto stayed off).
        started = time.perf_counter()
        x = token
        for i in range(depth):
            if model is None:  # the edge's own blocks: front, then straight into the back blocks and head
                rows.append(runner.run(ctx.front, plan.edge_front, input_ids=torch.tensor([x]))[0])
                logits = runner.run_head(ctx.draft, plan.edge_back, hidden=rows[-1])  # (1, vocab)
            else:
                logits = model.runner.run_head(ctx.draft, model.blocks, input_ids=torch.tensor([x]))
            x, dist = propose(sampler, logits, p + i + 1)
            drafts.append(x)
            if dist is not None:
                q.append(dist)
        drafted = time.perf_counter()  # the front steps left are part of the round, as of a plain step
        if model is None:
            rows.append(runner.run(ctx.front, plan.edge_front, input_ids=torch.tensor([x]))[0])
        else:  # a draft model: the front blocks run the token and all drafts in one step
            rows.append(runner.run(ctx.front, plan.edge_front, input_ids=torch.tensor([token, *drafts]))[0])
    answer = orch._cross(ctx, torch.cat(rows))  # (k + 1, hidden): the cloud's blocks over all of them
    with orch._device(runner):
        logits = runner.logits_all(runner.run(ctx.back, plan.edge_back, hidden=answer))  # (k + 1, vocab)
    if sampler.greedy:
        targets = [sampler(logits[i:i + 1], position=p + i + 1) for i in range(depth + 1)]
        n = accept_greedy(drafts, targets)
        tokens = [*drafts[:n], targets[n]]
    else:
        n, last = accept_sampled(sampler, drafts, q, [sampler.probs(logits[i:i + 1], p + i + 1)
                                                      for i in range(depth + 1)])
        tokens = [*drafts[:n], last]
    if ctx.top_logprobs is not None:
        for i, t in enumerate(tokens):
            orch._record(ctx, logits[i:i + 1], t)
    if model is None:
        _cut(ctx, runner, p + n + 1, depth, n, rows[-1][-1:])
    else:
        _cut(ctx, model.runner, p + n + 1, depth, n, torch.tensor(drafts[-1:]))
    ctx.spec.drafted += depth
    ctx.spec.accepted += n
    ctx.spec.round_trips += 1
    ctx.spec.depth = max(ctx.spec.depth, depth)
    if orch.tuner is not None:
        now = time.perf_counter()
        orch.tuner.observe(depth, n, (drafted - started) * 1000 / depth, (now - drafted) * 1000,
                           (now - (began if lag_rows <= 1 else started)) * 1000)
    return tokens


def _cut(ctx: _Context, drafter: Runner, length: int, depth: int, accepted: int, last: torch.Tensor) -> None:
    """Every cache back to `length` positions (the latest accepted token's included); `drafter` runs the draft's
    cache, and `last` is what the draft would need of the last draft if all were accepted (its front output, or
    its token id for a draft model)."""
    assert ctx.draft is not None
    for state in (ctx.front, ctx.back):
        ctx.runner.rollback(state, length)
    if accepted < depth:
        drafter.rollback(ctx.draft, length)
    else:  # all accepted: the draft ran token, d_1..d_{k-1}; d_k is still to go through it
        ctx.draft_lag.append(last)
    ctx.rollback = ctx.position > length  # the cloud holds the rejected drafts too: cut them with the next frame
    ctx.position = length
