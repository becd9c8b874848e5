"""A prompt is bounded by its bytes before it is tokenised, and tokenised off the event loop: one hostile caller
never freezes the other streams or the health check; text that is not Unicode is a 400, not a 500."""

from __future__ import annotations

import json
import threading
import time

import httpx

from splitcore.loading import LoadedModel
from tests.servers import edge_and_cloud


def test_a_maximal_hostile_prompt_neither_stalls_other_streams_nor_health(models: dict[str, LoadedModel]) -> None:
    loaded = models["gpt2"]
    hostile = {"prompt": "a" * (4 * 2**20 - 200), "max_tokens": 1}  # just under the 4 MiB body limit
    near_limit = {"prompt": "a" * 65_000, "max_tokens": 1}  # passes the byte bound: tokenised, then too many tokens
    gaps: list[float] = []
    health_s: list[float] = []
    stream_ended = [0.0]
    # plain decode steps: a speculative round hands over several tokens after one longer gap, which is not a stall
    with edge_and_cloud(loaded, cut="1:3", emulate_slowdown=10, speculate="off") as tiers:
        url = tiers.edge_url
        body = {"prompt": "The edge keeps", "max_tokens": 80, "temperature": 0.7, "stream": True}

        def stream() -> None:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
                last = time.perf_counter()
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        now = time.perf_counter()
                        gaps.append(now - last)
                        last = now
            stream_ended[0] = time.perf_counter()

        reader = threading.Thread(target=stream)
        reader.start()
        time.sleep(0.3)
        statuses = []
        for payload in (hostile, near_limit, hostile, hostile):
            statuses.append(httpx.post(f"{url}/v1/completions", json=payload, timeout=60))
            started = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            health_s.append(time.perf_counter() - started)
        hostile_done = time.perf_counter()
        reader.join(timeout=60)
    assert [r.status_code for r in statuses] == [400] * 4
    assert "bytes; the limit is 65536" in statuses[0].json()["error"]["message"]
    assert "tokens; the limit is" in statuses[1].json()["error"]["message"]
    assert stream_ended[0] > hostile_done, "the other stream must still run while the hostile prompts are handled"
    assert len(gaps) > 20 and max(gaps[1:]) < 1.0, f"largest gap between chunks {max(gaps[1:]):.2f} s"
    assert max(health_s) < 1.0


def test_a_lone_surrogate_in_a_prompt_or_a_message_is_a_400(models: dict[str, LoadedModel]) -> None:
    with edge_and_cloud(models["gpt2"], cut="edge") as tiers:
        for path, body in [("/v1/completions", '{"prompt": "bad \\ud800 text", "max_tokens": 2}'),
                           ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "x\\udfff"}]}')]:
            r = httpx.post(tiers.edge_url + path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400 and "not valid Unicode" in r.json()["error"]["message"], r.text
    assert json.loads('"\\ud800"')  # the JSON is valid: the surrogate is the caller's, not a parse error
