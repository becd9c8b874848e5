"""A replica of a replicated cloud (`cloud_service.ray_app`) is the cloud app with a name: its answers carry it,
it offers no frame channel, and the edge's client learns from it where each session lives and that a failure
of that replica lost the session (to be replayed elsewhere), not the whole cloud.

Real servers on loopback, the real `CloudClient`; the Ray cluster itself is `test_ray_serve.py`'s.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
import torch
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from cloud_service.app import create_app
from cloud_service.direct import ReplicaIdentity
from cloud_service.settings import CloudSettings
from edge_service.cloud_client import CloudClient
from edge_service.replicas import Route
from splitcore.channel import CHANNEL_PATH
from splitcore.codec import Dtype
from splitcore.errors import CloudSessionLostError, CloudUnavailableError
from splitcore.loading import LoadedModel
from splitcore.ranges import LayerRange
from splitcore.replicas import REPLICA_HEADER, REPLICA_URL_HEADER
from splitcore.schema import SessionMeta
from splitcore.wire import FrameCodec
from tests.servers import LoopbackServer, metric_samples

MID = LayerRange(start=1, end=3)


def frame(loaded: LoadedModel, sid: uuid.UUID, position: int) -> bytes:
    meta = SessionMeta(codec="fp32", weights_digest=loaded.digests.part(MID)).model_dump_json().encode()
    return FrameCodec(Dtype.FP32).encode(sid, position, MID, torch.randn(3 if position == 0 else 1, 64),
                                         meta=meta if position == 0 else b"")


def test_a_replica_names_itself_and_offers_no_frame_channel(models: dict[str, LoadedModel]) -> None:
    app = create_app(CloudSettings(), models["gpt2"], replica=ReplicaIdentity("replica-a"))
    with LoopbackServer(app) as url:
        health = httpx.get(f"{url}/health")
        assert health.headers[REPLICA_HEADER] == "replica-a" and health.json()["replica"] == "replica-a"
        assert REPLICA_URL_HEADER not in health.headers, "no listener of its own was asked for"
        with pytest.raises(InvalidStatus):
            connect(url.replace("http", "ws") + CHANNEL_PATH, open_timeout=5)
        client = CloudClient(url)  # the channel by default, until the cloud says it has none
        assert client.info()["frame_channel"] is False
        sessions = [uuid.uuid4(), uuid.uuid4()]
        for sid in sessions:
            for position in (0, 3):
                FrameCodec(Dtype.FP32).decode(client.forward(frame(models["gpt2"], sid, position), session=sid))
            assert client.replicas.route(sid) == Route("replica-a", None)
        assert client.replicas.sessions == {"replica-a": 2}, "a session counts once, however many frames"
        client.end_session(sessions[0])
        assert client.replicas.route(sessions[0]) is None
    with pytest.raises(CloudSessionLostError, match="replica replica-a"):  # its replica is gone: replay elsewhere
        client.forward(frame(models["gpt2"], sessions[1], 4), session=sessions[1], timeout_s=2)
    with pytest.raises(CloudUnavailableError) as fresh:  # a session no replica answered yet: the cloud is down
        client.forward(frame(models["gpt2"], uuid.uuid4(), 0), session=uuid.uuid4(), timeout_s=2)
    assert not isinstance(fresh.value, CloudSessionLostError)
    client.close()


def test_a_sessions_later_frames_go_to_its_replicas_own_listener(models: dict[str, LoadedModel]) -> None:
    app = create_app(CloudSettings(), models["gpt2"], replica=ReplicaIdentity("replica-b", "127.0.0.1"))
    with LoopbackServer(app) as front:  # stands for Ray's proxy
        own = httpx.get(f"{front}/health").headers[REPLICA_URL_HEADER]
        assert own.startswith("http://127.0.0.1:") and own != front
        health = httpx.get(f"{own}/health").json()
        assert health["replica"] == "replica-b" and health["url"] == own, "the same app behind its own port"
        client = CloudClient(front, transport="http")
        sid = uuid.uuid4()
        client.forward(frame(models["gpt2"], sid, 0), session=sid)
        assert client.replicas.route(sid) == Route("replica-b", own)
        forwarded = _steps(own)
        client.forward(frame(models["gpt2"], sid, 3), session=sid)
        assert _steps(own) == forwarded + 1
        client.end_session(sid)
        assert httpx.get(f"{own}/health").json()["sessions"] == 0
        client.close()


def test_over_the_channel_a_sessions_later_frames_use_its_replicas_own_channel(models: dict[str, LoadedModel]
                                                                               ) -> None:
    app = create_app(CloudSettings(), models["gpt2"], replica=ReplicaIdentity("replica-c", "127.0.0.1"))
    with LoopbackServer(app) as front:
        own = httpx.get(f"{front}/health").headers[REPLICA_URL_HEADER]
        with pytest.raises(InvalidStatus):  # through the front door a channel would pin every session to one replica
            connect(front.replace("http", "ws") + CHANNEL_PATH, open_timeout=5)
        client = CloudClient(front)  # the default transport: channels
        sid = uuid.uuid4()
        client.forward(frame(models["gpt2"], sid, 0), session=sid)  # the front channel is refused: HTTP
        assert client.connected_at == 0 and _gauge(front, "edgesplit_cloud_open_channels") == 0
        for position in (3, 4):
            FrameCodec(Dtype.FP32).decode(client.forward(frame(models["gpt2"], sid, position), session=sid))
        assert client.connected_at > 0 and _gauge(own, "edgesplit_cloud_open_channels") == 1
        client.close()


def _gauge(url: str, name: str) -> float:
    return metric_samples(url)[name][0].value


def _steps(url: str) -> float:
    """Frames the app has answered (its step histogram's count): the same for every door, it is one app."""
    return metric_samples(url)["edgesplit_cloud_step_duration_seconds_count"][0].value


def test_a_single_cloud_names_no_replica_and_keeps_its_channel(models: dict[str, LoadedModel]) -> None:
    with LoopbackServer(create_app(CloudSettings(), models["gpt2"])) as url:
        client = CloudClient(url)
        info = client.info()
        assert info["frame_channel"] is True and "replica" not in info
        sid = uuid.uuid4()
        client.forward(frame(models["gpt2"], sid, 0), session=sid)
        assert client.connected_at > 0, "frames went over the channel"
        assert client.replicas.route(sid) is None and not client.replicas.sessions
        assert REPLICA_HEADER not in httpx.get(f"{url}/health").headers
        client.close()
