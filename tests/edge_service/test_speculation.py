"""Speculation: the edge drafts, the cloud verifies in one exchange, and the output is the model's own.

Greedy, token for token `transformers`' `generate` at every depth, with drafts always wrong or always right;
sampling, the tokens are distributed as the model's (a chi-square test of the acceptance rule on real logits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import edge_service.speculation as speculation
from edge_service.generation import Finished, GenerationRequest
from edge_service.orchestrator import Orchestrator
from edge_service.speculation import DepthTuner, DraftModel, accept_sampled, choose_depth, expected_tokens
from edgesplit.tools.inprocess import in_process_cloud
from splitcore.backends import TorchRunner
from splitcore.errors import UserError
from splitcore.loading import LoadedModel, from_config
from splitcore.plan import Plan
from splitcore.sampling import Sampler
from splitcore.schema import SamplingParams
from splitcore.testing import reference_tokens, save_checkpoint, tiny_config, tiny_model, train_byte_level_bpe

PROMPT = list(range(30, 41))
N = 20


def _generate(loaded: LoadedModel, plan: Plan, depth: int | str, **options: object) -> Finished:
    orchestrator = Orchestrator(loaded, plan, in_process_cloud(loaded), speculate=depth)
    request = GenerationRequest(prompt_ids=PROMPT, max_tokens=N, **options)  # type: ignore[arg-type]
    done = list(orchestrator.generate(request))[-1]
    assert isinstance(done, Finished)
    return done


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("cut", [(1, 3), (2, 3), (1, 2)])
@pytest.mark.parametrize("depth", [1, 4, 8])
def test_greedy_output_with_speculation_equals_generate(models: dict[str, LoadedModel], family: str,
                                                        cut: tuple[int, int], depth: int) -> None:
    loaded = models[family]
    done = _generate(loaded, Plan(num_layers=4, cut_a=cut[0], cut_b=cut[1], codec="fp32"), depth)
    assert done.token_ids == reference_tokens(loaded, PROMPT, N)
    spec = done.speculation
    assert spec is not None and spec.round_trips > 0 and spec.depth == depth
    # each round gives its accepted drafts and one more; the last token may come from a plain step (no room left)
    assert len(done.token_ids) - 2 <= spec.accepted + spec.round_trips <= len(done.token_ids) - 1


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("right", [True, False])
def test_drafts_always_right_or_always_wrong_give_the_models_tokens(models: dict[str, LoadedModel], family: str,
                                                                    right: bool, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    loaded = models[family]
    reference = reference_tokens(loaded, PROMPT, N)
    vocab = loaded.layered.vocab_size

    def oracle(sampler: Sampler, logits: torch.Tensor, position: int) -> tuple[int, None]:
        token = reference[position - len(PROMPT)]
        return (token if right else (token + 1) % vocab), None
    monkeypatch.setattr(speculation, "propose", oracle)
    done = _generate(loaded, Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32"), 4)
    assert done.token_ids == reference
    spec = done.speculation
    assert spec is not None
    assert spec.accepted == (spec.drafted if right else 0)
    # right: 5 tokens a round until 4 are left; wrong: 1 a round, the last token a plain step (nothing to draft)
    assert spec.round_trips == (math.ceil((N - 1) / 5) if right else N - 2)


def test_a_generation_that_cannot_draft_reports_no_speculation(models: dict[str, LoadedModel]) -> None:
    loaded = models["gpt2"]
    head_in_cloud = _generate(loaded, Plan(num_layers=4, cut_a=1, cut_b=4, head="cloud", codec="fp32"), 4)
    assert head_in_cloud.speculation is None
    assert head_in_cloud.token_ids == reference_tokens(loaded, PROMPT, N)
    assert _generate(loaded, Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32"), 0).speculation is None


def test_a_seeded_sampled_generation_with_speculation_is_reproducible(models: dict[str, LoadedModel]) -> None:
    loaded = models["llama"]
    plan = Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32")
    sampling = SamplingParams(temperature=1.0, seed=7)
    first, again = (_generate(loaded, plan, 4, sampling=sampling).token_ids for _ in range(2))
    assert first == again and len(first) == N


def test_auto_leaves_seeded_samples_plain_and_pauses_on_a_busy_edge(models: dict[str, LoadedModel]) -> None:
    loaded = models["llama"]
    plan = Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32")
    seeded = _generate(loaded, plan, "auto", sampling=SamplingParams(temperature=1.0, seed=7))
    assert seeded.speculation is None  # auto's depth follows the timings: a seeded sample would not reproduce

    def rounds(max_streams: int) -> int:
        orchestrator = Orchestrator(loaded, plan, in_process_cloud(loaded), speculate="auto",
                                    speculate_max_streams=max_streams)
        done = list(orchestrator.generate(GenerationRequest(prompt_ids=PROMPT, max_tokens=N)))[-1]
        assert isinstance(done, Finished) and done.token_ids == reference_tokens(loaded, PROMPT, N)
        assert done.speculation is not None
        return done.speculation.round_trips
    assert rounds(1) > 0  # this generation alone: auto drafts
    assert rounds(0) == 0  # more generations than the limit (this one): plain steps, the same tokens


def _chi_square_critical(df: int, z: float = 3.09) -> float:
    """The chi-square value exceeded with probability about 0.001 (z = 3.09), by Wilson and Hilferty."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_speculative_sampling_keeps_the_models_distribution(models: dict[str, LoadedModel]) -> None:
    """A draft token drawn from q and put through `accept_sampled` against p comes out distributed as p: the
    model's and a draft's real next-token logits (different blocks of a tiny model), 20000 seeded draws."""
    layered = models["gpt2"].layered
    with torch.no_grad():
        hidden = layered.model(torch.tensor([PROMPT]), output_hidden_states=True).hidden_states
        p_logits = layered.logits(hidden[-1])  # (1, vocab): the whole model
        q_logits = layered.logits(hidden[2])  # (1, vocab): a draft that skipped the last two blocks
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0))
    p, q = sampler.probs(p_logits, 0), sampler.probs(q_logits, 0)
    draws = 20000
    counts = torch.zeros(p.shape[-1])
    for _ in range(draws):
        draft = sampler.draw(q)
        accepted, token = accept_sampled(sampler, [draft], [q], [p, p])
        counts[draft if accepted else token] += 1
    expected = p[0] * draws
    big = expected >= 5  # the rest lumped into one bin, as the test's approximation needs
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    wanted = torch.cat([expected[big], expected[~big].sum()[None]])
    statistic = float(((observed - wanted) ** 2 / wanted).sum())
    assert statistic < _chi_square_critical(len(observed) - 1), statistic
    assert float((q[0] - p[0]).abs().sum()) > 0.2  # the draft really differs: the test is not trivially passed


