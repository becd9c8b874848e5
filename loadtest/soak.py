"""Soak: good and hostile traffic for minutes while the cloud is killed and restarted; nothing may be lost.

Both tiers run the shipped model as real processes (the cloud's shard API behind a token per edge). Good
clients stream greedy completions, each checked against the unsplit model's text; one of them goes through a
second edge whose cloud serves other weights (one changed element in a middle block), so every one of those must
fall back and still be exact. Bad clients send what a hostile or broken caller would (malformed JSON, oversized
prompts and bodies, bodies that stall, bad parameters, unknown models, garbage and truncated frames straight at
the cloud, calls without tokens, frames and deletes for another edge's session, non-streaming requests whose
caller hangs up). The cloud is SIGKILLed and restarted `--restarts` times. Reported: good requests served exactly,
differently or failed by cause, bad requests by status (any 5xx or hang is a failure), and both tiers' resident
memory at start, at the end of the traffic and once it settles (within 1.2x of the start is the bar).

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
from splitcore.loading import load_checkpoint
from splitcore.ranges import LayerRange
from splitcore.testing import reference_text

ROOT = Path(__file__).resolve().parents[1]
TOKEN, INTRUDER = "soak-edge-token", "soak-intruder-token"  # two edges' own credentials (CLOUD_EDGE_TOKENS)
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


def tampered_checkpoint(model: Path, out: Path) -> Path:
    """A copy of the checkpoint with one weight in the middle of block 3 changed: a cloud with other weights."""
    from splitcore.testing import save_checkpoint

    loaded = load_checkpoint(model)
    flat = loaded.layered.blocks[3].mlp.c_fc.weight.data.view(-1)
    flat[flat.numel() // 2] += 5.0
    return save_checkpoint(loaded, out)


def foreign_session(client: httpx.Client, cloud: str, digest: str) -> str:
    """The intruder opens a session of its own; the edge's token steps and deletes it (each must be a 404), then
    the intruder goes on with it (must be a 200: a foreign edge touched nothing). One status word for the count."""
    import uuid

    import torch

    from splitcore.codec import Dtype
    from splitcore.schema import SessionMeta
    from splitcore.wire import MEDIA_TYPE, FrameCodec

    sid, mid, codec = uuid.uuid4(), LayerRange(start=2, end=6), FrameCodec(Dtype.FP32)
    meta = SessionMeta(weights_digest=digest).model_dump_json().encode()

    def send(token: str, position: int, rows: int) -> int:
        frame = codec.encode(sid, position, mid, torch.randn(rows, 192), meta=meta if position == 0 else b"")
        return client.post(f"{cloud}/v1/shard/forward", content=frame,
                           headers={"content-type": MEDIA_TYPE, "authorization": f"Bearer {token}"}).status_code
    statuses = [send(INTRUDER, 0, 4), send(TOKEN, 4, 1),
                client.delete(f"{cloud}/v1/sessions/{sid}", headers={"authorization": f"Bearer {TOKEN}"}).status_code,
                send(INTRUDER, 4, 1)]
    client.delete(f"{cloud}/v1/sessions/{sid}", headers={"authorization": f"Bearer {INTRUDER}"})
    return "404, owner unharmed" if statuses == [200, 404, 404, 200] else f"wrong: {statuses}"


def partial_body(url: str, path: str, token: str, declared: int) -> str:
    """Headers declaring `declared` bytes, then 10 bytes of body and silence: the server must answer without
    waiting for the rest (408 for a stalled body, 413 for one over the limit). Raw, as no client sends this."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    head = (f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json"
            f"\r\ncontent-length: {declared}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head + b"0123456789")
        answer = s.recv(64)
    if not answer:  # closed without a word: counted as a failure, unless the cloud was being killed
        raise ConnectionResetError("the server closed the connection without an answer")
    return answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/1.1 ") else f"no answer {answer[:20]!r}"


