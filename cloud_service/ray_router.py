"""Ray Serve's request router for the cloud's replicas: every frame of a session reaches the replica that holds
its KV cache.

The edge sends its session id in Ray Serve's session header (`splitcore.replicas.SESSION_HEADER`) with every frame
and with the session's end. A session's first frame goes where Ray Serve's own consistent-hash ring
(`ConsistentHashRouter`, over the replicas' ids) puts it; the router then remembers the replica that took it and
sends every later frame there, for as long as that replica lives. So a new replica (scaling up) takes new
sessions only and moves no live one, which a ring alone would do; a replica that dies or is scaled down leaves
the set, its sessions' next frames go to the ring's choice among the others, which answers "session not found",
and the edge rebuilds the session there by replaying its prefix (`edge_service.orchestrator`).

Routers of different proxies (one per node) agree on a session's first replica through the ring; the memory of
where a session went is per router, so a session's frames should go through one proxy (an edge talks to one
address), or, after a scale-up, some of them may meet a replica without its cache and be replayed.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter
from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica

log = logging.getLogger("ray.serve")  # the router runs in Ray's proxy: its log lines go with the proxy's

MAX_PINNED = 100_000  # sessions remembered at once, least recently used forgotten first


R = TypeVar("R", bound=Hashable)


class Pins(Generic[R]):
    """Which replica each session went to, forgotten after `ttl_s` unused or beyond `max_sessions` (least
    recently used first); keys are session ids, values Ray Serve replica ids (anything hashable)."""

    def __init__(self, ttl_s: float, max_sessions: int = MAX_PINNED) -> None:
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self._of: OrderedDict[str, tuple[R, float]] = OrderedDict()  # session -> (replica, last use)

    def __len__(self) -> int:
        return len(self._of)

    def get(self, session: str) -> R | None:
        pinned = self._of.get(session)
        return pinned[0] if pinned is not None else None

    def pin(self, session: str, replica: R, now: float) -> None:
        """`session`'s latest request went to `replica` at `now` (monotonic seconds)."""
        self._of[session] = (replica, now)
        self._of.move_to_end(session)
        while self._of:
            _, (_, used) = next(iter(self._of.items()))
            if now - used <= self.ttl_s and len(self._of) <= self.max_sessions:
                break
            self._of.popitem(last=False)

    def forget(self, replica: R) -> int:
        """Drop every session of `replica` (it died: their caches with it); how many there were."""
        gone = [k for k, (r, _) in self._of.items() if r == replica]
        for key in gone:
            del self._of[key]
        return len(gone)


class SessionRouter(ConsistentHashRouter):
    """Consistent hashing for a session's first frame, then the replica that took it for the rest."""

    def initialize_state(self, **kwargs: Any) -> None:
        """`session_ttl_s`: a session not seen this long is forgotten (the replicas drop its cache by then too);
        the rest goes to `ConsistentHashRouter` (`num_virtual_nodes`, `num_fallback_replicas`)."""
        self._pins: Pins[ReplicaID] = Pins(float(kwargs.pop("session_ttl_s", 300.0)))
        super().initialize_state(**kwargs)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        """The session's replica while it lives; otherwise the ring's choices (the first, then fallbacks)."""
        key = pending_request.metadata.session_id if pending_request is not None else ""
        pinned = self._pins.get(key) if key else None
        if pinned is not None and (replica := self._replicas.get(pinned)) is not None:
            assert pending_request is not None
            pending_request.routing_context.should_backoff = True  # a busy replica is waited for, not left
            return [[replica]]
        return await super().choose_replicas(candidate_replicas, pending_request)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        """Remember (or refresh) the replica a session's request went to."""
        if key := pending_request.metadata.session_id:
            self._pins.pin(key, replica_id, time.monotonic())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        """Forget the dead replica's sessions at once: their next frames go to the ring's choice, get "session
        not found" there, and are replayed by their edges."""
        super().on_replica_actor_died(replica_id)
        if forgotten := self._pins.forget(replica_id):
            log.warning("replica %s died with %d sessions; their edges replay them elsewhere", replica_id, forgotten)
