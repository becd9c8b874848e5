"""Re-planning on link changes: hysteresis, atomic switches, generations finishing on the plan they started with."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloud_service.app import create_app as create_cloud
from cloud_service.settings import CloudSettings
from edge_service.cloud_client import CloudClient
from edge_service.metrics import EdgeMetrics
from edge_service.orchestrator import Finished, GenerationRequest, Orchestrator
from edge_service.replanner import Replanner, link_moved
from edge_service.settings import EdgeSettings
from partitioner.planning import PlanInputs
from profiling.link_estimator import Link, LinkEstimator
from profiling.synthetic import synthetic_profile
from splitcore.loading import LoadedModel
from splitcore.plan import Plan
from splitcore.testing import reference_tokens
from tests.fakes import Clock
from tests.servers import LoopbackServer

GOOD, BAD = (1e9, 1.0), (2e6, 150.0)  # (bits/s, rtt ms)


@pytest.fixture(scope="module")
def cloud_url(models: dict[str, LoadedModel]) -> Iterator[str]:
    with LoopbackServer(create_cloud(CloudSettings(), models["gpt2"])) as url:
        yield url


def feed(est: LinkEstimator, clock: Clock, link: tuple[float, float], rounds: int = 4, jitter: float = 0.0) -> None:
    """Exchanges of a probe's two sizes over `link`, 0.25 s apart, RTT stretched by +-`jitter` alternately."""
    bandwidth, rtt = link
    for i in range(rounds):
        for nbytes in (64, 65536):
            wobble = 1 + (jitter if i % 2 else -jitter)
            est.observe(nbytes, rtt * wobble + nbytes * 8 / bandwidth * 1000)
            clock.now += 0.25


def make(models: dict[str, LoadedModel], cloud_url: str, **settings: object
         ) -> tuple[Replanner, LinkEstimator, Clock]:
    loaded = models["gpt2"]
    n = loaded.layered.num_layers
    clock = Clock()
    est = LinkEstimator(clock=clock, max_age_s=3.0)
    cloud = CloudClient(cloud_url)
    orchestrator = Orchestrator(loaded, Plan(num_layers=n, cut_a=n, cut_b=n), cloud, est.observe)
    edge = synthetic_profile("edge", [8.0] * n, hidden_size=64, head_ms=2.0)  # a device 8x slower than the cloud
    cloud_profile = synthetic_profile("cloud", [1.0] * n, hidden_size=64, head_ms=0.25)
    s = EdgeSettings(cloud_url=cloud_url, cut="auto", codec="fp32", plan_workload="32:16", **settings)  # type: ignore[arg-type]
    inputs = PlanInputs(edge, cloud_profile, Link(bandwidth_bps=GOOD[0], rtt_ms=GOOD[1]))
    return Replanner(s, orchestrator, cloud, est, EdgeMetrics(), inputs), est, clock


def settle(rp: Replanner, est: LinkEstimator, clock: Clock, link: tuple[float, float], ticks: int = 4,
           jitter: float = 0.0) -> list:
    changes = []
    for _ in range(ticks):
        feed(est, clock, link, jitter=jitter)
        if change := rp.tick():
            changes.append(change)
    return changes


def test_link_moves_count_only_beyond_the_threshold_and_the_rtt_floor() -> None:
    base = Link(bandwidth_bps=100e6, rtt_ms=2.0)
    assert not link_moved(Link(bandwidth_bps=80e6, rtt_ms=2.5), base, 1.5, 3.0)
    assert not link_moved(Link(bandwidth_bps=100e6, rtt_ms=4.5), base, 1.5, 3.0)  # 2.5 ms: under the floor
    assert link_moved(Link(bandwidth_bps=100e6, rtt_ms=40.0), base, 1.5, 3.0)
    assert link_moved(Link(bandwidth_bps=10e6, rtt_ms=2.0), base, 1.5, 3.0)


def test_a_degraded_link_moves_the_plan_to_the_edge_and_back(models: dict[str, LoadedModel], cloud_url: str) -> None:
    rp, est, clock = make(models, cloud_url)
    first = settle(rp, est, clock, GOOD)
    assert [c.reason for c in first] == ["start"] and rp.plan.uses_cloud
    down = settle(rp, est, clock, BAD)
    assert len(down) == 1 and down[0].reason == "link" and not rp.plan.uses_cloud
    assert down[0].predicted_new_ms < down[0].predicted_old_ms
    up = settle(rp, est, clock, GOOD, ticks=6)
    assert len(up) == 1 and rp.plan.uses_cloud
    assert [c.reason for c in rp.changes] == ["start", "link", "link"]


def test_a_noisy_link_does_not_flap_the_plan(models: dict[str, LoadedModel], cloud_url: str) -> None:
    rp, est, clock = make(models, cloud_url)
    settle(rp, est, clock, GOOD)
    planned = rp.plan
    assert settle(rp, est, clock, (1e9, 1.0), ticks=20, jitter=0.3) == [] and rp.plan == planned


def test_a_one_check_blip_is_not_enough(models: dict[str, LoadedModel], cloud_url: str) -> None:
    rp, est, clock = make(models, cloud_url, replan_confirmations=3)
    settle(rp, est, clock, GOOD)
    planned = rp.plan
    clock.now += 10  # the good samples age out
    feed(est, clock, BAD)
    assert rp.tick() is None  # moved once
    clock.now += 10
    assert settle(rp, est, clock, GOOD, ticks=3) == [] and rp.plan == planned


def test_a_generation_finishes_on_the_plan_it_started_with(models: dict[str, LoadedModel], cloud_url: str) -> None:
    rp, est, clock = make(models, cloud_url)
    loaded = models["gpt2"]
    ids = loaded.tokenizer.encode("switching plans mid-stream")
    ref = reference_tokens(loaded, ids, 12)
    n = loaded.layered.num_layers
    old = Plan(num_layers=n, cut_a=1, cut_b=3, codec="fp32")
    rp.switch(old, "admin")
    running = rp.orchestrator.generate(GenerationRequest(prompt_ids=ids, max_tokens=12))
    next(running)  # prompt and first token done on the old plan
    new = Plan(num_layers=n, cut_a=2, cut_b=4, codec="fp32")
    assert rp.switch(new, "admin") is not None and rp.plan == new
    done = list(running)[-1]
    assert isinstance(done, Finished) and done.plan == old and done.token_ids == ref
    again = list(rp.orchestrator.generate(GenerationRequest(prompt_ids=ids, max_tokens=12)))[-1]
    assert isinstance(again, Finished) and again.plan == new and again.token_ids == ref
