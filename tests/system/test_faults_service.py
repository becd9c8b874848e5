"""Real processes, real faults: the cloud killed (SIGKILL) or stalled (SIGSTOP) mid-stream, then restarted; clients
hanging up mid-stream. Nothing hangs, nothing is lost, and greedy output stays the unsplit model's.

Both tiers run the shipped model with the cloud's shard API behind a bearer token, as in production.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.samples import Sample

from edgesplit.procs import free_port, serve, wait_healthy
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import LoadedModel, load_checkpoint
from splitcore.testing import reference_text
from tests.servers import metric_samples, stream_completion
from tests.waiting import poll

pytestmark = pytest.mark.e2e  # spawns processes, drives a browser or fuzzes: out of the fast loop (-m 'not e2e')

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / DEFAULT_MODEL_DIR
TOKEN = "edge-to-cloud-token"
PROMPT = "And it came to pass"


@pytest.fixture(scope="module")
def shipped() -> LoadedModel:
    return load_checkpoint(MODEL)


@contextmanager
def cloud_at(port: int, log: Path) -> Iterator[subprocess.Popen]:
    with serve("cloud", ["--model", str(MODEL), "--threads", "1"], port, log, env={"CLOUD_AUTH_TOKEN": TOKEN}) as p:
        wait_healthy(f"http://127.0.0.1:{port}/health", p)
        yield p


@contextmanager
def edge_to(cloud_port: int, log: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    args = ["--model", str(MODEL), "--cloud", f"http://127.0.0.1:{cloud_port}", "--cut", "2:6", "--codec", "fp32",
            "--threads", "1", "--cloud-step-timeout-s", "1", *extra]
    with serve("edge", args, port, log, env={"EDGE_CLOUD_TOKEN": TOKEN}) as p:
        wait_healthy(f"http://127.0.0.1:{port}/health", p)
        yield f"http://127.0.0.1:{port}"


def stream(url: str, max_tokens: int, on_chunk: Callable[[int], None] = lambda i: None) -> dict:
    """Stream one greedy completion of PROMPT; call `on_chunk(i)` after each text chunk."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    return stream_completion(url, body, on_chunk)


