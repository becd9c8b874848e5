"""Every plan against the planner's choice, on emulated links: `edgesplit bench` and `bench/links.py`.

For each model (a GPT-2-small-shaped and a Llama-shaped one, about 124M parameters each, random weights: they
time like trained ones) the cloud and the edge run as real processes, each pinned to its own core of this
machine with one torch thread, so they stand for two machines. The edge is made the slower tier with
`--emulate-slowdown` (its compute sleeps N - 1 times as long again, holding its one core, and its profile says
so). The cloud is reached through the userspace link emulator, set to each link in turn.

On each link the edge runs, by hand through `POST /admin/plan`, edge-only, cloud-only and single cuts `a:L`
(blocks 0..a on the edge, the rest and the head in the cloud; every cut up to the middle and every other one
after it, or all with `--every-cut`), then asks its own planner for a plan (`search: true`, on the link as its
estimator measured it and the benchmark's workload). The chosen plan and the sweep's best are then run in
alternation, `--confirm` bursts each, and compared with each other.
A run is `--streams` greedy requests of `--prompt` tokens and `--tokens` new tokens started together,
`--rounds` times, after a warm-up; figures are medians over the requests, from the edge's own timing of each
(the `edgesplit` extension of the response). Reported: time to first token, time per output token and request
time of each plan, and the chosen plan's request time against the best measured, edge-only and cloud-only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from transformers import PretrainedConfig

from edgesplit.tools.checkpoints import build, model_configs
from edgesplit.tools.scenario import Deployment, deployment

LINKS = {"LAN": (1e9, 1.0), "Wi-Fi": (50e6, 10.0), "LTE": (10e6, 50.0), "poor": (1e6, 150.0)}


def run_requests(url: str, prompt: list[int], tokens: int, streams: int, rounds: int) -> list[dict]:
    """`rounds` bursts of `streams` identical greedy requests started together; each one's figures."""
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0}

    def one(client: httpx.Client) -> dict:
        started = time.perf_counter()
        r = client.post(f"{url}/v1/completions", json=body)
        r.raise_for_status()
        out = r.json()
        ext, n = out["edgesplit"], out["usage"]["completion_tokens"]
        ttft, total = ext["time_to_first_token_ms"], ext["total_ms"]
        return {"ttft_ms": ttft, "total_ms": total, "tpot_ms": (total - ttft) / max(1, n - 1), "tokens": n,
                "client_ms": (time.perf_counter() - started) * 1000, "text": out["choices"][0]["text"],
                "plan": ext["plan"]}

    results: list[dict] = []
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=streams)) as client, \
            ThreadPoolExecutor(streams) as pool:
        for _ in range(rounds):
            results += list(pool.map(lambda _: one(client), range(streams)))
    return results


def plan_body(cut: str) -> dict:
    """The admin API's body for one swept plan: int8 between the tiers, the head in the cloud."""
    return {"cut": cut, "head": "edge" if cut == "edge" else "cloud", "codec": "int8"}


def measure(dep: Deployment, body: dict, args: argparse.Namespace, prompt: list[int], rounds: int) -> list[dict]:
    """Switch the edge to the plan `body` describes, warm up, run `rounds` bursts; each request's figures."""
    dep.post_plan(body)
    run_requests(dep.edge_url, prompt[:8], 2, 1, 1)  # warm-up: the first step of a plan pays one-off costs
    return run_requests(dep.edge_url, prompt, args.tokens, args.streams, rounds)


def medians(runs: list[dict]) -> dict:
    row = {key: statistics.median(r[key] for r in runs) for key in ("ttft_ms", "tpot_ms", "total_ms", "client_ms")}
    return {**row, "plan": runs[0]["plan"], "requests": len(runs), "distinct_outputs": len({r["text"] for r in runs}),
            "min_tokens": min(r["tokens"] for r in runs)}


