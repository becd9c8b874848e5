"""The Optuna search against the exact optimum, on hundreds of seeded random scenarios."""

from __future__ import annotations

import random
import warnings

import pytest

from partitioner.costmodel import Workload
from partitioner.search import Constraints, InfeasibleError, exact_best, pareto_front, plan_space, search
from profiling.link_estimator import Link
from profiling.synthetic import random_profiles, synthetic_profile

SCENARIOS = 200
CODEC_LOSS = {"fp16": 0.0, "bf16": 0.001, "int8": 0.01}


def scenario(seed: int) -> tuple:
    rng = random.Random(seed)
    edge, cloud = random_profiles(rng, rng.choice([4, 6, 8, 12]))
    link = Link(bandwidth_bps=10 ** rng.uniform(5.5, 9), rtt_ms=rng.uniform(0.5, 150), overhead_ms=rng.uniform(0.2, 2))
    workload = Workload(prompt_tokens=rng.choice([16, 128, 512]), output_tokens=rng.choice([8, 64, 256]))
    c = Constraints(edge_memory_bytes=rng.choice([None, int(rng.uniform(40e6, 120e6))]),
                    min_edge_layers=rng.choice([0, 0, 1, 2]), allow_tokens_off_device=rng.random() < 0.5,
                    codec_loss=CODEC_LOSS, max_codec_loss=rng.choice([None, 0.005]))
    return edge, cloud, link, workload, c


def violates(plan, estimate, c: Constraints) -> bool:  # noqa: ANN001
    return ((c.edge_memory_bytes is not None and estimate.edge_memory_bytes > c.edge_memory_bytes)
            or (plan.uses_cloud and plan.cut_a < c.min_edge_layers)
            or (plan.tokens_leave_device and not c.allow_tokens_off_device)
            or (plan.uses_cloud and c.max_codec_loss is not None and plan.codec != "fp32"
                and c.codec_loss[plan.codec] > c.max_codec_loss))


@pytest.mark.e2e  # 200 searches against exhaustive enumeration: about 4 minutes, so out of the fast loop
def test_the_search_is_within_one_percent_of_the_exact_optimum_and_never_breaks_a_constraint() -> None:
    warnings.filterwarnings("ignore")
    close = feasible = 0
    for seed in range(SCENARIOS):
        edge, cloud, link, workload, c = scenario(seed)
        try:
            exact = exact_best(edge, cloud, link, workload, c)
        except InfeasibleError:
            with pytest.raises(InfeasibleError):
                search(edge, cloud, link, workload, c, seed=seed)
            continue
        found = search(edge, cloud, link, workload, c, seed=seed).best
        assert not violates(found.plan, found.estimate, c), f"seed {seed}: {found.plan.describe()}"
        assert found.estimate.total_ms >= exact.estimate.total_ms - 1e-9
        feasible += 1
        close += found.estimate.total_ms <= 1.01 * exact.estimate.total_ms
    assert feasible >= SCENARIOS // 2
    assert close >= 0.95 * feasible, f"{close}/{feasible} within 1%"


def test_the_search_is_reproducible_for_a_seed() -> None:
    edge, cloud, link, workload, c = scenario(7)
    assert search(edge, cloud, link, workload, c, seed=3).best == search(edge, cloud, link, workload, c, seed=3).best


def test_a_fast_link_and_a_slow_device_send_the_work_to_the_cloud() -> None:
    edge = synthetic_profile("edge", [20.0] * 8)
    cloud = synthetic_profile("cloud", [1.0] * 8)
    fast = Link(bandwidth_bps=1e9, rtt_ms=1.0)
    best = exact_best(edge, cloud, fast, Workload(), Constraints(min_edge_layers=1)).plan
    assert (best.cut_a, best.cut_b) == (1, 8)
    down = Link(bandwidth_bps=1e4, rtt_ms=2000.0)
    assert not exact_best(edge, cloud, down, Workload(), Constraints()).plan.uses_cloud


def test_an_infeasible_memory_budget_names_the_binding_constraint() -> None:
    edge, cloud, link, workload, _ = scenario(1)
    c = Constraints(edge_memory_bytes=1000, min_edge_layers=2)
    with pytest.raises(InfeasibleError, match="device memory budget") as err:
        search(edge, cloud, link, workload, c)
    assert "min_edge_layers=2" in str(err.value)
    with pytest.raises(InfeasibleError, match="exceeds the model"):
        exact_best(edge, cloud, link, workload, Constraints(min_edge_layers=99))


def test_privacy_keeps_tokens_on_the_device() -> None:
    assert not any(p.tokens_leave_device for p in plan_space(6, Constraints()))
    assert any(p.tokens_leave_device for p in plan_space(6, Constraints(allow_tokens_off_device=True)))
    assert all(p.cut_a >= 3 or not p.uses_cloud for p in plan_space(6, Constraints(min_edge_layers=3)))


