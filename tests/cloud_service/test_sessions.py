"""The cloud session store: TTL, LRU eviction, memory cap, and saying why a session is gone."""

from __future__ import annotations

import uuid

import pytest
import torch
from transformers import DynamicCache

from cloud_service.sessions import CloudSession, SessionStore
from splitcore.backends import TorchRunner
from splitcore.errors import CapacityError, SessionConflictError, SessionNotFoundError
from splitcore.ranges import LayerRange
from splitcore.shard import ShardState
from splitcore.testing import tiny_model
from splitcore.wire import FrameCodec
from tests.fakes import Clock

RUNNER = TorchRunner(tiny_model("gpt2", layers=1).layered)  # the store never runs it


def session(n: int, cache_bytes: int = 0) -> CloudSession:
    state = ShardState(DynamicCache())
    if cache_bytes:
        kv = torch.zeros(1, 1, cache_bytes // 8, 1)  # (batch, heads, seq, head_dim) fp32: keys + values = cache_bytes
        state.cache.update(kv, kv.clone(), 0)
    return CloudSession(id=uuid.UUID(int=n), layers=LayerRange(start=0, end=1), state=state, runner=RUNNER,
                        codec=FrameCodec(), sampler=None)


def test_an_idle_session_expires_after_its_ttl() -> None:
    clock = Clock()
    store = SessionStore(ttl_s=10, max_sessions=4, max_cache_bytes=2**30, clock=clock)
    store.add(session(1))
    clock.now = 9
    store.get(uuid.UUID(int=1))
    clock.now = 25
    with pytest.raises(SessionNotFoundError, match="expired"):
        store.get(uuid.UUID(int=1))


def test_the_least_recently_used_session_is_evicted_when_full() -> None:
    clock = Clock()
    store = SessionStore(ttl_s=100, max_sessions=2, max_cache_bytes=2**30, clock=clock)
    store.add(session(1))
    store.add(session(2))
    store.get(uuid.UUID(int=1))  # 2 is now the least recently used
    store.add(session(3))
    assert store.get(uuid.UUID(int=1)) and store.get(uuid.UUID(int=3))
    with pytest.raises(SessionNotFoundError, match="too many sessions"):
        store.get(uuid.UUID(int=2))


def test_busy_sessions_are_never_evicted() -> None:
    store = SessionStore(ttl_s=100, max_sessions=1, max_cache_bytes=2**30)
    busy = session(1)
    store.add(busy)
    with busy.lock, pytest.raises(CapacityError, match="maximum of 1"):
        store.add(session(2))


def test_the_memory_cap_evicts_other_sessions() -> None:
    store = SessionStore(ttl_s=100, max_sessions=10, max_cache_bytes=3000)
    old, new = session(1, cache_bytes=2000), session(2, cache_bytes=2000)
    store.add(old)
    store.after_step(old)
    store.add(new)
    store.after_step(new)
    assert len(store) == 1 and store.cache_bytes == 2000
    with pytest.raises(SessionNotFoundError, match="memory cap"):
        store.get(uuid.UUID(int=1))


def test_a_session_id_cannot_be_opened_twice() -> None:
    store = SessionStore(ttl_s=100, max_sessions=10, max_cache_bytes=2**30)
    store.add(session(1))
    with pytest.raises(SessionConflictError):
        store.add(session(1))


def test_ended_sessions_are_reported_as_ended() -> None:
    store = SessionStore(ttl_s=100, max_sessions=10, max_cache_bytes=2**30)
    store.add(session(1))
    assert store.remove(uuid.UUID(int=1)) and not store.remove(uuid.UUID(int=1))
    with pytest.raises(SessionNotFoundError, match="ended"):
        store.get(uuid.UUID(int=1))


def test_one_edge_cannot_hold_more_than_its_share_of_sessions() -> None:
    store = SessionStore(ttl_s=60, max_sessions=10, max_cache_bytes=2**30, max_per_owner=2)
    for n in (1, 2):
        s = session(n)
        s.owner = "10.0.0.1"
        store.add(s)
    greedy = session(3)
    greedy.owner = "10.0.0.1"
    with pytest.raises(CapacityError, match="already holds 2 live sessions"):
        store.add(greedy)
    other = session(4)
    other.owner = "10.0.0.2"
    store.add(other)
    store.remove(uuid.UUID(int=1))
    store.add(greedy)  # a freed slot is usable again
    assert len(store) == 3
