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
from tests.overlap import Overlap
from tests.servers import LoopbackServer

STREAMS = 8


def test_steps_of_different_sessions_share_forwards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 sessions' first steps at once: while the first forward runs, the others queue and go in together, and
    each answer is the one its session gets alone."""
    path = save_checkpoint(seed3(), tmp_path / "ckpt")
    rows: list[int] = []
    real = batching_module.forward_rows

    def slow(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 (long enough for the other requests to queue)
        rows.append(len(args[2]))
        time.sleep(0.2)
        return real(*args, **kwargs)
    monkeypatch.setattr(batching_module, "forward_rows", slow)
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
    monkeypatch.setattr(batching_module, "forward_rows", overlap.wrap(batching_module.forward_rows,
                                                                      lambda: pause.wait(0.2)))
    with LoopbackServer(create_app(CloudSettings(model_dir=path))) as url, ThreadPoolExecutor(2) as pool:
        sid, layers = uuid.uuid4(), LayerRange(start=1, end=3)
        assert step(url, sid, 0, layers, torch.randn(3, 64)).status_code == 200
        statuses = sorted(pool.map(lambda _: step(url, sid, 3, layers, torch.randn(1, 64)).status_code, range(2)))
    assert overlap.most == 1
    assert statuses == [200, 409]  # the second finds the session at position 4, not 3
