"""Token selection: greedy at temperature 0 and in its limit, seeded sampling otherwise."""

from __future__ import annotations

import torch

from splitcore.sampling import Sampler
from splitcore.schema import SamplingParams


def test_a_vanishing_temperature_is_greedy_instead_of_overflowing() -> None:
    logits = torch.tensor([[3.0, 2.999, -1.0]])
    for temperature in (0.0, 2.9e-192, 1e-30, 1e-6):
        assert Sampler(SamplingParams(temperature=temperature, seed=0))(logits) == 0, temperature


def test_the_same_seed_samples_the_same_tokens() -> None:
    logits = torch.zeros(1, 50)
    picks = [[Sampler(SamplingParams(temperature=1.0, seed=7))(logits) for _ in range(1)] for _ in range(3)]
    assert picks[0] == picks[1] == picks[2]
    assert len({Sampler(SamplingParams(temperature=1.0, seed=s))(logits) for s in range(20)}) > 1


def test_suppressed_ids_cannot_win_below_their_position() -> None:
    logits = torch.tensor([[0.0, 9.0, 1.0]])
    params = SamplingParams(temperature=0.0, suppress_ids=(1,), suppress_before=5)
    assert Sampler(params)(logits, position=4) == 2
    assert Sampler(params)(logits, position=5) == 1
    sampled = Sampler(params.model_copy(update={"temperature": 1.0, "seed": 0}))
    assert all(sampled(logits, position=0) != 1 for _ in range(50))
