"""Measuring a draft's greedy acceptance: by hand on agreement runs, and on real tiny models."""

from __future__ import annotations

import pytest

from profiling.acceptance import DraftProfile, can_draft, conditional_acceptance, measure_drafts, replayed_rounds
from splitcore.loading import LoadedModel
from splitcore.plan import Plan


def test_acceptance_is_conditioned_on_the_drafts_before_it_being_accepted() -> None:
    # positions 0..3 agree, agree, miss, agree: the first draft 3 of 4; the second, after an accepted first,
    # starts at 0 (then agrees) or 1 (then misses): 1 of 2; the third only from 0 (misses): 0 of 1.
    assert conditional_acceptance([[True, True, False, True]], depth=4) == [0.75, 0.5, 0.0, 0.0]
    assert conditional_acceptance([[True] * 5, [False] * 5], depth=2) == [0.5, 1.0]
    assert conditional_acceptance([[False, False]], depth=3) == [0.0, 0.0, 0.0]  # never tried: the one before


def test_only_plans_whose_edge_holds_front_back_and_head_draft() -> None:
    profile = DraftProfile(source="self", accept_by_cut={"1:3": [0.5]}, tokens=10)
    assert profile.acceptance(Plan(num_layers=4, cut_a=1, cut_b=3)) == [0.5]
    for plan in (Plan(num_layers=4, cut_a=4, cut_b=4), Plan(num_layers=4, cut_a=1, cut_b=4),
                 Plan(num_layers=4, cut_a=0, cut_b=3)):
        assert not can_draft(plan) and profile.acceptance(plan) is None


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_draft_that_is_the_model_is_always_accepted_and_skipping_blocks_is_measured_at_every_cut(
        models: dict[str, LoadedModel], family: str) -> None:
    loaded = models[family]
    n = loaded.layered.num_layers
    same = measure_drafts(loaded, loaded, tokens=12)
    assert same.accept == [1.0] * len(same.accept) and same.draft_ms is not None and same.draft_ms > 0
    assert same.weights_bytes == sum(p.numel() * 4 for p in loaded.layered.model.parameters())
    assert same.tokens > 0
    own = measure_drafts(loaded, tokens=12)
    assert set(own.accept_by_cut) == {f"{a}:{b}" for a in range(1, n - 1) for b in range(a + 1, n)}
    assert all(0.0 <= x <= 1.0 for accept in own.accept_by_cut.values() for x in accept)
    # a random tiny model skipping blocks is not the model: some draft somewhere is rejected
    assert min(x for accept in own.accept_by_cut.values() for x in accept) < 1.0


def test_rounds_are_replayed_along_the_agreements() -> None:
    run = [True, True, False, True, True, True]
    # depth 2: rounds at 0 (two drafts kept, one token more) and 3 (the same): 6 tokens in 2 rounds
    # depth 1: rounds at 0 (2 tokens), 2 (a miss: 1), 3 (2), 5 (2): 7 tokens in 4 rounds
    assert replayed_rounds([run], depth=2) == [1.0, 1.75, 3.0]
    # the replay sees that rounds start after misses, where the text is hard: fewer tokens than every-start
    # chances say (first draft 1/2 here, then 1 after an accepted one)
    hard = [[False, True, True, True]] * 3
    assert conditional_acceptance(hard, depth=2) == [0.75, 1.0]
    assert replayed_rounds(hard, depth=2)[2] == 2.0  # rounds at 0 (miss: 1 token) and 1 (two kept: 3 tokens)
