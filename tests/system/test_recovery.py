"""A generation survives the cloud: a lost session is replayed, a failing cloud is left for the edge, exactly."""

from __future__ import annotations

import uuid

import pytest

from cloud_service.engine import ShardEngine
from edge_service.breaker import CloudBreaker
from edge_service.orchestrator import Finished, GenerationRequest, Orchestrator
from edgesplit.tools.inprocess import in_process_cloud
from splitcore.errors import CloudUnavailableError
from splitcore.loading import LoadedModel
from splitcore.plan import Plan
from splitcore.testing import reference_tokens
from tests.fakes import Clock

SPLIT = dict(cut_a=1, cut_b=3, codec="fp32")


class FlakyCloud:
    """The real in-process engine, with a fault injected at one decode step (the `after`-th frame)."""

    def __init__(self, engine: ShardEngine, after: int, fault: str) -> None:
        self.engine, self.after, self.fault, self.frames = engine, after, fault, 0
        self.sessions: list[uuid.UUID] = []

    def forward(self, frame: bytes, *, timeout_s: float | None = None, session: object = None) -> bytes:
        self.frames += 1
        if self.frames == self.after:
            if self.fault == "lose":  # as a restarted cloud does: every session is gone
                for sid in list(self.engine.store._live):
                    self.engine.end(sid)
            else:
                raise CloudUnavailableError("cloud at test is unreachable: connection refused")
        return self.engine.forward(frame)

    def end_session(self, session: uuid.UUID) -> None:
        self.engine.end(session)


def run(loaded: LoadedModel, cloud: FlakyCloud, fallback: bool, ids: list[int], n: int,
        breaker: CloudBreaker | None = None) -> Finished:
    plan = Plan(num_layers=loaded.layered.num_layers, **SPLIT)  # type: ignore[arg-type]
    orch = Orchestrator(loaded, plan, cloud, fallback=fallback, breaker=breaker)
    done = list(orch.generate(GenerationRequest(prompt_ids=ids, max_tokens=n)))[-1]
    assert isinstance(done, Finished)
    return done


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_session_the_cloud_lost_is_rebuilt_by_replaying_the_prefix(models: dict[str, LoadedModel],
                                                                     family: str) -> None:
    loaded = models[family]
    ids = loaded.tokenizer.encode("the cloud restarted")
    cloud = FlakyCloud(in_process_cloud(loaded), after=5, fault="lose")
    done = run(loaded, cloud, fallback=False, ids=ids, n=12)
    assert done.token_ids == reference_tokens(loaded, ids, 12)
    assert done.replays == 1 and done.fallback is None and done.plan.uses_cloud
    assert len(cloud.engine.store) == 0  # the replayed session was ended too


def test_a_failing_cloud_is_left_for_the_edge_when_fallback_is_allowed(models: dict[str, LoadedModel]) -> None:
    loaded = models["gpt2"]
    ids = loaded.tokenizer.encode("the cloud died")
    breaker = CloudBreaker(base_s=60)
    done = run(loaded, FlakyCloud(in_process_cloud(loaded), after=4, fault="fail"), True, ids, 12, breaker)
    assert done.token_ids == reference_tokens(loaded, ids, 12)
    assert done.fallback and "unreachable" in done.fallback and not done.plan.uses_cloud
    assert breaker.open  # and the next generation does not try the cloud
    cloud = FlakyCloud(in_process_cloud(loaded), after=10**6, fault="fail")
    again = run(loaded, cloud, True, ids, 4, breaker)
    assert cloud.frames == 0 and again.fallback and again.token_ids == reference_tokens(loaded, ids, 4)


def test_without_fallback_a_failing_cloud_fails_the_generation(models: dict[str, LoadedModel]) -> None:
    loaded = models["gpt2"]
    with pytest.raises(CloudUnavailableError, match="unreachable"):
        run(loaded, FlakyCloud(in_process_cloud(loaded), after=3, fault="fail"), False, [1, 2, 3], 8)


def test_the_breaker_backs_off_exponentially_up_to_a_cap_and_closes_on_success() -> None:
    clock = Clock()
    b = CloudBreaker(base_s=1, cap_s=5, clock=clock)
    assert [b.failed() for _ in range(5)] == [1, 2, 4, 5, 5]
    assert b.open
    clock.now += 5.1
    assert not b.open
    b.failed()
    b.succeeded()
    assert not b.open and b.failures == 0

