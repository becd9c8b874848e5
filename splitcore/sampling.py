"""Token selection from logits, with the `transformers` logits warpers."""

from __future__ import annotations

from typing import cast

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from splitcore.schema import SamplingParams

# Below this temperature, sampling is greedy: logits / T would overflow float32 for T near 1e-38 (the fuzzer sent
# 2.9e-192), and already at 1e-5 a logit gap of 0.001 gives the runner-up e^-100 of the mass.
GREEDY_BELOW = 1e-5


class Sampler:
    """Greedy when temperature is 0; otherwise temperature and nucleus sampling, seeded when asked."""

    def __init__(self, params: SamplingParams) -> None:
        self.greedy = params.temperature < GREEDY_BELOW
        self.suppress = torch.tensor(params.suppress_ids, dtype=torch.long)
        self.suppress_before = params.suppress_before
        self.warpers = LogitsProcessorList()
        if not self.greedy:
            if params.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(params.top_p))
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor, input_ids: torch.Tensor | None = None, position: int = 0) -> int:
        """Pick one token from logits (1, vocab) for sequence position `position` (the prompt's length for the
        first generated token); below `suppress_before`, the suppressed ids (EOS under `min_tokens`) cannot win."""
        if self.greedy:
            return int(self._suppressed(logits, position).argmax(dim=-1))
        return self.draw(self.probs(logits, position, input_ids))

    def probs(self, logits: torch.Tensor, position: int, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The distribution this sampler draws from (1, vocab): suppression, temperature and top-p applied."""
        ids = input_ids if input_ids is not None else torch.empty(1, 0, dtype=torch.long)
        scores = self.warpers(cast(torch.LongTensor, ids), cast(torch.FloatTensor, self._suppressed(logits, position)))
        return torch.softmax(scores.float(), dim=-1)  # (1, vocab)

    def draw(self, probs: torch.Tensor) -> int:
        """One token from a distribution (1, vocab) or (vocab,), with this sampler's generator (seeded when
        asked)."""
        return int(torch.multinomial(probs.reshape(1, -1), 1, generator=self.generator))

    def uniform(self) -> float:
        """A draw from U[0, 1) with this sampler's generator (speculative sampling's acceptance test)."""
        return float(torch.rand(1, generator=self.generator))

    def _suppressed(self, logits: torch.Tensor, position: int) -> torch.Tensor:
        if len(self.suppress) and position < self.suppress_before:
            logits = logits.clone()
            logits[..., self.suppress[self.suppress < logits.shape[-1]]] = float("-inf")
        return logits