def test_depth_is_zero_when_a_round_trip_is_cheap_and_deep_when_it_is_dear() -> None:
    assert expected_tokens([0.5], 2) == 1.75  # 1 + 0.5 + 0.25
    assert expected_tokens([0.4, 0.8], 3) == pytest.approx(1 + 0.4 + 0.32 + 0.256)
    steady = [0.7] * 8

    def flat(ms: float) -> Callable[[int], float]:
        return lambda k: ms
    assert choose_depth(steady, draft_ms=2.0, round_ms=flat(3.0), max_depth=8) == 0  # loopback: drafts cost more
    assert choose_depth(steady, draft_ms=2.0, round_ms=flat(60.0), max_depth=8) >= 4  # a 50 ms link
    assert choose_depth([0.05], draft_ms=2.0, round_ms=flat(60.0), max_depth=8) == 0  # drafts never accepted
    # a hard first draft and easy ones after it (runs of easy text) pay for deeper rounds than one chance for all
    uniform = choose_depth([0.4] * 8, draft_ms=4.0, round_ms=flat(25.0), max_depth=8)
    assert uniform <= 1 and choose_depth([0.4, 0.8], draft_ms=4.0, round_ms=flat(25.0), max_depth=8) >= 3
    # rounds whose verify grows with the positions it carries (a slow edge's back blocks and head) pay less
    assert choose_depth(steady, draft_ms=2.0, round_ms=lambda k: 10.0 + 8.0 * k, max_depth=8) == 0


