"""How many generations compute at once on the edge: one at a time on an emulated slow device, else up to the bound."""

from __future__ import annotations

import time
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

import edge_service.orchestrator as orchestrator_module
import splitcore.backends as backends_module  # where the torch runner calls run_range
from edge_service.orchestrator import Finished, GenerationRequest, Orchestrator
from edgesplit.tools.inprocess import in_process_cloud
from splitcore.loading import LoadedModel
from splitcore.plan import Plan
from tests.overlap import Overlap


@pytest.mark.parametrize("cut", [(4, 4), (1, 3)])  # edge-only; a split, whose cloud waits do not hold the device
def test_concurrent_generations_never_use_the_emulated_device_at_once(
        models: dict[str, LoadedModel], monkeypatch: pytest.MonkeyPatch, cut: tuple[int, int]) -> None:
    loaded = models["gpt2"]
    overlap = Overlap()
    sleep = overlap.wrap(lambda seconds: time.sleep(max(seconds, 0.005)))  # a floor, so overlaps would be seen
    monkeypatch.setattr(orchestrator_module, "time", types.SimpleNamespace(perf_counter=time.perf_counter,
                                                                          sleep=sleep))
    orch = Orchestrator(loaded, Plan(num_layers=4, cut_a=cut[0], cut_b=cut[1], codec="fp32"), in_process_cloud(loaded),
                        slowdown=3)

    def generate(_: int) -> Finished:
        done = list(orch.generate(GenerationRequest(prompt_ids=[5, 6, 7], max_tokens=8)))[-1]
        assert isinstance(done, Finished)
        return done

    with ThreadPoolExecutor(4) as pool:
        finished = list(pool.map(generate, range(4)))
    assert {tuple(f.token_ids) for f in finished} == {tuple(finished[0].token_ids)}
    assert overlap.calls >= 4 * 8  # every step slept
    assert overlap.most == 1


def test_the_edge_computes_at_most_its_bound_of_steps_at_once(models: dict[str, LoadedModel],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without emulation, generations compute in parallel up to `max_concurrent_steps`, never beyond."""
    loaded = models["gpt2"]
    overlap = Overlap()
    monkeypatch.setattr(backends_module, "run_range", overlap.wrap(backends_module.run_range, lambda: time.sleep(0.01)))
    orch = Orchestrator(loaded, Plan(num_layers=4, cut_a=4, cut_b=4), None, max_concurrent_steps=2)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: list(orch.generate(GenerationRequest(prompt_ids=[5, 6], max_tokens=6))), range(6)))
    assert overlap.most == 2
