"""Cost model against measurement: predicted and measured time to first token and time per output token.

A GPT-2-small-shaped model (124M, random weights) is split over a real cloud process reached through the
link emulator (default 50 Mbit/s, 20 ms RTT). The edge runs in this process on 1 thread (1 of the 2
cores), the cloud process on both; on this machine decode is memory-bound and barely faster on 2 threads,
so the two tiers are close in speed here. Profiles: the edge's measured here, the
cloud's from its GET /profile; the link as the edge's own estimator measures it through the emulator. Every
plan is measured: edge-only, each single cut a:L (head on the edge), and cloud-only; the table gives the
absolute relative error of each prediction and the median over plans (bar: 15%).

Usage: python bench/costmodel.py [--bandwidth 50mbit] [--rtt 20ms] [--prompt 64] [--tokens 16]
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

from edge_service.cloud_client import CloudClient
from edge_service.orchestrator import Finished, GenerationRequest, Orchestrator
from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.tools.checkpoints import build, model_configs
from edgesplit.tools.linkemu import LinkEmulator
from partitioner.costmodel import Workload, predict
from profiling.link_estimator import LinkEstimator, parse_bandwidth, parse_duration_ms, probe_link
from profiling.profile import Profile
from profiling.profiler import measure_profile
from splitcore.loading import load_checkpoint
from splitcore.plan import Plan


def measure(orch: Orchestrator, prompt: list[int], tokens: int, repeats: int) -> tuple[float, float]:
    """Median time to first token and time per output token (ms) of a greedy generation."""
    ttft, tpot = [], []
    for i in range(repeats + 1):
        events = list(orch.generate(GenerationRequest(prompt_ids=prompt, max_tokens=tokens)))
        done = events[-1]
        assert isinstance(done, Finished) and len(done.token_ids) > 1
        if i:  # the first run warms up
            ttft.append(done.time_to_first_token_ms)
            tpot.append((done.total_ms - done.time_to_first_token_ms) / (len(done.token_ids) - 1))
    return statistics.median(ttft), statistics.median(tpot)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bandwidth", default="50mbit")
    ap.add_argument("--rtt", default="20ms")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("bench/results/costmodel.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="edgesplit-costmodel-"))
    path = build("gpt2-small-shaped", model_configs()["gpt2-small-shaped"], work)[0]
    loaded = load_checkpoint(path)
    n = loaded.layered.num_layers
    edge_profile = measure_profile(loaded, "edge", repeats=3, emulation="1 of 2 cores (torch threads = 1)")
    prompt = list(range(1000, 1000 + args.prompt))
    workload = Workload(prompt_tokens=args.prompt, output_tokens=args.tokens)
    cloud_port = free_port()
    with serve("cloud", ["--model", str(path)], cloud_port, work / "cloud.log") as proc:
        wait_healthy(f"http://127.0.0.1:{cloud_port}/health", proc)
        cloud_profile = Profile.model_validate(httpx.get(f"http://127.0.0.1:{cloud_port}/profile", timeout=600).json())
        with LinkEmulator(cloud_port, parse_bandwidth(args.bandwidth), parse_duration_ms(args.rtt)) as port:
            client = CloudClient(f"http://127.0.0.1:{port}")
            estimator = LinkEstimator()
            probe_link(client.probe, estimator, rounds=6)
            link = estimator.estimate().as_link()
            plans = [Plan(num_layers=n, cut_a=n, cut_b=n)]
            plans += [Plan(num_layers=n, cut_a=a, cut_b=n, codec="int8") for a in range(1, n)]
            plans += [Plan(num_layers=n, cut_a=0, cut_b=n, head="cloud", codec="int8")]
            rows = []
            for plan in plans:
                started = time.perf_counter()
                ttft, tpot = measure(Orchestrator(loaded, plan, client), prompt, args.tokens, args.repeats)
                est = predict(plan, edge_profile, cloud_profile, link, workload)
                rows.append({"plan": plan.describe(), "ttft_ms": ttft, "ttft_pred_ms": est.time_to_first_token_ms,
                             "tpot_ms": tpot, "tpot_pred_ms": est.time_per_output_token_ms,
                             "ttft_err": abs(est.time_to_first_token_ms - ttft) / ttft,
                             "tpot_err": abs(est.time_per_output_token_ms - tpot) / tpot,
                             "seconds": time.perf_counter() - started})
            client.close()
    print(f"link emulated {args.bandwidth} / {args.rtt}; estimated {link.bandwidth_bps / 1e6:.1f} Mbit/s, "
          f"rtt {link.rtt_ms:.1f} ms; prompt {args.prompt}, {args.tokens} tokens, median of {args.repeats}")
    print("| plan | TTFT measured ms | predicted | error | per token measured ms | predicted | error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['plan']} | {r['ttft_ms']:.1f} | {r['ttft_pred_ms']:.1f} | {r['ttft_err']:.1%} | "
              f"{r['tpot_ms']:.1f} | {r['tpot_pred_ms']:.1f} | {r['tpot_err']:.1%} |")
    med_ttft = statistics.median(r["ttft_err"] for r in rows)
    med_tpot = statistics.median(r["tpot_err"] for r in rows)
    print(f"median absolute error: time to first token {med_ttft:.1%}, time per output token {med_tpot:.1%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"link": link.model_dump(), "rows": rows, "median_ttft_err": med_ttft,
                                     "median_tpot_err": med_tpot}, indent=1))


if __name__ == "__main__":
    main()
