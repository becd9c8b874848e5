"""The shard engine refuses frames that do not fit the model, the held blocks or the session."""

from __future__ import annotations

import uuid

import pytest
import torch

from cloud_service.engine import ShardEngine
from cloud_service.sessions import SessionStore
from splitcore.codec import Dtype
from splitcore.errors import FrameError, ModelMismatchError, PlanError, SessionConflictError, SessionNotFoundError
from splitcore.loading import LoadedModel
from splitcore.ranges import LayerRange
from splitcore.schema import SessionMeta
from splitcore.wire import Flags, FrameCodec

MID = LayerRange(start=1, end=3)


@pytest.fixture
def engine(models: dict[str, LoadedModel]) -> ShardEngine:
    return ShardEngine(models["gpt2"], SessionStore(ttl_s=60, max_sessions=8, max_cache_bytes=2**30))


def send(engine: ShardEngine, tensor: torch.Tensor, position: int = 0, layers: LayerRange = MID,
         sid: uuid.UUID | None = None, flags: Flags = Flags.NONE, digest: str | None = None) -> torch.Tensor:
    """One frame; a session's first names the digest of the weights it expects (the engine's own by default)."""
    codec = FrameCodec(Dtype.FP32)
    meta = b""
    if position == 0:
        expected = engine.loaded.digests.part(layers, embed=not tensor.is_floating_point(), head=Flags.HEAD in flags)
        meta = SessionMeta(weights_digest=expected if digest is None else digest).model_dump_json().encode()
    data = codec.encode(sid or uuid.UUID(int=1), position, layers, tensor, flags, meta=meta)
    return codec.decode(engine.forward(data)).tensor


def test_a_session_continues_position_by_position(engine: ShardEngine) -> None:
    out = send(engine, torch.randn(5, 64))
    assert out.shape == (5, 64)
    assert send(engine, torch.randn(1, 64), position=5).shape == (1, 64)
    assert engine.store.get(uuid.UUID(int=1)).state.position == 6


def test_a_frame_out_of_order_is_a_conflict(engine: ShardEngine) -> None:
    send(engine, torch.randn(3, 64))
    with pytest.raises(SessionConflictError, match="position 3"):
        send(engine, torch.randn(1, 64), position=7)
    with pytest.raises(SessionConflictError, match="runs blocks"):
        send(engine, torch.randn(1, 64), position=3, layers=LayerRange(start=1, end=4))


def test_an_unknown_session_is_not_found(engine: ShardEngine) -> None:
    with pytest.raises(SessionNotFoundError, match="unknown"):
        send(engine, torch.randn(1, 64), position=4, sid=uuid.UUID(int=99))


def test_wrong_widths_tokens_and_ranges_are_refused(engine: ShardEngine) -> None:
    with pytest.raises(FrameError, match="hidden size"):
        send(engine, torch.randn(2, 32))
    with pytest.raises(FrameError, match="block 0"):
        send(engine, torch.tensor([1, 2]))
    with pytest.raises(FrameError, match="token ids must be in"):
        send(engine, torch.tensor([1, 10**6]), layers=LayerRange(start=0, end=2))
    with pytest.raises(PlanError, match="last block"):
        send(engine, torch.randn(2, 64), flags=Flags.HEAD)
    with pytest.raises(FrameError, match="exceed"):
        send(engine, torch.randn(1, 64), position=10**4, sid=uuid.UUID(int=5))


def test_a_cloud_holding_some_blocks_refuses_others(models: dict[str, LoadedModel]) -> None:
    engine = ShardEngine(models["gpt2"], SessionStore(ttl_s=60, max_sessions=8, max_cache_bytes=2**30),
                         held=LayerRange(start=1, end=3))
    assert send(engine, torch.randn(2, 64)).shape == (2, 64)
    with pytest.raises(PlanError, match=r"holds blocks \[1, 3\)"):
        send(engine, torch.randn(2, 64), layers=LayerRange(start=0, end=3), sid=uuid.UUID(int=2))


def test_the_cloud_head_answers_with_one_token_not_logits(engine: ShardEngine) -> None:
    answer = send(engine, torch.tensor([5, 6, 7]), layers=LayerRange(start=0, end=4), flags=Flags.HEAD,
                  sid=uuid.UUID(int=3))
    assert answer.dtype == torch.int64 and answer.shape == (1,)


def test_a_session_opens_only_on_the_weights_its_edge_expects(models: dict[str, LoadedModel],
                                                              engine: ShardEngine) -> None:
    other = models["gpt2"].digests.part(MID, embed=True)  # right blocks, but also the embeddings this part skips
    with pytest.raises(ModelMismatchError, match=r"other weights for blocks \[1, 3\)"):
        send(engine, torch.randn(2, 64), digest=other)
    with pytest.raises(FrameError, match="weights digest"):
        send(engine, torch.randn(2, 64), digest="", sid=uuid.UUID(int=7))
    assert len(engine.store) == 0  # neither opened a session
    assert send(engine, torch.randn(2, 64), sid=uuid.UUID(int=8)).shape == (2, 64)



def test_a_rollback_cuts_the_session_to_the_accepted_positions(engine: ShardEngine) -> None:
    """A verify step of 4 positions, 2 of them kept: the next frame's answer is that of a session that never saw
    the 2 rejected ones, position by position."""
    torch.manual_seed(0)
    prompt, verify, after = torch.randn(5, 64), torch.randn(4, 64), torch.randn(1, 64)
    speculative, straight = uuid.UUID(int=11), uuid.UUID(int=12)
    send(engine, prompt, sid=speculative)
    send(engine, verify, position=5, sid=speculative)
    got = send(engine, after, position=7, sid=speculative, flags=Flags.ROLLBACK)
    assert engine.store.get(speculative).state.position == 8
    send(engine, prompt, sid=straight)
    send(engine, verify[:2], position=5, sid=straight)
    assert torch.allclose(got, send(engine, after, position=7, sid=straight), atol=1e-5)


@pytest.mark.parametrize("target", [5, 10, 4, 0])
def test_a_rollback_outside_the_last_step_is_a_conflict_and_changes_nothing(engine: ShardEngine, target: int
                                                                            ) -> None:
    """The last step ran positions 5..8: a rollback may keep 6..9 positions, nothing else (4 would cut into
    the step before, 10 is past the end; at 0, a frame would open the session anew, and it is in use)."""
    send(engine, torch.randn(5, 64))
    send(engine, torch.randn(4, 64), position=5)
    with pytest.raises(SessionConflictError, match="cannot roll back" if target else "in use"):
        send(engine, torch.randn(1, 64), position=target, flags=Flags.ROLLBACK)
    assert engine.store.get(uuid.UUID(int=1)).state.position == 9
    assert send(engine, torch.randn(1, 64), position=9).shape == (1, 64)  # the session goes on unharmed
