"""A cloud holding some blocks loads more when an edge's new plan needs them, without disturbing live sessions."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import httpx
import torch

from cloud_service.app import create_app
from cloud_service.settings import CloudSettings
from splitcore.codec import Dtype
from splitcore.loading import LoadedModel, load_checkpoint
from splitcore.ranges import LayerRange
from splitcore.schema import SessionMeta
from splitcore.shard import ShardState, run_range
from splitcore.testing import save_checkpoint, tiny_model
from splitcore.wire import MEDIA_TYPE, FrameCodec
from tests.servers import LoopbackServer


@functools.cache
def seed3() -> LoadedModel:
    """The model these tests' clouds serve (saved as a checkpoint), as the edge holds it."""
    return tiny_model("gpt2", seed=3)


def step(url: str, sid: uuid.UUID, position: int, layers: LayerRange, rows: torch.Tensor) -> httpx.Response:
    """One frame of hidden states for blocks `layers`; a session's first names the weights the edge expects."""
    meta = b""
    if position == 0:  # answers in fp32 too
        meta = SessionMeta(codec="fp32", weights_digest=seed3().digests.part(layers)).model_dump_json().encode()
    frame = FrameCodec(Dtype.FP32).encode(sid, position, layers, rows, meta=meta)
    return httpx.post(f"{url}/v1/shard/forward", content=frame, headers={"content-type": MEDIA_TYPE})


def test_a_cloud_loads_the_blocks_a_new_plan_needs(tmp_path: Path) -> None:
    path = save_checkpoint(seed3(), tmp_path / "ckpt")
    reference = load_checkpoint(path).layered  # every block, to check the loaded ones compute the same
    settings = CloudSettings(model_dir=path, layers="1:2", max_weights_mb=0.5)  # a block is 0.19 MiB: room for two
    with LoopbackServer(create_app(settings)) as url:
        old, new = LayerRange(start=1, end=2), LayerRange(start=1, end=3)
        live = uuid.uuid4()
        assert step(url, live, 0, old, torch.randn(3, 64)).status_code == 200
        assert step(url, uuid.uuid4(), 0, new, torch.randn(3, 64)).status_code == 422
        r = httpx.post(f"{url}/v1/layers", json={"start": 1, "end": 3})
        assert r.status_code == 200 and r.json()["held_layers"] == [1, 3]
        assert httpx.get(f"{url}/v1/info").json()["held_layers"] == [1, 3]
        assert step(url, live, 3, old, torch.randn(1, 64)).status_code == 200  # the old plan's session goes on
        hidden = torch.randn(3, 64)
        answer = FrameCodec(Dtype.FP32).decode(step(url, uuid.uuid4(), 0, new, hidden).content).tensor
        expected = run_range(reference, ShardState(reference.new_cache()), new, hidden=hidden)[0]
        assert torch.allclose(answer, expected, atol=1e-5)
        over = httpx.post(f"{url}/v1/layers", json={"start": 0, "end": 4})
        assert over.status_code == 422 and "budget" in over.json()["error"]["message"]
        beyond = httpx.post(f"{url}/v1/layers", json={"start": 2, "end": 9})
        assert beyond.status_code == 422 and "4 blocks" in beyond.json()["error"]["message"]
        backwards = httpx.post(f"{url}/v1/layers", json={"start": 3, "end": 1})
        assert backwards.status_code == 400
