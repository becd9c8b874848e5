"""Soak: good and hostile traffic for minutes while the cloud is killed and restarted; nothing may be lost.

Both tiers run the shipped model as real processes (the cloud's shard API behind a token). Good clients stream
greedy completions; bad clients send what a hostile or broken caller would (malformed JSON, oversized prompts,
bad parameters, unknown models, garbage, truncated and bomb frames straight at the cloud, calls without
tokens). The cloud is SIGKILLed and restarted `--restarts` times. Reported: good requests served and failed
by cause, bad requests by status (any 5xx or hang is a failure), and both tiers' resident memory at start and
end.

    python loadtest/soak.py [--duration-s 300] [--restarts 2] [--good-clients 3] [--bad-clients 2]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from contextlib import AbstractContextManager
from pathlib import Path

import httpx

from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.tools.scenario import stream_once
from splitcore.defaults import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "soak-edge-token"
PROMPTS = ["And it came to pass", "In the beginning God", "The LORD is my shepherd", "Blessed are the"]


def rss_mib(pid: int) -> float:
    """Resident memory of a process; NaN for one that has just been killed."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bad_requests(edge: str, cloud: str) -> list[tuple[str, dict]]:
    """(name, httpx request kwargs) of hostile or broken calls; each must get a 4xx."""
    frame_like = b"ESPL" + bytes([1, 1, 1, 0]) + b"\x00" * 50
    return [
        ("malformed json", {"method": "POST", "url": f"{edge}/v1/completions", "content": b"{not json",
                            "headers": {"content-type": "application/json"}}),
        ("huge prompt", {"method": "POST", "url": f"{edge}/v1/completions",
                         "json": {"prompt": "amen " * 20000, "max_tokens": 4}}),
        ("negative temperature", {"method": "POST", "url": f"{edge}/v1/completions",
                                  "json": {"prompt": "x", "temperature": -1}}),
        ("max_tokens too large", {"method": "POST", "url": f"{edge}/v1/completions",
                                  "json": {"prompt": "x", "max_tokens": 10**7}}),
        ("unknown model", {"method": "POST", "url": f"{edge}/v1/completions",
                           "json": {"prompt": "x", "model": "gpt-9"}}),
        ("token ids out of range", {"method": "POST", "url": f"{edge}/v1/completions",
                                    "json": {"prompt": [1, 2, 10**9], "max_tokens": 2}}),
        ("admin without token", {"method": "GET", "url": f"{edge}/admin/plan"}),
        ("cloud without token", {"method": "POST", "url": f"{cloud}/v1/shard/forward", "content": frame_like}),
        ("garbage frame", {"method": "POST", "url": f"{cloud}/v1/shard/forward", "content": random.randbytes(300),
                           "headers": {"authorization": f"Bearer {TOKEN}"}}),
        ("truncated frame", {"method": "POST", "url": f"{cloud}/v1/shard/forward", "content": frame_like[:30],
                             "headers": {"authorization": f"Bearer {TOKEN}"}}),
        ("unknown session", {"method": "DELETE", "url": f"{cloud}/v1/sessions/00000000-0000-0000-0000-000000000001",
                             "headers": {"authorization": f"Bearer {TOKEN}"}}),
    ]


