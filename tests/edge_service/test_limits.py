"""Bounded work: beyond the concurrent-request limit callers get 429 with Retry-After, not a queue."""

from __future__ import annotations

import httpx

from edge_service.app import create_app as create_edge
from edge_service.settings import EdgeSettings
from splitcore.loading import LoadedModel
from tests.servers import LoopbackServer
from tests.waiting import poll


def test_requests_over_the_concurrency_limit_get_429_with_retry_after(models: dict[str, LoadedModel]) -> None:
    # edge-only, compute stretched 50x, so the first generation is still running when the second arrives
    settings = EdgeSettings(cut="edge", max_concurrent_requests=1, emulate_slowdown=50)
    with LoopbackServer(create_edge(settings, models["gpt2"])) as url:
        body = {"prompt": "hold the only slot", "max_tokens": 200, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as first:
            assert first.status_code == 200
            next(first.iter_lines())
            refused = httpx.post(f"{url}/v1/completions", json={"prompt": "me too", "max_tokens": 2}, timeout=10)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
        after = poll(lambda: httpx.post(f"{url}/v1/completions", json={"prompt": "now", "max_tokens": 2}, timeout=30),
                     lambda r: r.status_code != 429, 10)  # the hung-up generation frees the slot at its next step
        assert after.status_code == 200


def test_oversized_bodies_are_refused_with_413_declared_or_streamed(models: dict[str, LoadedModel]) -> None:
    settings = EdgeSettings(cut="edge", max_body_mb=0.01)  # about 10 KB
    with LoopbackServer(create_edge(settings, models["gpt2"])) as url:
        big = {"prompt": "amen " * 5000, "max_tokens": 2}
        declared = httpx.post(f"{url}/v1/completions", json=big, timeout=10)
        assert declared.status_code == 413 and "limit" in declared.json()["error"]["message"]

        def chunks():  # no content-length: the body arrives chunked
            yield b'{"prompt": "'
            for _ in range(100):
                yield b"amen " * 100
            yield b'", "max_tokens": 2}'
        streamed = httpx.post(f"{url}/v1/completions", content=chunks(), timeout=10,
                              headers={"content-type": "application/json"})
        assert streamed.status_code == 413, streamed.text
        small = httpx.post(f"{url}/v1/completions", json={"prompt": "amen", "max_tokens": 2}, timeout=10)
        assert small.status_code == 200