def test_the_pareto_front_trades_latency_for_device_memory() -> None:
    warnings.filterwarnings("ignore")
    edge = synthetic_profile("edge", [3.0] * 8)  # a device only 3x slower, behind a slow link
    cloud = synthetic_profile("cloud", [1.0] * 8)
    front = pareto_front(edge, cloud, Link(bandwidth_bps=1e6, rtt_ms=150), Workload(), Constraints())
    keys = [(ch.estimate.total_ms, ch.estimate.edge_memory_bytes, ch.estimate.bytes_per_token) for ch in front]
    assert len(front) >= 2
    for k in keys:
        assert not any(all(x <= y for x, y in zip(o, k, strict=True)) and o != k for o in keys), "dominated"
    fastest = min(front, key=lambda ch: ch.estimate.total_ms)
    smallest = min(front, key=lambda ch: ch.estimate.edge_memory_bytes)
    assert not fastest.plan.uses_cloud and smallest.plan.uses_cloud
    assert smallest.estimate.edge_memory_bytes < fastest.estimate.edge_memory_bytes


def test_the_search_picks_each_tiers_runtime_where_it_is_faster() -> None:
    from profiling.synthetic import with_runtime

    edge = with_runtime(synthetic_profile("edge", [8.0] * 6), "onnxruntime", speedup=2.0)
    cloud = with_runtime(synthetic_profile("cloud", [1.0] * 6), "onnxruntime", speedup=0.5)  # slower there
    link, workload = Link(bandwidth_bps=1e8, rtt_ms=5), Workload(prompt_tokens=64, output_tokens=32)
    c = Constraints(min_edge_layers=2)
    best = exact_best(edge, cloud, link, workload, c)
    assert (best.plan.edge_backend, best.plan.cloud_backend) == ("onnxruntime", "torch")
    found = search(edge, cloud, link, workload, c, n_trials=150)
    assert found.best.estimate.total_ms <= best.estimate.total_ms * 1.01
    assert found.best.plan.edge_backend == "onnxruntime"
    assert found.baselines["edge-only"].plan.edge_backend == "onnxruntime"  # baselines are at their fastest too


def test_a_profile_without_other_runtimes_leaves_plans_on_each_tiers_default() -> None:
    edge, cloud = synthetic_profile("edge", [8.0] * 4), synthetic_profile("cloud", [1.0] * 4)
    assert {(p.edge_backend, p.cloud_backend) for p in plan_space(4, Constraints())} == {(None, None)}
    best = search(edge, cloud, Link(bandwidth_bps=1e8, rtt_ms=5), Workload(), Constraints(), n_trials=40).best
    assert best.plan.edge_backend is None and best.plan.cloud_backend is None


def test_the_search_weighs_speculation_depths_with_the_cuts() -> None:
    from profiling.acceptance import DraftProfile

    sizes = {"hidden_size": 256, "layer_weights_bytes": 20_000_000, "embed_weights_bytes": 5_000_000}
    edge = synthetic_profile("edge", [4.0] * 6, prefill_per_token=0.3, head_ms=1.0, **sizes)
    cloud = synthetic_profile("cloud", [0.5] * 6, prefill_per_token=0.05, head_ms=0.2, **sizes)
    work = Workload(prompt_tokens=32, output_tokens=64)
    # skipping the middle drafts well only when the cloud's part is short
    cuts = {f"{a}:{b}": [0.9 if b - a <= 3 else 0.2] * 8 for a in range(1, 5) for b in range(a + 1, 6)}
    drafts = DraftProfile(source="self", accept_by_cut=cuts, tokens=100)
    # the edge is too small for the model: every plan crosses the link
    small = Constraints(edge_memory_bytes=int(
        0.6 * (sum(edge.layer_weights_bytes) + edge.embed_weights_bytes + (edge.head_weights_bytes or 0))))
    slow = Link(bandwidth_bps=10e6, rtt_ms=80.0)
    found = search(edge, cloud, slow, work, small, drafts=drafts, seed=1)
    exact = exact_best(edge, cloud, slow, work, small, drafts=drafts)
    assert exact.speculate > 0 and exact.plan.cut_b - exact.plan.cut_a <= 3  # a cut that drafts well
    assert found.best.estimate.total_ms <= 1.01 * exact.estimate.total_ms
    plain = exact_best(edge, cloud, slow, work, small)
    assert plain.speculate == 0 and exact.estimate.total_ms < 0.6 * plain.estimate.total_ms
    assert found.best.describe().endswith(f"speculate {found.best.speculate}")