class Soak:
    def __init__(self, args: argparse.Namespace, edge: str, cloud: str) -> None:
        self.args, self.edge, self.cloud = args, edge, cloud
        self.stop = threading.Event()
        self.cloud_down = threading.Event()  # set from the kill until the restarted cloud is healthy (and 1 s)
        self.lock = threading.Lock()
        self.good: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()

    def good_client(self, index: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)) as client:
            i = index
            while not self.stop.is_set():
                done = stream_once(client, self.edge, PROMPTS[i % len(PROMPTS)], self.args.max_tokens)
                cause = "served" if done.status == 200 and not done.error else f"failed: {done.status} {done.error}"
                with self.lock:
                    self.good[cause[:120]] += 1
                i += 1

    def bad_client(self) -> None:
        calls = bad_requests(self.edge, self.cloud)
        with httpx.Client(timeout=30.0) as client:
            while not self.stop.is_set():
                name, kwargs = random.choice(calls)
                try:
                    status = str(client.request(**kwargs).status_code)
                except httpx.TransportError as exc:
                    to_cloud = kwargs["url"].startswith(self.cloud)
                    # the cloud is down between a kill and its restart: that is the fault injected, not an answer
                    status = f"cloud down ({type(exc).__name__})" if to_cloud and self.cloud_down.is_set() else (
                        type(exc).__name__)  # anything else (a hang, a reset from a live server) is a failure
                with self.lock:
                    self.bad[f"{name}: {status}"] += 1
                time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration-s", type=float, default=300)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--good-clients", type=int, default=3)
    ap.add_argument("--bad-clients", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/soak.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesplit-soak-"))
    model = str(ROOT / DEFAULT_MODEL_DIR)
    cloud_port, edge_port = free_port(), free_port()
    cloud_url, edge_url = f"http://127.0.0.1:{cloud_port}", f"http://127.0.0.1:{edge_port}"
    cloud_env = {"CLOUD_AUTH_TOKEN": TOKEN}

    def start_cloud(n: int) -> tuple[AbstractContextManager[subprocess.Popen], subprocess.Popen]:
        ctx = serve("cloud", ["--model", model, "--threads", "1"], cloud_port, work / f"cloud{n}.log", env=cloud_env)
        proc = ctx.__enter__()
        wait_healthy(f"{cloud_url}/health", proc)
        return ctx, proc

    cloud_ctx, cloud = start_cloud(0)
    edge_args = ["--model", model, "--cloud", cloud_url, "--cut", "2:6", "--codec", "int8", "--threads", "1",
                 "--cloud-step-timeout-s", "2"]
    with serve("edge", edge_args, edge_port, work / "edge.log", env={"EDGE_CLOUD_TOKEN": TOKEN}) as edge:
        wait_healthy(f"{edge_url}/health", edge)
        soak = Soak(args, edge_url, cloud_url)
        threads = [threading.Thread(target=soak.good_client, args=(i,)) for i in range(args.good_clients)]
        threads += [threading.Thread(target=soak.bad_client) for _ in range(args.bad_clients)]
        for t in threads:
            t.start()
        time.sleep(5)  # warm: measure memory once every code path has run
        memory = {"edge_start_mib": rss_mib(edge.pid), "cloud_start_mib": rss_mib(cloud.pid)}
        started = time.monotonic()
        timeline: list[tuple[float, float, float]] = []
        current = {"cloud": cloud}

        def sample() -> None:
            while not soak.stop.wait(15):
                timeline.append((time.monotonic() - started, rss_mib(edge.pid), rss_mib(current["cloud"].pid)))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        restarts_at = [args.duration_s * (i + 1) / (args.restarts + 1) for i in range(args.restarts)]
        for n, at in enumerate(restarts_at, start=1):
            time.sleep(max(0.0, started + at - time.monotonic()))
            soak.cloud_down.set()
            cloud.send_signal(signal.SIGKILL)
            cloud_ctx.__exit__(None, None, None)
            print(f"{time.monotonic() - started:6.1f} s: cloud killed; restarting", flush=True)
            cloud_ctx, cloud = start_cloud(n)
            current["cloud"] = cloud
            time.sleep(1.0)  # requests sent just before the restart finished may still fail to connect
            soak.cloud_down.clear()
        time.sleep(max(0.0, started + args.duration_s - time.monotonic()))
        memory |= {"edge_end_mib": rss_mib(edge.pid), "cloud_end_mib": rss_mib(cloud.pid)}
        soak.stop.set()
        for t in threads:
            t.join(timeout=120)
        metrics = httpx.get(f"{edge_url}/metrics").text
    cloud_ctx.__exit__(None, None, None)
    served = soak.good.get("served", 0)
    server_errors = sum(c for k, c in soak.bad.items()
                        if not k.rsplit(": ", 1)[1].startswith(("4", "cloud down")))
    fallbacks = [ln for ln in metrics.splitlines() if ln.startswith("edgesplit_edge_fallbacks_total")]
    print(f"{args.duration_s:.0f} s, {args.restarts} cloud restarts, {args.good_clients} good + {args.bad_clients} "
          f"bad clients")
    print(f"good requests: {sum(soak.good.values())}, served {served}; by outcome: {dict(soak.good)}")
    print(f"bad requests: {sum(soak.bad.values())}, answered with anything but a 4xx (other than to a killed "
          f"cloud): {server_errors}")
    for key in sorted(soak.bad):
        print(f"  {key}: {soak.bad[key]}")
    print(f"edge fallbacks: {fallbacks}")
    print("memory (RSS, MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in memory.items()))
    print("RSS every 15 s (s: edge / cloud MiB; the cloud restarts at the kills): " + ", ".join(
        f"{t:.0f}: {e:.0f}/{c:.0f}" for t, e, c in timeline))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "good": soak.good,
                                     "bad": soak.bad, "memory": memory,
                                     "rss_timeline": timeline}, indent=1))


if __name__ == "__main__":
    main()
