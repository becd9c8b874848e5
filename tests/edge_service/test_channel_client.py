"""The frame channel against a real cloud on loopback: answers match the HTTP route's, errors are the same,
concurrent sessions share one connection, a lost connection fails its waiters and the next step reconnects, a
refused handshake falls back to HTTP, and the channel is authenticated as HTTP is."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator

import pytest
import torch
from starlette.routing import WebSocketRoute

from cloud_service.app import create_app
from cloud_service.settings import CloudSettings
from edge_service.cloud_client import CloudClient
from splitcore.channel import CHANNEL_PATH
from splitcore.codec import Dtype
from splitcore.errors import CloudRefusedError, CloudSessionLostError, CloudUnavailableError
from splitcore.loading import LoadedModel
from splitcore.ranges import LayerRange
from splitcore.schema import SessionMeta
from splitcore.wire import FrameCodec
from tests.servers import LoopbackServer

MID = LayerRange(start=1, end=3)
TOKEN = "token-of-the-edge-0123456789"


@pytest.fixture(scope="module")
def cloud(models: dict[str, LoadedModel]) -> Iterator[tuple[str, LoadedModel]]:
    app = create_app(CloudSettings(auth_token=TOKEN), models["gpt2"])
    with LoopbackServer(app) as url:
        yield url, models["gpt2"]


def frames(loaded: LoadedModel, sid: uuid.UUID, steps: int, seed: int = 0) -> list[bytes]:
    """A session's opening frame (3 positions) and `steps` one-position frames."""
    meta = SessionMeta(codec="fp32", weights_digest=loaded.digests.part(MID)).model_dump_json().encode()
    codec, gen = FrameCodec(Dtype.FP32), torch.Generator().manual_seed(seed)
    hidden = torch.randn(3 + steps, loaded.layered.hidden_size, generator=gen)
    return [codec.encode(sid, 0, MID, hidden[:3], meta=meta),
            *(codec.encode(sid, 3 + i, MID, hidden[3 + i:4 + i]) for i in range(steps))]


def run(client: CloudClient, session_frames: list[bytes]) -> list[torch.Tensor]:
    return [FrameCodec().decode(client.forward(f)).tensor for f in session_frames]


def test_the_channel_answers_what_one_post_per_step_answers(cloud: tuple[str, LoadedModel]) -> None:
    url, loaded = cloud
    ws, http = CloudClient(url, token=TOKEN), CloudClient(url, token=TOKEN, transport="http")
    try:
        over_ws = run(ws, frames(loaded, uuid.uuid4(), 4))
        over_http = run(http, frames(loaded, uuid.uuid4(), 4))
    finally:
        ws.close(), http.close()
    for a, b in zip(over_ws, over_http, strict=True):
        assert torch.equal(a, b)


def test_concurrent_sessions_share_one_connection_and_each_gets_its_own_answers(
        cloud: tuple[str, LoadedModel]) -> None:
    url, loaded = cloud
    alone = CloudClient(url, token=TOKEN, transport="http")
    sessions = [frames(loaded, uuid.uuid4(), 6, seed=i) for i in range(6)]
    expected = [run(alone, frames(loaded, uuid.uuid4(), 6, seed=i)) for i in range(6)]  # the same inputs, alone
    alone.close()
    shared, results = CloudClient(url, token=TOKEN), [list[torch.Tensor]() for _ in sessions]

    def one(i: int) -> None:
        results[i] = run(shared, sessions[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert shared._channel is not None and shared._channel._conn is not None  # one connection carried them all
    shared.close()
    for got, want in zip(results, expected, strict=True):
        assert len(got) == len(want)
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(got, want, strict=True))


def test_refusals_over_the_channel_raise_what_http_raises(cloud: tuple[str, LoadedModel]) -> None:
    url, loaded = cloud
    for transport in ("websocket", "http"):
        client = CloudClient(url, token=TOKEN, transport=transport)  # type: ignore[arg-type]
        with pytest.raises(CloudSessionLostError, match="404"):
            client.forward(frames(loaded, uuid.uuid4(), 1)[1])  # a step of a session never opened
        with pytest.raises(CloudRefusedError, match="400"):
            client.forward(b"not a frame at all, but long enough for a header" * 3)
        client.close()


def test_a_wrong_token_is_refused_on_the_handshake_not_worked_around(cloud: tuple[str, LoadedModel]) -> None:
    url, loaded = cloud
    client = CloudClient(url, token="a-token-no-edge-has-000000")
    with pytest.raises(CloudRefusedError, match="403.*wrong edge token"):
        client.forward(frames(loaded, uuid.uuid4(), 0)[0])
    client.close()


def test_a_lost_connection_fails_its_step_and_the_next_step_reconnects(cloud: tuple[str, LoadedModel]) -> None:
    url, loaded = cloud
    client = CloudClient(url, token=TOKEN)
    session = frames(loaded, uuid.uuid4(), 2)
    client.forward(session[0])
    assert client._channel is not None and client._channel._conn is not None
    client._channel._conn.close()  # as a cloud restart or a dropped link would
    with pytest.raises(CloudUnavailableError, match="closed the channel"):
        client.forward(session[1])
    client.forward(frames(loaded, uuid.uuid4(), 0)[0])  # a new connection serves the next step
    client.close()


def test_a_step_unanswered_in_time_is_a_timeout_and_later_steps_still_work(cloud: tuple[str, LoadedModel]) -> None:
    url, loaded = cloud
    client = CloudClient(url, token=TOKEN)
    session = frames(loaded, uuid.uuid4(), 1)
    client.forward(session[0])
    with pytest.raises(CloudUnavailableError, match="timed out"):
        client.forward(session[1], timeout_s=1e-4)
    client.forward(frames(loaded, uuid.uuid4(), 0)[0])  # the late answer is dropped, the channel goes on
    client.close()


def test_a_cloud_that_refuses_the_upgrade_is_served_over_http(models: dict[str, LoadedModel],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(CloudSettings(), models["gpt2"])
    app.router.routes[:] = [r for r in app.router.routes  # as an older cloud, or a proxy that drops upgrades
                            if not (isinstance(r, WebSocketRoute) and r.path == CHANNEL_PATH)]
    with LoopbackServer(app) as url, caplog.at_level(logging.WARNING):
        client = CloudClient(url)
        out = run(client, frames(models["gpt2"], uuid.uuid4(), 2))
        client.close()
    assert len(out) == 3
    assert any("frames go over HTTP" in r.getMessage() for r in caplog.records)
