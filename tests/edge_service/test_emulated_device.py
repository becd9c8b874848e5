"""How many generations compute at once on the edge: one at a time on an emulated slow device, else up to the bound."""

from __future__ import annotations

import time
import types
from concurrent.futures import ThreadPoolExecutor

import pytest

import edge_service.orchestrator as orchestrator_module
from edge_service.orchestrator import Finished, GenerationRequest, Orchestrator
from edgesplit.tools.inprocess import in_process_cloud
from splitcore.loading import LoadedModel
from splitcore.plan import Plan
from tests.fakes import slowed_forwards
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


def test_generations_on_the_edge_share_forwards(models: dict[str, LoadedModel],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Without emulation, the steps of generations running at once are batched, and each generation's tokens are
    the ones it gets alone."""
    loaded = models["gpt2"]
    rows = slowed_forwards(monkeypatch, 0.005)  # long enough for the other generations to queue
    orch = Orchestrator(loaded, Plan(num_layers=4, cut_a=4, cut_b=4), None)
    prompts = [[5, 6], [7, 8, 9], [10], [11, 12, 13, 14], [15, 16], [17]]

    def tokens(prompt: list[int]) -> list[int]:
        done = list(orch.generate(GenerationRequest(prompt_ids=prompt, max_tokens=6)))[-1]
        assert isinstance(done, Finished)
        return done.token_ids
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(tokens, prompts))
    assert max(rows) > 1
    assert together == [tokens(p) for p in prompts]
