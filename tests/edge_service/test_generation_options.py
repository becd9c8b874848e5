"""vLLM's generation options on the orchestrator: `min_tokens`, `ignore_eos`, `stop_token_ids`, log-probabilities,
with the head on the edge and in the cloud (which samples with what the session's first frame says)."""

from __future__ import annotations

import pytest

from edge_service.generation import Finished, GenerationRequest
from edge_service.orchestrator import Orchestrator
from edgesplit.tools.inprocess import in_process_cloud
from splitcore.errors import UserError
from splitcore.loading import LoadedModel
from splitcore.plan import Plan

PROMPT = list(range(30, 41))


def _run(loaded: LoadedModel, plan: Plan, **options: object) -> Finished:
    orchestrator = Orchestrator(loaded, plan, in_process_cloud(loaded))
    request = GenerationRequest(prompt_ids=PROMPT, max_tokens=8, **options)  # type: ignore[arg-type]
    done = list(orchestrator.generate(request))[-1]
    assert isinstance(done, Finished)
    return done


@pytest.mark.parametrize("head", ["edge", "cloud"])
def test_min_tokens_keeps_a_stop_token_from_ending_the_generation_early(models: dict[str, LoadedModel],
                                                                        head: str) -> None:
    loaded = models["gpt2"]
    plan = Plan(num_layers=4, cut_a=1, cut_b=3 if head == "edge" else 4, head=head, codec="fp32")
    free = _run(loaded, plan).token_ids
    first = free[0]
    assert _run(loaded, plan, stop_token_ids=(first,)).token_ids == [first]  # the stop id ends it at once
    held = _run(loaded, plan, stop_token_ids=(first,), min_tokens=3).token_ids
    assert first not in held[:3] and len(held) >= 3


def test_ignore_eos_generates_past_the_end_of_sequence(models: dict[str, LoadedModel]) -> None:
    loaded = models["gpt2"]
    plan = Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32")
    first = _run(loaded, plan).token_ids[0]
    config = loaded.layered.model.generation_config
    before, config.eos_token_id = config.eos_token_id, first
    try:
        assert _run(loaded, plan).token_ids == [first]
        assert len(_run(loaded, plan, ignore_eos=True).token_ids) == 8
    finally:
        config.eos_token_id = before


def test_logprobs_with_the_head_in_the_cloud_are_refused_naming_the_field(models: dict[str, LoadedModel]) -> None:
    loaded = models["gpt2"]
    with pytest.raises(UserError) as refused:
        _run(loaded, Plan(num_layers=4, cut_a=1, cut_b=4, head="cloud", codec="fp32"), logprobs=2)
    assert refused.value.param == "logprobs"
    assert len(_run(loaded, Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32"), logprobs=2).logprobs) == 8


def test_an_exchange_that_opened_the_cloud_connection_is_not_a_link_sample(models: dict[str, LoadedModel]) -> None:
    import time

    loaded = models["gpt2"]
    engine = in_process_cloud(loaded)
    seen: list[int] = []

    class Reconnecting:  # a cloud link whose connection opens during every other exchange
        connected_at = 0.0
        calls = 0

        def forward(self, frame: bytes, *, timeout_s: float | None = None, session: object = None) -> bytes:
            self.calls += 1
            if self.calls % 2:
                self.connected_at = time.perf_counter()
            return engine.forward(frame)

        def end_session(self, session: object) -> None:
            engine.end_session(session)  # type: ignore[arg-type]

    link = Reconnecting()
    orchestrator = Orchestrator(loaded, Plan(num_layers=4, cut_a=1, cut_b=3, codec="fp32"), link,
                                link_observer=lambda nbytes, ms, compute: seen.append(nbytes))
    list(orchestrator.generate(GenerationRequest(prompt_ids=PROMPT, max_tokens=6)))
    assert link.calls == 6 and len(seen) == 3  # the three exchanges that did not open a connection
