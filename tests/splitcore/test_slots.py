"""The running batch: sessions that join late, skip rounds, leave, end or outgrow its columns each get exactly
what they get alone."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from splitcore.batched import Row, forward_rows
from splitcore.kvcache import TorchState
from splitcore.loading import LoadedModel
from splitcore.ranges import LayerRange
from splitcore.slots import SlotBatch


class Pair:
    """A session run in the running batch, and the same session run alone on its own cache."""

    def __init__(self, m, layers: LayerRange, prompt: torch.Tensor) -> None:  # noqa: ANN001
        self.m, self.layers = m, layers
        self.batched, self.alone = TorchState(), TorchState()
        for state in (self.batched, self.alone):
            forward_rows(m, layers, [Row(state, hidden=prompt)], embed=False)

    def expected(self, x: torch.Tensor) -> torch.Tensor:
        return forward_rows(self.m, self.layers, [Row(self.alone, hidden=x)], embed=False)[0][0][0]  # (n, hidden)


@pytest.mark.parametrize("family_name", ["gpt2", "mistral"])  # mistral: a sliding window shorter than the run
def test_sessions_joining_skipping_leaving_and_ending_get_their_own_results(models: dict[str, LoadedModel],
                                                                             family_name: str) -> None:
    m = models[family_name].layered
    layers = LayerRange(start=1, end=3)
    gen = torch.Generator().manual_seed(0)
    batch = SlotBatch(m, layers)
    pairs = [Pair(m, layers, torch.randn(n, m.hidden_size, generator=gen)) for n in (3, 9)]
    for round_ in range(90):  # past the first 64 columns: the batch must compact and grow
        if round_ == 10:  # joins with a prompt longer than the batch's columns so far
            pairs.append(Pair(m, layers, torch.randn(30, m.hidden_size, generator=gen)))
        if round_ == 20:  # ends: its row is freed once its state is gone
            pairs.pop(0)
            gc.collect()
        active = [p for i, p in enumerate(pairs) if (round_ + i) % 3 != 0]  # each skips every third round
        if not active:
            continue
        x = torch.randn(len(active), m.hidden_size, generator=gen)
        got = batch.decode([p.batched for p in active], x, embed=False)
        for i, p in enumerate(active):
            torch.testing.assert_close(got[i], p.expected(x[i:i + 1])[0], rtol=1e-4, atol=1e-4)
        if round_ == 40:  # several positions at once: back to its own cache, then rejoins
            p = pairs[0]
            batch.leave(p.batched)
            x = torch.randn(4, m.hidden_size, generator=gen)
            got_many = forward_rows(m, layers, [Row(p.batched, hidden=x)], embed=False)[0][0][0]
            torch.testing.assert_close(got_many, p.expected(x), rtol=1e-4, atol=1e-4)
    assert batch.held == len(pairs) == 2
    for p in pairs:
        assert p.batched.position == p.alone.position
        assert p.batched.slot is not None and p.batched.measure() > 0


def test_rows_full_of_holes_are_repacked_and_stay_exact(models: dict[str, LoadedModel],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that sends a step only every third round leaves holes in its row, and short sessions come and
    go: once the span is over twice the longest row, the rows are repacked without holes, and not every round."""
    m = models["llama"].layered
    layers = LayerRange(start=0, end=2)
    gen = torch.Generator().manual_seed(3)
    batch = SlotBatch(m, layers)
    repacks: list[int] = []
    real = SlotBatch._repack
    monkeypatch.setattr(SlotBatch, "_repack", lambda self, live: (repacks.append(self.end), real(self, live))[1])
    slow = Pair(m, layers, torch.randn(5, m.hidden_size, generator=gen))
    short: list[Pair] = []
    pairs: list[Pair] = []
    for round_ in range(150):
        if round_ % 10 == 0:  # the short sessions end and new ones start
            ended = [weakref.ref(q.batched) for q in short]
            pairs.clear()  # the last round's references to them
            short = [Pair(m, layers, torch.randn(2, m.hidden_size, generator=gen)) for _ in range(3)]
            assert all(state() is None for state in ended)  # their rows are free (no collection needed)
        pairs = [slow, *short] if round_ % 3 == 0 else short[:]
        x = torch.randn(len(pairs), m.hidden_size, generator=gen)
        got = batch.decode([q.batched for q in pairs], x, embed=False)
        for i, q in enumerate(pairs):
            # 150 rounds of a model with large weights: batched and lone sums part in the last bits
            torch.testing.assert_close(got[i], q.expected(x[i:i + 1])[0], rtol=1e-3, atol=1e-3)
        del q
    assert 1 <= len(repacks) <= 10, repacks
    assert batch.end <= 2 * slow.batched.position + 17  # the holes did not accumulate


@pytest.mark.parametrize("family_name", ["gpt2", "llama"])
def test_cohorts_that_take_turns_run_only_their_own_rows_and_stay_exact(models: dict[str, LoadedModel],
                                                                         family_name: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Six sessions in three cohorts of two that decode in turn (as streams fall into step with a slow round):
    each round runs the two stepping rows only, over their gathered keys, not six rows of which four are idle."""
    m = models[family_name].layered
    layers = LayerRange(start=0, end=2)
    gen = torch.Generator().manual_seed(1)
    pairs = [Pair(m, layers, torch.randn(n, m.hidden_size, generator=gen)) for n in (2, 5, 3, 8, 4, 6)]
    batch = SlotBatch(m, layers)
    seen: list[int] = []
    real = SlotBatch.prepare

    def spy(self, states, *args):  # noqa: ANN001, ANN002, ANN202
        group, finish = real(self, states, *args)
        seen.append(int(group.hidden.shape[0]))  # rows the forward runs
        return group, finish
    monkeypatch.setattr(SlotBatch, "prepare", spy)
    for round_ in range(12):
        cohort = pairs if round_ == 0 else pairs[2 * (round_ % 3):2 * (round_ % 3) + 2]
        x = torch.randn(len(cohort), m.hidden_size, generator=gen)
        got = batch.decode([p.batched for p in cohort], x, embed=False)
        for i, p in enumerate(cohort):
            torch.testing.assert_close(got[i], p.expected(x[i:i + 1])[0], rtol=1e-4, atol=1e-4)
    assert seen == [6] + [2] * 11  # every round after the first ran two rows, not six
