"""Both tiers in one process, without HTTP: the real orchestrator over the real shard engine.

The golden tests, the codec-accuracy benchmark and the shipped model's check run a split this way, so a
difference from the unsplit model is the split's, not the transport's.
"""

from __future__ import annotations

from cloud_service.engine import ShardEngine
from cloud_service.sessions import SessionStore
from edge_service.orchestrator import Finished, GenerationRequest, Orchestrator
from splitcore.backends import Runners
from splitcore.loading import LoadedModel
from splitcore.plan import Plan


def in_process_cloud(loaded: LoadedModel, runners: Runners | None = None) -> ShardEngine:
    """A cloud engine over `loaded` with a session store of its own (8 sessions, 1 GiB of cache, kept a minute)."""
    return ShardEngine(loaded, SessionStore(ttl_s=60, max_sessions=8, max_cache_bytes=2**30), runners=runners)


def split_generate(loaded: LoadedModel, plan: Plan, prompt: list[int], n: int, runners: Runners | None = None
                   ) -> Finished:
    """One greedy generation through `plan`, edge and cloud in process; checks the cloud freed its session."""
    engine = in_process_cloud(loaded, runners)
    orchestrator = Orchestrator(loaded, plan, engine, runners=runners)
    events = list(orchestrator.generate(GenerationRequest(prompt_ids=prompt, max_tokens=n)))
    assert len(engine.store) == 0, "the cloud session must be freed when the generation ends"
    done = events[-1]
    assert isinstance(done, Finished)
    return done