def bad_requests(edge: str, cloud: str) -> list[tuple[str, dict]]:
    """(name, httpx request kwargs) of hostile or broken calls; each must get a 4xx."""
    frame_like = b"ESPL" + bytes([1, 1, 1, 0]) + b"\x00" * 50
    return [
        ("oversized body to the edge", {"method": "POST", "url": f"{edge}/v1/completions",
                                        "content": b"{" + b" " * (5 * 2**20) + b"}",
                                        "headers": {"content-type": "application/json"}}),
        ("oversized declared frame", {"args": (cloud, "/v1/shard/forward", TOKEN, 70_000_000)}),
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
        ("foreign-session frames", {"url": cloud}),
        ("slow body to the cloud", {"args": (cloud, "/v1/probe", TOKEN, 1000)}),
        ("slow body to the edge", {"args": (edge, "/v1/completions", "", 1000)}),
        ("hung-up whole-body request", {"method": "POST", "url": f"{edge}/v1/completions",
                                        "json": {"prompt": "And", "max_tokens": 400, "temperature": 0.7}}),
    ]


def settle(edge_pid: int, cloud_pid: int, memory: dict[str, float], wait_s: float = 30.0) -> tuple[float, float]:
    """Both tiers' RSS once idle: sampled until each is within 1.2x its start, or `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        edge, cloud = rss_mib(edge_pid), rss_mib(cloud_pid)
        if (edge <= 1.2 * memory["edge_start_mib"] and cloud <= 1.2 * memory["cloud_start_mib"]) \
                or time.monotonic() > deadline:
            return edge, cloud
        time.sleep(1.0)


class Soak:
    def __init__(self, args: argparse.Namespace, edge: str, cloud: str, mismatched_edge: str, digest: str,
                 expected: dict[str, str]) -> None:
        self.args, self.edge, self.cloud, self.mismatched_edge = args, edge, cloud, mismatched_edge
        self.digest, self.expected = digest, expected
        self.stop = threading.Event()
        self.cloud_down = threading.Event()  # set from the kill until the restarted cloud is healthy (and 1 s)
        self.lock = threading.Lock()
        self.good: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()

    def good_client(self, index: int) -> None:
        """Greedy streams, every one compared with the unsplit model's text; the last client goes through the edge
        whose cloud serves other weights."""
        edge = self.mismatched_edge if index == self.args.good_clients - 1 else self.edge
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)) as client:
            i = index
            while not self.stop.is_set():
                prompt = PROMPTS[i % len(PROMPTS)]
                done = stream_once(client, edge, prompt, self.args.max_tokens)
                cause = f"failed: {done.status} {done.error}"
                if done.status == 200 and not done.error:
                    cause = "served" if done.text == self.expected[prompt] else "served, but NOT the model's text"
                if edge == self.mismatched_edge:
                    cause += " (cloud with other weights)"
                with self.lock:
                    self.good[cause[:120]] += 1
                i += 1

    def bad_client(self) -> None:
        calls = bad_requests(self.edge, self.cloud)
        with httpx.Client(timeout=30.0) as client:
            while not self.stop.is_set():
                name, kwargs = random.choice(calls)
                try:
                    if name == "foreign-session frames":
                        status = foreign_session(client, self.cloud, self.digest)
                    elif "args" in kwargs:
                        status = partial_body(*kwargs["args"])
                    elif name == "hung-up whole-body request":
                        try:  # the caller gives up after 0.3 s; the edge must stop and free the slot
                            status = str(client.request(**kwargs, timeout=0.3).status_code)
                        except httpx.ReadTimeout:
                            status = "499 hung up"  # a closed caller, as nginx logs it
                    else:
                        status = str(client.request(**kwargs).status_code)
                except (httpx.TransportError, OSError) as exc:  # OSError: the raw-socket calls
                    to_cloud = (kwargs.get("url") or kwargs["args"][0]).startswith(self.cloud)
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
    cloud_env = {"CLOUD_EDGE_TOKENS": f"soak-edge={TOKEN},intruder={INTRUDER}", "CLOUD_BODY_IDLE_TIMEOUT_S": "2"}
    edge_env = {"EDGE_CLOUD_TOKEN": TOKEN, "EDGE_BODY_IDLE_TIMEOUT_S": "2"}
    loaded = load_checkpoint(model)
    expected = {prompt: reference_text(loaded, prompt, args.max_tokens) for prompt in PROMPTS}
    digest = loaded.digests.part(LayerRange(start=2, end=6))
    other_port, mismatched_port = free_port(), free_port()
    other_url, mismatched_url = f"http://127.0.0.1:{other_port}", f"http://127.0.0.1:{mismatched_port}"
    other_model = str(tampered_checkpoint(Path(model), work / "other-weights"))

    def start_cloud(n: int) -> tuple[AbstractContextManager[subprocess.Popen], subprocess.Popen]:
        ctx = serve("cloud", ["--model", model, "--threads", "1"], cloud_port, work / f"cloud{n}.log", env=cloud_env)
        proc = ctx.__enter__()
        wait_healthy(f"{cloud_url}/health", proc)
        return ctx, proc

    cloud_ctx, cloud = start_cloud(0)
    edge_args = ["--model", model, "--cloud", cloud_url, "--cut", "2:6", "--codec", "int8", "--threads", "1",
                 "--cloud-step-timeout-s", "2"]
    other_args = ["--model", other_model, "--threads", "1"]
    mismatched_args = [*edge_args[:2], "--cloud", other_url, *edge_args[4:]]
    with serve("cloud", other_args, other_port, work / "other-cloud.log", env=cloud_env) as other, \
            serve("edge", edge_args, edge_port, work / "edge.log", env=edge_env) as edge, \
            serve("edge", mismatched_args, mismatched_port, work / "mismatched-edge.log", env=edge_env) as mismatched:
        wait_healthy(f"{other_url}/health", other)
        wait_healthy(f"{edge_url}/health", edge)
        wait_healthy(f"{mismatched_url}/v1/models", mismatched)  # up, though never ready: its cloud is another model
        soak = Soak(args, edge_url, cloud_url, mismatched_url, digest, expected)
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
            time.sleep(4.0)  # warm, as at the start: this process's own starting size
            memory["cloud_start_mib"] = rss_mib(cloud.pid)
        time.sleep(max(0.0, started + args.duration_s - time.monotonic()))
        memory |= {"edge_end_mib": rss_mib(edge.pid), "cloud_end_mib": rss_mib(cloud.pid)}
        soak.stop.set()
        for t in threads:
            t.join(timeout=120)
        settled = settle(edge.pid, cloud.pid, memory)
        memory |= {"edge_settled_mib": settled[0], "cloud_settled_mib": settled[1]}
        metrics = httpx.get(f"{edge_url}/metrics").text
    cloud_ctx.__exit__(None, None, None)
    served = sum(c for k, c in soak.good.items() if k.startswith("served") and "NOT" not in k)
    server_errors = sum(c for k, c in soak.bad.items()
                        if not k.rsplit(": ", 1)[1].startswith(("4", "cloud down")))
    fallbacks = [ln for ln in metrics.splitlines() if ln.startswith("edgesplit_edge_fallbacks_total")]
    print(f"{args.duration_s:.0f} s, {args.restarts} cloud restarts, {args.good_clients} good + {args.bad_clients} "
          f"bad clients")
    print(f"good requests: {sum(soak.good.values())}, served with the unsplit model's text {served}; by outcome: "
          f"{dict(soak.good)}")
    print(f"bad requests: {sum(soak.bad.values())}, answered with anything but a 4xx (other than to a killed "
          f"cloud): {server_errors}")
    for key in sorted(soak.bad):
        print(f"  {key}: {soak.bad[key]}")
    print(f"edge fallbacks: {fallbacks}")
    print("memory (RSS, MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in memory.items()))
    for tier in ("edge", "cloud"):
        ratio = memory[f"{tier}_settled_mib"] / memory[f"{tier}_start_mib"]
        print(f"{tier} RSS once the traffic settled: {ratio:.2f}x its start ({'within' if ratio <= 1.2 else 'OVER'} "
              "the 1.2x bar)")
    print("RSS every 15 s (s: edge / cloud MiB; the cloud restarts at the kills): " + ", ".join(
        f"{t:.0f}: {e:.0f}/{c:.0f}" for t, e, c in timeline))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "good": soak.good,
                                     "bad": soak.bad, "memory": memory,
                                     "rss_timeline": timeline}, indent=1))


if __name__ == "__main__":
    main()
