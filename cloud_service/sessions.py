"""The cloud's session store: one KV cache per edge session, with a TTL, LRU eviction and a memory cap.

A session belongs to the edge that opened it: to any other edge it does not exist (404, never a 409 with its
position). A session that was dropped is remembered (bounded) with the reason, so its edge is told "expired" or
"evicted for memory" rather than "unknown". Logs name a session by the first 8 hex digits of its id only.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from splitcore.backends import Runner, State
from splitcore.errors import CapacityError, SessionConflictError, SessionNotFoundError
from splitcore.ranges import LayerRange
from splitcore.sampling import Sampler
from splitcore.wire import FrameCodec, short_id

log = logging.getLogger(__name__)
_FORGOTTEN_KEPT = 4096  # how many dropped session ids keep their reason


@dataclass
class CloudSession:
    """One edge session's state on the cloud."""

    id: uuid.UUID
    layers: LayerRange
    state: State
    runner: Runner  # the runtime (torch or onnxruntime) this session's blocks run on
    codec: FrameCodec  # encodes this session's answers (its dtype and zstd level)
    sampler: Sampler | None  # set when the cloud holds the head
    request_id: str = ""
    owner: str = ""  # the edge that opened it (its token's name, or its address): the only one that may use it
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = 0.0
    step_start: int = 0  # where its latest step began: a rollback may cut back to just after it, no further


class SessionStore:
    """Thread-safe map of live sessions; `clock` is injectable for tests."""

    def __init__(self, ttl_s: float, max_sessions: int, max_cache_bytes: int,
                 clock: Callable[[], float] = time.monotonic, max_per_owner: int | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_per_owner = max_per_owner
        self.max_sessions = max_sessions
        self.max_cache_bytes = max_cache_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._live: OrderedDict[uuid.UUID, CloudSession] = OrderedDict()  # least recently used first
        self._forgotten: OrderedDict[uuid.UUID, tuple[str, str]] = OrderedDict()  # id -> (reason, owner)
        self.freed = 0  # sessions dropped since start, for giving their memory back (`splitcore.memory`)
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, sid: object) -> bool:
        return sid in self._live

    @property
    def cache_bytes(self) -> int:
        with self._lock:
            return sum(s.state.cache_bytes for s in self._live.values())

    def get(self, sid: uuid.UUID, owner: str = "") -> CloudSession:
        """The live session `sid` of edge `owner`, marked as just used.

        Raises:
            SessionNotFoundError: unknown, expired or evicted (the message says which), or another edge's.
        """
        with self._lock:
            self._expire_locked()
            session = self._live.get(sid)
            if session is None or session.owner != owner:
                reason, dropped_for = self._forgotten.get(sid, ("unknown", owner))
                reason = reason if session is None and dropped_for == owner else "unknown"
                raise SessionNotFoundError(f"session {short_id(sid)} is {reason} on the cloud; start it again "
                                           "from position 0")
            session.last_used = self._clock()
            self._live.move_to_end(sid)
            return session

    def add(self, session: CloudSession) -> None:
        """Register a new session, evicting idle least-recently-used ones when full.

        Raises:
            CapacityError: every held session is busy and the store is full, or its owner holds its limit.
        """
        with self._lock:
            self._expire_locked()
            if session.id in self._live:  # says nothing of the session: whose it is, where it stands
                raise SessionConflictError(f"session id {short_id(session.id)} is in use; open a new session")
            if self.max_per_owner is not None:
                held = sum(1 for s in self._live.values() if s.owner == session.owner)
                if held >= self.max_per_owner:
                    raise CapacityError(f"this edge already holds {held} live sessions, its limit; end some first")
            while len(self._live) >= self.max_sessions:
                if not self._evict_one_locked(keep=session.id, reason="evicted (too many sessions)"):
                    raise CapacityError(f"the cloud holds its maximum of {self.max_sessions} busy sessions")
            session.last_used = self._clock()
            self._live[session.id] = session

    def stepping(self) -> bool:
        """Whether any session is computing a step now."""
        with self._lock:
            return any(s.lock.locked() for s in self._live.values())

    def after_step(self, session: CloudSession) -> None:
        """Account the session's grown cache; evict others (LRU, idle) while over the memory cap."""
        session.state.measure()
        with self._lock:
            while sum(s.state.cache_bytes for s in self._live.values()) > self.max_cache_bytes:
                if not self._evict_one_locked(keep=session.id, reason="evicted (cloud cache memory cap)"):
                    break

    def remove(self, sid: uuid.UUID, reason: str = "ended", owner: str | None = None) -> bool:
        """Drop a session and its cache; False when it was not live, or (given `owner`) is another edge's."""
        with self._lock:
            session = self._live.get(sid)
            if session is None or (owner is not None and session.owner != owner):
                return False
            return self._drop_locked(sid, reason)

    def sweep(self) -> int:
        """Drop expired sessions now; returns how many."""
        with self._lock:
            return self._expire_locked()

    def _expire_locked(self) -> int:
        now, dropped = self._clock(), 0
        for sid in [sid for sid, s in self._live.items() if now - s.last_used > self.ttl_s]:
            if not self._live[sid].lock.locked():
                self._drop_locked(sid, f"expired (idle over {self.ttl_s:g} s)")
                dropped += 1
        return dropped

    def _evict_one_locked(self, keep: uuid.UUID, reason: str) -> bool:
        for sid, s in self._live.items():  # oldest use first
            if sid != keep and not s.lock.locked():
                self._drop_locked(sid, reason)
                self.evictions += 1
                log.info("session %s %s", short_id(sid), reason)
                return True
        return False

    def _drop_locked(self, sid: uuid.UUID, reason: str) -> bool:
        session = self._live.pop(sid, None)
        self.freed += session is not None
        self._forgotten[sid] = (reason, session.owner if session is not None else "")
        while len(self._forgotten) > _FORGOTTEN_KEPT:
            self._forgotten.popitem(last=False)
        return session is not None
