"""The cloud on a one-node Ray cluster with 2 replicas: sessions spread over both, and one replica killed
mid-stream loses nothing: its sessions are replayed on the other, every output is the unsplit model's.

Real processes: `edgesplit serve cloud --ray` (which starts the cluster), a real edge, streaming clients.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
from pathlib import Path

import httpx
import pytest

from edgesplit.procs import free_port, replica_healths, serve, wait_healthy
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import load_checkpoint
from splitcore.testing import reference_text
from tests.servers import metric_samples, stream_completion

pytestmark = pytest.mark.e2e  # starts a Ray cluster: out of the fast loop

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / DEFAULT_MODEL_DIR
TOKEN = "edge-to-ray-token"
PROMPTS = [f"And it came to pass in the {n} day" for n in
           ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")]
TOKENS = 80


def stream(url: str, prompt: str, first_token: concurrent.futures.Future) -> dict:
    body = {"prompt": prompt, "max_tokens": TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    return stream_completion(url, body, lambda i: first_token.set_result(None) if i == 1 else None, timeout_s=120)


def test_sessions_spread_over_replicas_and_a_killed_replica_loses_no_generation(tmp_path: Path) -> None:
    shipped = load_checkpoint(MODEL)
    expected = {p: reference_text(shipped, p, TOKENS) for p in PROMPTS}
    cloud_port, edge_port = free_port(), free_port()
    cloud, edge = f"http://127.0.0.1:{cloud_port}", f"http://127.0.0.1:{edge_port}"
    cloud_args = ["--ray", "--replicas", "2", "--replica-cpus", "1", "--threads", "1", "--model", str(MODEL)]
    edge_args = ["--model", str(MODEL), "--cloud", cloud, "--cut", "2:6", "--codec", "fp32", "--threads", "1",
                 "--speculate", "off", "--cloud-step-timeout-s", "5"]
    with serve("cloud", cloud_args, cloud_port, tmp_path / "cloud.log", env={"CLOUD_AUTH_TOKEN": TOKEN}) as proc:
        wait_healthy(f"{cloud}/health", proc, timeout_s=180)
        replicas = replica_healths(cloud, 2)
        with serve("edge", edge_args, edge_port, tmp_path / "edge.log", env={"EDGE_CLOUD_TOKEN": TOKEN}) as e:
            wait_healthy(f"{edge}/health", e)
            assert httpx.get(f"{cloud}/v1/info").status_code == 401, "the replicas keep the cloud's auth"
            started = [concurrent.futures.Future() for _ in PROMPTS]
            with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
                runs = [pool.submit(stream, edge, p, f) for p, f in zip(PROMPTS, started, strict=True)]
                concurrent.futures.wait(started, timeout=60)
                took = {s.labels["replica"]: s.value for s in metric_samples(edge)
                        ["edgesplit_edge_cloud_replica_sessions_total"]}
                assert set(took) == set(replicas), f"sessions went to {took}, the replicas are {list(replicas)}"
                for name, health in replicas.items():  # each replica says what it holds, at its own address
                    own = httpx.get(f"{health['url']}/health").json()
                    assert own["replica"] == name and own["sessions"] == took[name], (own, took)
                victim = max(took, key=lambda r: took[r])  # the one holding the most live sessions
                os.kill(replicas[victim]["pid"], signal.SIGKILL)
                outs = [r.result(timeout=180) for r in runs]
            after = metric_samples(edge)
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out["done"] and out["error"] is None, out
        assert out["text"] == expected[prompt], f"{prompt!r} changed after the replica died"
        assert out["edgesplit"]["fallback"] is None, "the other replica took the session: no edge-only fallback"
    replays = after["edgesplit_edge_replays_total"][0].value
    assert replays >= took[victim], f"{took[victim]} sessions were on the killed replica, {replays} replayed"
    assert after["edgesplit_edge_fallbacks_total"][0].value == 0
