"""Who calls the cloud is known from the headers, before any body is read; each session is its opener's alone;
slow clients are closed."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import torch
from fastapi import FastAPI

from cloud_service.app import create_app
from cloud_service.identity import EdgeTokens
from cloud_service.settings import CloudSettings
from splitcore.codec import Dtype
from splitcore.errors import UserError
from splitcore.loading import LoadedModel
from splitcore.ranges import LayerRange
from splitcore.schema import SessionMeta
from splitcore.wire import MEDIA_TYPE, FrameCodec
from tests.servers import LoopbackServer

A, B = "token-of-edge-a-0123456789", "token-of-edge-b-9876543210"
MID = LayerRange(start=1, end=3)


class Cloud:
    def __init__(self, url: str, app: FastAPI, loaded: LoadedModel) -> None:
        self.url, self.app, self.loaded = url, app, loaded

    def step(self, token: str, sid: uuid.UUID, position: int, request_id: str = "r1") -> httpx.Response:
        meta = b""
        if position == 0:
            meta = SessionMeta(codec="fp32", weights_digest=self.loaded.digests.part(MID)).model_dump_json().encode()
            meta = meta.replace(b'"request_id":""', f'"request_id":{json.dumps(request_id)}'.encode())  # unchecked
        frame = FrameCodec(Dtype.FP32).encode(sid, position, MID, torch.randn(2 if position == 0 else 1, 64),
                                              meta=meta)
        return httpx.post(f"{self.url}/v1/shard/forward", content=frame,
                          headers={"content-type": MEDIA_TYPE, "authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def cloud(models: dict[str, LoadedModel]) -> Iterator[Cloud]:
    settings = CloudSettings(edge_tokens=f"edge-a={A},edge-b={B}", max_sessions_per_caller=2, header_timeout_s=1,
                             body_idle_timeout_s=1)
    app = create_app(settings, models["gpt2"])
    with LoopbackServer(app, http=settings.header_timeout_s) as url:
        yield Cloud(url, app, models["gpt2"])


def raw(url: str, data: bytes, wait_s: float) -> tuple[bytes, float]:
    """Send `data` on a fresh connection; what the server answered (b'' if it closed) and how long it took."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        started = time.monotonic()
        s.sendall(data)
        try:
            answer = s.recv(4096)
        except TimeoutError:
            answer = b"(no answer)"
        return answer, time.monotonic() - started


def test_a_caller_without_the_token_is_refused_on_its_headers_before_its_body(cloud: Cloud) -> None:
    # over the 64 MiB limit, and no body follows
    head = b"POST /v1/shard/forward HTTP/1.1\r\nhost: x\r\ncontent-length: 70000000\r\n\r\n"
    answer, took = raw(cloud.url, head, wait_s=5)
    assert answer.startswith(b"HTTP/1.1 401") and took < 1.0
    wrong, _ = raw(cloud.url, head.replace(b"host: x", b"host: x\r\nauthorization: Bearer nope"), wait_s=5)
    assert wrong.startswith(b"HTTP/1.1 403")
    oversized, took = raw(cloud.url, head.replace(b"host: x", f"host: x\r\nauthorization: Bearer {A}".encode()), 5)
    assert oversized.startswith(b"HTTP/1.1 413") and took < 1.0  # the declared length alone is refused


def test_slow_headers_are_closed_and_a_slow_body_is_a_408(cloud: Cloud) -> None:
    closed, took = raw(cloud.url, b"POST /v1/probe HTTP/1.1\r\nhost: x\r\n", wait_s=5)  # the rest never comes
    assert closed == b"" and 0.9 < took < 3.0
    head = f"POST /v1/probe HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {A}\r\ncontent-length: 1000\r\n\r\n"
    slow, took = raw(cloud.url, head.encode() + b"0123456789", wait_s=5)
    assert slow.startswith(b"HTTP/1.1 408") and took < 3.0


def test_a_session_is_its_openers_alone(cloud: Cloud) -> None:
    sid = uuid.uuid4()
    assert cloud.step(A, sid, 0).status_code == 200
    stolen = cloud.step(B, sid, 2)
    assert stolen.status_code == 404 and "at position" not in stolen.json()["error"]["message"]
    assert str(sid) not in stolen.json()["error"]["message"]
    deleted = httpx.delete(f"{cloud.url}/v1/sessions/{sid}", headers={"authorization": f"Bearer {B}"})
    assert deleted.status_code == 404
    reopened = cloud.step(B, sid, 0)
    assert reopened.status_code == 409 and "at position" not in reopened.json()["error"]["message"]
    assert cloud.step(A, sid, 2).status_code == 200  # the owner's cache was not touched
    assert httpx.delete(f"{cloud.url}/v1/sessions/{sid}", headers={"authorization": f"Bearer {A}"}).status_code == 204


def test_session_caps_count_per_edge_not_per_address(cloud: Cloud) -> None:
    mine = [uuid.uuid4(), uuid.uuid4()]
    assert [cloud.step(A, sid, 0).status_code for sid in mine] == [200, 200]
    assert cloud.step(A, uuid.uuid4(), 0).status_code == 429  # edge A is at its cap of 2
    other = uuid.uuid4()
    assert cloud.step(B, other, 0).status_code == 200  # the same address, another edge: not pushed out
    for token, sid in [(A, mine[0]), (A, mine[1]), (B, other)]:
        httpx.delete(f"{cloud.url}/v1/sessions/{sid}", headers={"authorization": f"Bearer {token}"})


def test_docs_need_the_token_and_request_ids_cannot_forge_log_lines(cloud: Cloud) -> None:
    assert httpx.get(f"{cloud.url}/openapi.json").status_code == 401
    assert httpx.get(f"{cloud.url}/docs").status_code == 401
    assert httpx.get(f"{cloud.url}/openapi.json", headers={"authorization": f"Bearer {B}"}).status_code == 200
    assert httpx.get(f"{cloud.url}/health").status_code == 200 and httpx.get(f"{cloud.url}/metrics").status_code == 200
    forged = cloud.step(A, uuid.uuid4(), 0, request_id="x\nINFO session hijacked")
    assert forged.status_code == 400 and "metadata" in forged.json()["error"]["message"]


def test_edge_tokens_are_checked_when_the_cloud_starts() -> None:
    from pydantic import SecretStr

    for bad, words in [("a=1,a=2", "named twice"), ("a=same,b=same", "share a token"), ("novalue", "name=token")]:
        with pytest.raises(UserError, match=words):
            EdgeTokens.parse(SecretStr(bad), None)
    both = EdgeTokens.parse(SecretStr("phone=p-token"), SecretStr("shared-token"))
    assert both is not None and both.identify("shared-token") == "edge" and both.identify("p-token") == "phone"
    assert EdgeTokens.parse(None, None) is None
