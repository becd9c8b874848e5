"""Overhead of the split over loopback, as a ratio of monolithic `transformers` generation in the same run.

A GPT-2-small-shaped model (12 blocks, hidden 768, vocab 50257: 124M parameters, random weights, which time
like trained ones) is written as a checkpoint; the cloud and the edge run as two real processes on loopback.
For each configuration the same greedy request (prompt and output lengths below) is timed `--repeats`
times after a warm-up; tokens per second are compared with `model.generate` of the same checkpoint in
this process. Bytes per decode step come from the edge's own accounting of the frames it sent and received.

Usage: python bench/overhead.py [--tokens 64] [--prompt 32] [--repeats 5] [--json bench/results/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch

from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.tools.checkpoints import build, model_configs
from splitcore.loading import load_checkpoint

CONFIGS = [("edge-only (HTTP, no cloud)", "edge", "fp32"), ("split 3:9, int8", "3:9", "int8"),
           ("split 3:9, fp16", "3:9", "fp16"), ("split 6:12, int8", "6", "int8")]


def time_monolithic(path: Path, prompt: list[int], tokens: int, repeats: int) -> tuple[float, int]:
    model = load_checkpoint(path).layered.model
    ids = torch.tensor([prompt])
    def run() -> int:
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        return out.shape[1] - len(prompt)
    run()  # warm-up
    times, n = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        n = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), n


def time_service(url: str, prompt: list[int], tokens: int, repeats: int) -> tuple[float, int, dict]:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0}
    with httpx.Client(timeout=300) as client:
        client.post(f"{url}/v1/completions", json=body).raise_for_status()  # warm-up
        times, out = [], {}
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.post(f"{url}/v1/completions", json=body)
            times.append(time.perf_counter() - started)
            response.raise_for_status()
            out = response.json()
    return statistics.median(times), out["usage"]["completion_tokens"], out["edgesplit"]["link"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("bench/results/overhead.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesplit-bench-"))
    path = build("gpt2-small-shaped", model_configs()["gpt2-small-shaped"], work)[0]
    prompt = list(range(1000, 1000 + args.prompt))
    mono_s, mono_n = time_monolithic(path, prompt, args.tokens, args.repeats)
    mono_tps = mono_n / mono_s
    rows = [{"config": "monolithic transformers generate", "tokens_per_s": mono_tps, "ratio": 1.0}]
    cloud_port = free_port()
    with serve("cloud", ["--model", str(path)], cloud_port, work / "cloud.log") as cloud:
        wait_healthy(f"http://127.0.0.1:{cloud_port}/health", cloud)
        for name, cut, codec in CONFIGS:
            port = free_port()
            edge_args = ["--model", str(path), "--cloud", f"http://127.0.0.1:{cloud_port}", "--cut", cut,
                         "--codec", codec, "--speculate", "off"]
            with serve("edge", edge_args, port, work / f"edge-{cut}-{codec}.log") as edge:
                wait_healthy(f"http://127.0.0.1:{port}/health", edge)
                seconds, n, link = time_service(f"http://127.0.0.1:{port}", prompt, args.tokens, args.repeats)
            rows.append({"config": name, "tokens_per_s": n / seconds, "ratio": (n / seconds) / mono_tps,
                         "decode_bytes_up_per_token": link["decode_bytes_up_per_token"],
                         "decode_bytes_down_per_token": link["decode_bytes_down_per_token"]})
    raw = 768 * 4
    print(f"GPT-2-small-shaped (124M), prompt {args.prompt} tokens, {args.tokens} generated, median of "
          f"{args.repeats}; hidden_size 768 (raw fp32 hidden state {raw} bytes)")
    print("| configuration | tokens/s | ratio to monolithic | bytes up / decode step | bytes down / decode step |")
    print("|---|---|---|---|---|")
    for r in rows:
        up, down = r.get("decode_bytes_up_per_token", "-"), r.get("decode_bytes_down_per_token", "-")
        print(f"| {r['config']} | {r['tokens_per_s']:.1f} | {r['ratio']:.3f} | {up} | {down} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
