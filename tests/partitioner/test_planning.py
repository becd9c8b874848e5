"""Gathering a search's inputs in one place, and the constraints an operator's limits give."""

from __future__ import annotations

import pytest

from partitioner.costmodel import Workload
from partitioner.planning import PlanInputs, plan_for
from partitioner.search import Constraints
from profiling.link_estimator import Link, LinkEstimator
from profiling.synthetic import synthetic_profile
from splitcore.errors import PlanError
from splitcore.loading import LoadedModel


class FakeCloud:
    """A cloud that answers with a profile and probes over a 10 Mbit/s, 20 ms link; counts what it was asked."""

    def __init__(self) -> None:
        self.profile_calls, self.probes = 0, []

    def profile(self) -> dict:
        self.profile_calls += 1
        return synthetic_profile("cloud", [1.0] * 4, hidden_size=64).model_dump()

    def probe(self, nbytes: int) -> float:
        self.probes.append(nbytes)
        return 20.0 + nbytes * 8 / 10e6 * 1000


EDGE = synthetic_profile("edge", [8.0] * 4, hidden_size=64)


def test_gather_fetches_the_profile_probes_the_link_and_measures_losses_only_when_asked(
        models: dict[str, LoadedModel]) -> None:
    cloud = FakeCloud()
    inputs = PlanInputs.gather(EDGE, cloud, LinkEstimator())
    assert cloud.profile_calls == 1 and len(cloud.probes) == 8 and inputs.codec_loss == {}
    assert inputs.link.rtt_ms == pytest.approx(20.0, abs=0.01)
    assert inputs.link.bandwidth_bps == pytest.approx(10e6, rel=1e-3)
    measured = PlanInputs.gather(EDGE, inputs.cloud, Link(bandwidth_bps=1e6, rtt_ms=5), models["gpt2"])
    assert measured.cloud is inputs.cloud and set(measured.codec_loss) == {"fp16", "bf16", "int8"}


def test_plan_for_applies_the_measured_losses_to_the_codec_limit() -> None:
    lossy = PlanInputs(EDGE, EDGE.model_copy(update={"device_name": "cloud"}), Link(bandwidth_bps=1e5, rtt_ms=1),
                       codec_loss={"fp16": 0.5, "bf16": 0.5, "int8": 0.5})
    limit = Constraints.from_limits(min_edge_layers=1, max_codec_loss=0.01)
    best = plan_for(lossy, Workload(), limit).best.plan
    assert not best.uses_cloud or best.codec == "fp32"  # every lossy codec is over the limit
    other = lossy.on(Link(bandwidth_bps=1e9, rtt_ms=1))
    assert other.link.bandwidth_bps == 1e9 and other.codec_loss == lossy.codec_loss


def test_plan_for_refuses_profiles_of_two_models() -> None:
    cloud = EDGE.model_copy(update={"fingerprint": "another", "model_name": "other"})
    with pytest.raises(PlanError, match="profile one model"):
        plan_for(PlanInputs(EDGE, cloud, Link(bandwidth_bps=1e6, rtt_ms=1)), Workload(), Constraints())


def test_constraints_from_limits_in_mib_and_narrowed_by_a_search_keep_privacy() -> None:
    c = Constraints.from_limits(edge_memory_mb=2.5, min_edge_layers=1, allow_tokens_off_device=False,
                                max_codec_loss=0.02)
    assert c == Constraints(edge_memory_bytes=2_621_440, min_edge_layers=1, max_codec_loss=0.02)
    assert Constraints.from_limits(edge_memory_mb=None).edge_memory_bytes is None
    narrowed = c.narrowed(edge_memory_mb=1, min_edge_layers=3)
    assert narrowed == c.model_copy(update={"edge_memory_bytes": 2**20, "min_edge_layers": 3})
    assert c.narrowed() == c and narrowed.allow_tokens_off_device is False