def max_gap_s(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def test_a_killed_cloud_is_survived_and_a_restarted_one_is_used_again(tmp_path: Path, shipped: LoadedModel) -> None:
    port = free_port()
    expected = reference_text(shipped, PROMPT, 120)
    with cloud_at(port, tmp_path / "cloud1.log") as cloud, edge_to(port, tmp_path / "edge.log") as edge:
        kill = lambda i: cloud.send_signal(signal.SIGKILL) if i == 5 else None  # noqa: E731
        out = stream(edge, 120, kill)
        assert out["done"] and out["error"] is None and out["text"] == expected
        assert out["edgesplit"]["fallback"] and out["edgesplit"]["cut"] == [8, 8]
        assert max_gap_s(out["times"]) < 2.0
        cloud.wait()
        while_down = httpx.post(f"{edge}/v1/completions", json={"prompt": PROMPT, "max_tokens": 30, "temperature": 0},
                                timeout=30).json()
        assert while_down["choices"][0]["text"] == expected[:len(while_down["choices"][0]["text"])]
        assert while_down["edgesplit"]["fallback"]
        health = httpx.get(f"{edge}/health")  # the plan's cloud is gone; fallback serves
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        with cloud_at(port, tmp_path / "cloud2.log"):
            def split_again() -> bool:
                r = httpx.post(f"{edge}/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0},
                               timeout=30).json()
                return r["edgesplit"]["fallback"] is None and r["edgesplit"]["link"]["decode_tokens"] == 7
            assert poll(split_again, timeout_s=15, every_s=0.5), "the edge never went back to the restarted cloud"
            assert httpx.get(f"{edge}/health").json()["status"] == "ok"


def test_a_stalled_cloud_is_given_up_on_after_the_step_timeout(tmp_path: Path, shipped: LoadedModel) -> None:
    port = free_port()
    expected = reference_text(shipped, PROMPT, 120)
    with cloud_at(port, tmp_path / "cloud.log") as cloud, edge_to(port, tmp_path / "edge.log") as edge:
        stall = lambda i: cloud.send_signal(signal.SIGSTOP) if i == 5 else None  # noqa: E731
        try:
            out = stream(edge, 120, stall)
        finally:
            cloud.send_signal(signal.SIGCONT)
        assert out["done"] and out["error"] is None and out["text"] == expected
        assert "timed out" in out["edgesplit"]["fallback"]
        assert max_gap_s(out["times"]) < 1.0 + 2.0  # the step timeout, then under 2 s to finish on the edge


def test_clients_hanging_up_mid_stream_free_both_tiers(tmp_path: Path) -> None:
    port = free_port()
    with cloud_at(port, tmp_path / "cloud.log"), edge_to(port, tmp_path / "edge.log", "--no-fallback") as edge:
        for _ in range(4):
            body = {"prompt": PROMPT, "max_tokens": 400, "temperature": 0, "stream": True}
            with httpx.stream("POST", f"{edge}/v1/completions", json=body, timeout=30) as r:
                for i, _line in enumerate(r.iter_lines()):
                    if i > 6:
                        break  # hang up mid-stream
        def held() -> tuple[float, float, float]:
            cloud_metrics = metric_samples(f"http://127.0.0.1:{port}")
            return (_gauge(metric_samples(edge), "edgesplit_edge_active_requests"),
                    _gauge(cloud_metrics, "edgesplit_cloud_active_sessions"),
                    _gauge(cloud_metrics, "edgesplit_cloud_in_flight_steps"))
        edge_active, cloud_sessions, cloud_steps = poll(held, lambda counts: not any(counts), 10, 0.2)
        assert (edge_active, cloud_sessions, cloud_steps) == (0, 0, 0), \
            f"still {edge_active} requests on the edge, {cloud_sessions} sessions and {cloud_steps} steps on the cloud"
        requests = metric_samples(edge)["edgesplit_edge_requests_total"]
        assert [s.value for s in requests if s.labels["outcome"] == "disconnected"] == [4]


def test_the_cloud_refuses_edges_without_its_token(tmp_path: Path) -> None:
    port = free_port()
    with cloud_at(port, tmp_path / "cloud.log"):
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v1/info").status_code == 401
        assert httpx.post(f"{base}/v1/shard/forward", content=b"x", headers={"authorization": "Bearer no"}
                          ).status_code == 403
        assert httpx.get(f"{base}/v1/info", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.get(f"{base}/health").status_code == 200 and httpx.get(f"{base}/metrics").status_code == 200
        edge_port = free_port()
        args = ["--model", str(MODEL), "--cloud", base, "--cut", "2:6"]
        with serve("edge", args, edge_port, tmp_path / "edge.log", env={"EDGE_CLOUD_TOKEN": "wrong"}) as p:
            health = _wait_answer(f"http://127.0.0.1:{edge_port}/health", p)
            assert health.json()["status"] == "degraded" and "wrong edge token" in health.json()["detail"]


def _wait_answer(url: str, proc: subprocess.Popen) -> httpx.Response:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the edge exited"
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.3)
    raise TimeoutError(url)


def _gauge(samples: dict[str, list[Sample]], name: str) -> float:
    (sample,) = samples[name]
    return sample.value



def test_a_terminated_edge_finishes_the_requests_in_flight(tmp_path: Path, shipped: LoadedModel) -> None:
    port = free_port()
    args = ["--model", str(MODEL), "--cut", "edge", "--threads", "1", "--emulate-slowdown", "15"]
    with serve("edge", args, port, tmp_path / "edge.log") as edge:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", edge)
        term = lambda i: edge.send_signal(signal.SIGTERM) if i == 3 else None  # noqa: E731
        out = stream(url, 60, term)
        assert out["done"] and out["error"] is None and out["text"] == reference_text(shipped, PROMPT, 60)
        assert edge.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        assert "Waiting for connections to close" in (tmp_path / "edge.log").read_text()
