"""The cloud serves many edge sessions at once: steps of different sessions share forwards, steps of one session
take turns."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import splitcore.batching as batching_module  # where the batcher calls the model
from cloud_service.app import create_app
from cloud_service.settings import CloudSettings
from splitcore.ranges import LayerRange
from splitcore.shard import ShardState, run_range
from splitcore.testing import save_checkpoint
from splitcore.wire import FrameCodec
from tests.cloud_service.test_hold_layers import seed3, step
from tests.fakes import slowed_forwards
from tests.overlap import Overlap
from tests.servers import LoopbackServer

STREAMS = 8


def test_steps_of_different_sessions_share_forwards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 sessions' first steps at once: while the first forward runs, the others queue and go in together, and
    each answer is the one its session gets alone."""
    path = save_checkpoint(seed3(), tmp_path / "ckpt")
    rows = slowed_forwards(monkeypatch, 0.2)  # long enough for the other requests to queue
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(3 + i, 64, generator=gen) for i in range(STREAMS)]
    layers = LayerRange(start=1, end=3)
    with LoopbackServer(create_app(CloudSettings(model_dir=path))) as url, ThreadPoolExecutor(STREAMS) as pool:
        answers = list(pool.map(lambda x: step(url, uuid.uuid4(), 0, layers, x), inputs))
    assert [a.status_code for a in answers] == [200] * STREAMS
    assert max(rows) > 1 and sum(rows) == STREAMS
    reference = seed3().layered
    for x, answer in zip(inputs, answers, strict=True):
        alone = run_range(reference, ShardState(reference.new_cache()), layers, hidden=x)[0]
        torch.testing.assert_close(FrameCodec().decode(answer.content).tensor, alone, rtol=1e-4, atol=1e-4)


def test_steps_of_one_session_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two frames for the same session at once: one runs, the other waits for it (then finds the position moved)."""
    path = save_checkpoint(seed3(), tmp_path / "ckpt")
    overlap = Overlap()
    pause = threading.Event()
    for name in ("forward_rows", "run_packed"):  # every forward the batcher runs
        monkeypatch.setattr(batching_module, name, overlap.wrap(getattr(batching_module, name),
                                                                lambda: pause.wait(0.2)))
    with LoopbackServer(create_app(CloudSettings(model_dir=path))) as url, ThreadPoolExecutor(2) as pool:
        sid, layers = uuid.uuid4(), LayerRange(start=1, end=3)
        assert step(url, sid, 0, layers, torch.randn(3, 64)).status_code == 200
        statuses = sorted(pool.map(lambda _: step(url, sid, 3, layers, torch.randn(1, 64)).status_code, range(2)))
    assert overlap.most == 1
    assert statuses == [200, 409]  # the second finds the session at position 4, not 3


def test_a_round_waits_a_little_for_the_sessions_of_the_last_one_and_not_for_ended_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sessions decode together. When one sends its next step a few ms after the other, the next round still
    holds both (a session left out would wait a whole round); once a session has ended, or when it does not come
    within half a round, the round runs without it."""
    import asyncio

    from cloud_service.app import build_engine
    from splitcore.schema import SessionMeta
    from splitcore.slots import SlotBatch

    path = save_checkpoint(seed3(), tmp_path / "ckpt")
    engine = build_engine(CloudSettings(model_dir=path, batch_wait_ms=1000))
    real = SlotBatch.prepare

    def slow(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 (a decode round of 60 ms)
        time.sleep(0.06)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(SlotBatch, "prepare", slow)
    layers, codec = LayerRange(start=1, end=3), FrameCodec()
    meta = SessionMeta(codec="fp32", weights_digest=seed3().digests.part(layers)).model_dump_json().encode()
    a, b = uuid.uuid4(), uuid.uuid4()

    async def send(sid: uuid.UUID, position: int, rows: int, after_s: float = 0.0) -> float:
        await asyncio.sleep(after_s)
        started = time.perf_counter()
        await engine.forward_async(codec.encode(sid, position, layers, torch.randn(rows, 64),
                                                meta=meta if position == 0 else b""))
        return time.perf_counter() - started

    async def scenario() -> tuple[list[int], float, float]:
        await asyncio.gather(send(a, 0, 3), send(b, 0, 3))  # prompts
        await asyncio.gather(send(a, 3, 1), send(b, 3, 1))  # both decode in one round: both are due next
        sizes = []
        await asyncio.gather(send(a, 4, 1), send(b, 4, 1, after_s=0.01))  # b comes 10 ms later: still one round
        sizes.append(engine.batch_size)
        assert engine.end(b)
        alone = await send(a, 5, 1)  # b has ended: nobody to wait for
        sizes.append(engine.batch_size)
        c = uuid.uuid4()
        await asyncio.gather(send(a, 6, 1), send(c, 0, 3))  # c joins (its prompt), then goes quiet
        await asyncio.gather(send(a, 7, 1), send(c, 3, 1))
        stale = await send(a, 8, 1)  # c is due but never sends: a waits at most half a round (30 ms)
        return sizes, alone, stale

    sizes, alone, stale = asyncio.run(scenario())
    assert sizes == [2, 1]
    assert alone < 0.06 + 0.02  # its own round, no wait
    assert 0.06 + 0.02 < stale < 0.06 + 0.03 + 0.05  # its round plus about half a round for the absent session