def swept_cuts(n: int, every: bool) -> list[str]:
    """Cloud-only, single cuts a:L, edge-only. Dense: every cut up to the middle, every other one after it."""
    cuts = range(1, n) if every else [*range(1, n // 2 + 1), *range(n // 2 + 2, n, 2)]
    return ["cloud", *[str(a) for a in cuts], "edge"]


def bench_link(dep: Deployment, link: str, n: int, args: argparse.Namespace, prompt: list[int]) -> dict:
    """Sweep the plans, ask the planner, then measure the chosen plan and the sweep's best in alternation
    (`--confirm` times each), so the ratio between them is not the luck of one sweep's noise."""
    bandwidth, rtt = LINKS[link]
    dep.link.set(bandwidth, rtt)
    rows: dict[str, dict] = {}
    for cut in swept_cuts(n, args.every_cut):
        rows[cut] = medians(measure(dep, plan_body(cut), args, prompt, args.rounds))
        print(f"  {link:6} {cut:>6}: ttft {rows[cut]['ttft_ms']:8.1f} ms  tpot {rows[cut]['tpot_ms']:7.1f} ms  "
              f"total {rows[cut]['total_ms']:8.1f} ms", flush=True)
    estimate = dep.plan()["link"]  # what the edge's estimator made of the link, from the traffic just measured
    choice = dep.post_plan({"search": True, "apply": False,
                            "workload": f"{args.prompt}:{args.tokens}:{args.streams}"})
    plan = choice["plan"]
    chosen_body = {"cut": f"{plan['cut_a']}:{plan['cut_b']}", "head": plan["head"], "codec": plan["codec"],
                   "zstd_level": plan["zstd_level"]}
    best_cut = min(rows, key=lambda c: rows[c]["total_ms"])
    best_runs: list[dict] = []
    chosen_runs: list[dict] = []
    for _ in range(args.confirm):
        chosen_runs += measure(dep, chosen_body, args, prompt, 1)
        best_runs += measure(dep, plan_body(best_cut), args, prompt, 1)
    chosen, best = medians(chosen_runs), medians(best_runs)
    ratio = chosen["total_ms"] / best["total_ms"]
    print(f"  {link:6} chosen {choice['describe']}: total {chosen['total_ms']:.1f} ms, {ratio:.3f} x the best "
          f"({best_cut}, {best['total_ms']:.1f} ms in the same alternation)", flush=True)
    return {"link": link, "bandwidth_bps": bandwidth, "rtt_ms": rtt, "estimated": estimate, "plans": rows,
            "chosen": {**chosen, "plan": plan, "describe": choice["describe"], "predicted": choice["estimate"],
                       "search_s": choice["search_s"]},
            "best_measured": best_cut, "best_confirmed": best, "chosen_vs_best": ratio,
            "chosen_vs_edge_only": chosen["total_ms"] / rows["edge"]["total_ms"],
            "chosen_vs_cloud_only": chosen["total_ms"] / rows["cloud"]["total_ms"]}


def bench_model(name: str, config: PretrainedConfig, args: argparse.Namespace, work: Path) -> dict:
    path, params = build(name, config, work)
    n = config.num_hidden_layers
    prompt = [(7 * i + 11) % 256 + 3 for i in range(args.prompt)]
    edge_args = ["--cut", "edge", "--speculate", "off", "--threads", "1", "--emulate-slowdown", str(args.slowdown),
                 "--no-adaptive",
                 "--allow-tokens-off-device", "--max-concurrent-requests", str(max(32, args.streams))]
    first = LINKS[args.links[0]]
    cores = sorted(os.sched_getaffinity(0))
    edge_cpus, cloud_cpus = ({cores[0]}, {cores[1]}) if len(cores) >= 2 else (None, None)  # one core: shared
    with deployment(path, edge_args, work / f"{name}-logs", first[0], first[1], cloud_args=["--threads", "1"],
                    edge_cpus=edge_cpus, cloud_cpus=cloud_cpus) as dep:
        started = time.monotonic()
        profiles = dep.admin("/admin/profile")  # both tiers' profiles, measured now on their own cores
        print(f"{name}: {params / 1e6:.0f}M parameters, profiles in {time.monotonic() - started:.0f} s", flush=True)
        links = [bench_link(dep, link, n, args, prompt) for link in args.links]
    return {"model": name, "parameters": params, "num_layers": n, "links": links,
            "edge_emulation": profiles["edge"]["machine"]["emulation"],
            "cloud_machine": profiles["cloud"]["machine"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="edgesplit bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(model_configs()), choices=list(model_configs()))
    ap.add_argument("--links", nargs="+", default=list(LINKS), choices=list(LINKS))
    ap.add_argument("--slowdown", type=float, default=3.0, help="the edge's emulated slowdown against one core")
    ap.add_argument("--streams", type=int, default=4, help="requests at once (the workload the planner is told)")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="bursts per swept plan")
    ap.add_argument("--confirm", type=int, default=3, help="alternations of the chosen plan and the sweep's best")
    ap.add_argument("--every-cut", action="store_true", help="sweep every cut, not the dense sample")
    ap.add_argument("--out", type=Path, default=Path("bench/results/links.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgesplit-links-"))
    results = {"workload": {"prompt_tokens": args.prompt, "output_tokens": args.tokens, "streams": args.streams,
                            "rounds": args.rounds, "confirm": args.confirm},
               "edge": f"1 core (pinned), 1 torch thread, emulated {args.slowdown:g}x slower (--emulate-slowdown)",
               "cloud": "1 other core (pinned), 1 torch thread",
               "models": [bench_model(name, model_configs()[name], args, work) for name in args.models]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    from edgesplit.tools.linkreport import plot, table  # matplotlib only when writing the report

    print(table(results))
    for path in plot(results, args.out.with_suffix("")):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
