"""The cloud serves many edge sessions at once: steps of different sessions overlap, steps of one session don't."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import splitcore.backends as engine_module  # where the torch runner calls run_range
from cloud_service.app import create_app
from cloud_service.settings import CloudSettings
from splitcore.ranges import LayerRange
from splitcore.testing import save_checkpoint
from tests.cloud_service.test_hold_layers import seed3, step
from tests.overlap import Overlap
from tests.servers import LoopbackServer

STREAMS, BOUND = 8, 4


def test_steps_of_different_sessions_run_at_the_same_time_up_to_the_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 sessions, at most 4 steps at once: each step waits inside the model until 4 are inside together (one
    global lock would break the barrier), and never more than 4 are (the bound that keeps cores from thrashing)."""
    path = save_checkpoint(seed3(), tmp_path / "ckpt")
    barrier = threading.Barrier(BOUND, timeout=20)
    overlap = Overlap()
    monkeypatch.setattr(engine_module, "run_range", overlap.wrap(engine_module.run_range, before=barrier.wait))
    settings = CloudSettings(model_dir=path, max_concurrent_steps=BOUND)
    with LoopbackServer(create_app(settings)) as url, ThreadPoolExecutor(STREAMS) as pool:
        layers = LayerRange(start=1, end=3)
        statuses = list(pool.map(lambda _: step(url, uuid.uuid4(), 0, layers, torch.randn(3, 64)).status_code,
                                 range(STREAMS)))
    assert statuses == [200] * STREAMS
    assert not barrier.broken
    assert overlap.most == BOUND


def test_steps_of_one_session_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two frames for the same session at once: one runs, the other waits for it (then finds the position moved)."""
    path = save_checkpoint(seed3(), tmp_path / "ckpt")
    overlap = Overlap()
    pause = threading.Event()
    monkeypatch.setattr(engine_module, "run_range", overlap.wrap(engine_module.run_range, lambda: pause.wait(0.2)))
    with LoopbackServer(create_app(CloudSettings(model_dir=path))) as url, ThreadPoolExecutor(2) as pool:
        sid, layers = uuid.uuid4(), LayerRange(start=1, end=3)
        assert step(url, sid, 0, layers, torch.randn(3, 64)).status_code == 200
        statuses = sorted(pool.map(lambda _: step(url, sid, 3, layers, torch.randn(1, 64)).status_code, range(2)))
    assert overlap.most == 1
    assert statuses == [200, 409]  # the second finds the session at position 4, not 3