def test_auto_learns_from_its_rounds_and_still_looks_now_and_then() -> None:
    tuner = DepthTuner(first_depth=4, explore_every=4)
    assert tuner.depth() == 4  # nothing measured yet
    tuner.observe(drafted=4, accepted=0, draft_ms=2.0, round_ms=3.0)
    assert tuner.accept[0] == 0.0 and tuner.accept[1] is None  # only the first draft was judged
    assert tuner.depth() == 0  # a plain step is timed before anything is chosen
    tuner.observe_plain(3.0)
    depths = [tuner.depth() for _ in range(60)]
    looks = [i for i, d in enumerate(depths) if d]
    assert set(depths) == {0, 4} and len(looks) == 4  # off, but still looking now and then
    gaps = [b - a for a, b in zip(looks, looks[1:], strict=False)]
    assert gaps == [8, 16, 32]  # less often each time it still does not pay
    for _ in range(30):  # the link turns slow and drafts right
        tuner.observe(drafted=4, accepted=4, draft_ms=2.0, round_ms=60.0)
        tuner.observe_plain(55.0)
    depths = [tuner.depth() for _ in range(8)]
    assert depths.count(0) <= 2 and max(depths) >= 4  # mostly deep


def test_auto_believes_what_rounds_gave_over_what_it_predicted() -> None:
    tuner = DepthTuner(max_depth=2, first_depth=2, explore_every=100)
    tuner.observe_plain(10.0)
    tuner.observe(drafted=2, accepted=2, draft_ms=1.0, round_ms=10.0, total_ms=40.0)  # the catch-up cost 28 ms
    assert tuner.depth() == 0  # predicted 3 tokens in 12 ms, measured 3 in 40: a plain step's 1 in 10 wins


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_draft_model_drafts_and_the_output_is_still_the_models(models: dict[str, LoadedModel],
                                                                 family: str) -> None:
    loaded = models[family]
    plan = Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32")
    other = tiny_model(family, layers=1, seed=5)  # another small model with the same token ids
    itself = DraftModel(loaded, TorchRunner(loaded.layered))  # the model drafting for itself: always right
    for draft, always_right in ((DraftModel(other, TorchRunner(other.layered)), False), (itself, True)):
        orchestrator = Orchestrator(loaded, plan, in_process_cloud(loaded), speculate=4, draft=draft)
        done = list(orchestrator.generate(GenerationRequest(prompt_ids=PROMPT, max_tokens=N)))[-1]
        assert isinstance(done, Finished) and done.speculation is not None
        assert done.token_ids == reference_tokens(loaded, PROMPT, N)
        if always_right:
            assert done.speculation.accepted == done.speculation.drafted > 0


def test_a_draft_model_with_another_tokenizer_is_refused(models: dict[str, LoadedModel], tmp_path: Path) -> None:
    loaded = models["gpt2"]
    tokenizer = train_byte_level_bpe(["quite another text, in quite another vocabulary " * 20], 300, 1)
    config = tiny_config("gpt2", len(tokenizer), layers=1, eos_token_id=tokenizer.eos_token_id)
    path = save_checkpoint(from_config(config, seed=0, tokenizer=tokenizer, name="other"), tmp_path / "other")
    with pytest.raises(UserError, match="tokenizer") as refused:
        DraftModel.load(path, loaded)
    assert refused.value.param == "draft_model"
