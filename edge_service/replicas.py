"""Where each session of this edge lives on a replicated cloud (`cloud_service.ray_app`): the replica that
took it and that replica's own address, learnt from the answers' headers (`splitcore.replicas`). Empty for a
single cloud, whose answers name no replica.

`CloudClient` asks `route(session)` before each frame: a session a replica holds goes to that replica's own
address, if it gave one that this edge can reach, else through the cloud's proxy with the session header.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from splitcore.replicas import REPLICA_HEADER, REPLICA_URL_HEADER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A session's replica, and its address when frames may go straight there (else None: through the proxy)."""

    replica: str
    url: str | None


class ReplicaSessions:
    """The replica of each live session, the sessions each replica took, the replicas' addresses that work from
    here and those that do not. Thread-safe (generations run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._of: dict[uuid.UUID, Route] = {}
        self._reached: set[str] = set()  # replicas' own addresses that have answered this edge
        self._unreachable: set[str] = set()  # addresses that never did: their sessions go through the proxy
        self.sessions: Counter[str] = Counter()  # sessions each replica took (a replayed session counts again)
        self.on_new: Callable[[str], None] | None = None  # told each replica that takes a session (metrics)

    @property
    def replicated(self) -> bool:
        """Whether the cloud has answered as a replica (it is replicated)."""
        return bool(self.sessions)

    def route(self, session: uuid.UUID | None) -> Route | None:
        """Where `session`'s next frame goes; None for a session no replica holds yet (or no session)."""
        with self._lock:
            route = self._of.get(session) if session is not None else None
            if route is not None and route.url in self._unreachable:
                return Route(route.replica, None)
            return route

    def answered(self, session: uuid.UUID | None, headers: Mapping[str, str], direct: bool) -> None:
        """A frame of `session` was answered with `headers`; `direct`: at the replica's own address."""
        replica = headers.get(REPLICA_HEADER)
        if replica is None or session is None:
            return
        route = Route(replica, headers.get(REPLICA_URL_HEADER))
        with self._lock:
            if direct and route.url is not None:
                self._reached.add(route.url)
            if self._of.get(session) == route:
                return
            new = self._of.get(session, Route("", None)).replica != replica
            self._of[session] = route
            if new:
                self.sessions[replica] += 1
        if new and self.on_new is not None:
            self.on_new(replica)

    def reached(self, url: str) -> None:
        """A replica's own address answered (over its frame channel)."""
        with self._lock:
            self._reached.add(url)

    def direct_failed(self, url: str) -> None:
        """A replica's own address failed. One that never answered is not reachable from here (a private
        network): its replica's sessions go through the proxy from now on. One that did has lost its replica."""
        with self._lock:
            if url in self._reached:
                return
            self._unreachable.add(url)
        log.warning("a replica's own address %s does not answer this edge; its sessions go through the proxy", url)

    def ended(self, session: uuid.UUID) -> None:
        with self._lock:
            self._of.pop(session, None)
