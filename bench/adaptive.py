"""Live repartitioning against a static plan, in the same run, on the same link schedule.

The shipped model, the edge emulated N x slower than the cloud (`--emulate-slowdown`), the cloud behind the
userspace link emulator. The link is fast, then degrades, then recovers. For the adaptive edge (`--plan auto`)
this reports how long after each link change the plan changed; for both edges, time per output token and
time to first token of the requests that started in each phase, and the ratio of adaptive to static. The static
edge keeps the plan the adaptive one chose at start, which is the right plan for the fast link.

    python bench/adaptive.py [--phase-s 12] [--slowdown 4] [--clients 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from edgesplit.tools.scenario import Completed, Deployment, Traffic, deployment, wait_for
from splitcore.defaults import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["And it came to pass", "In the beginning God", "The LORD is my shepherd", "Blessed are the"]
PHASES = [("before (fast)", 1e9, 1.0), ("degraded", 20e6, 40.0), ("after (fast again)", 1e9, 1.0)]


def run(dep: Deployment, args: argparse.Namespace, adaptive: bool) -> dict:
    """Drive traffic through the phases; return per-phase figures and, if adaptive, the reaction times."""
    marks, reactions = [], []
    with Traffic(dep.edge_url, PROMPTS, args.max_tokens, clients=args.clients) as traffic:
        for i, (_, bandwidth, rtt) in enumerate(PHASES):
            if i:
                dep.link.set(bandwidth, rtt)
            marks.append(time.monotonic())
            if adaptive and i:
                before = len(dep.plan()["changes"])
                took = wait_for(lambda b=before: len(dep.plan()["changes"]) > b, timeout_s=args.phase_s)
                reactions.append(took)
            time.sleep(max(0.0, marks[-1] + args.phase_s - time.monotonic()))
    marks.append(time.monotonic())
    phases = []
    for (name, bandwidth, rtt), start, end in zip(PHASES, marks, marks[1:], strict=False):
        done = [r for r in traffic.results if start <= r.started_s < end]
        phases.append({"phase": name, "bandwidth_bps": bandwidth, "rtt_ms": rtt, **summarise(done)})
    failed = [r for r in traffic.results if r.error or r.status != 200]
    return {"phases": phases, "reaction_s": reactions, "requests": len(traffic.results), "failed": len(failed),
            "changes": dep.plan()["changes"]}


def summarise(done: list[Completed]) -> dict:
    tpot = [t for r in done if (t := r.time_per_output_token_s) is not None]
    ttft = [r.chunk_s[0] - r.started_s for r in done if r.chunk_s]
    return {"requests": len(done), "tpot_ms_median": statistics.median(tpot) * 1000 if tpot else None,
            "ttft_ms_median": statistics.median(ttft) * 1000 if ttft else None,
            "plans": sorted({str(r.cut) for r in done})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase-s", type=float, default=12.0, help="seconds per link phase")
    ap.add_argument("--slowdown", type=float, default=4.0, help="the edge's emulated compute slowdown")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/adaptive.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesplit-adaptive-"))
    model = ROOT / DEFAULT_MODEL_DIR
    common = ["--speculate", "off", "--edge-profile", str(ROOT / "profiles/edge-1thread-default.json"),
              "--emulate-slowdown", str(args.slowdown), "--threads", "1", "--probe-interval-s", "1",
              "--workload", f"32:{args.max_tokens}",
              "--probe-max-interval-s", "1", "--probe-budget-bytes-per-s", "1e9"]  # probe every idle second, as before
    cloud_args = ["--threads", "1", "--profile", str(ROOT / "profiles/cloud-default.json")]
    fast = PHASES[0][1:]
    with deployment(model, ["--plan", "auto", "--max-codec-loss", "0", *common], work / "adaptive",
                    *fast, cloud_args=cloud_args) as dep:
        start_plan = dep.plan()["plan"]
        adaptive = run(dep, args, adaptive=True)
    cut = f"{start_plan['cut_a']}:{start_plan['cut_b']}"
    with deployment(model, ["--cut", cut, "--codec", start_plan["codec"], *common], work / "static",
                    *fast, cloud_args=cloud_args) as dep:
        static = run(dep, args, adaptive=False)
    print(f"shipped model, edge emulated {args.slowdown:g}x slower, {args.clients} streaming clients, "
          f"{args.max_tokens} tokens per request, {args.phase_s:g} s per phase; static plan: cut {cut}")
    print("reaction (link change -> new plan), s: " + ", ".join(
        "none" if r is None else f"{r:.1f}" for r in adaptive["reaction_s"]))
    print("| phase | link | adaptive TPOT ms | static TPOT ms | ratio | adaptive TTFT ms | static TTFT ms | "
          "adaptive plans | requests a/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for a, s in zip(adaptive["phases"], static["phases"], strict=True):
        ratio = a["tpot_ms_median"] / s["tpot_ms_median"] if a["tpot_ms_median"] and s["tpot_ms_median"] else None
        print(f"| {a['phase']} | {a['bandwidth_bps'] / 1e6:g} Mbit/s, {a['rtt_ms']:g} ms | {_f(a['tpot_ms_median'])}"
              f" | {_f(s['tpot_ms_median'])} | {_f(ratio, 3)} | {_f(a['ttft_ms_median'])} | "
              f"{_f(s['ttft_ms_median'])} | {' '.join(a['plans'])} | {a['requests']}/{s['requests']} |")
    print(f"failed requests: adaptive {adaptive['failed']} of {adaptive['requests']}, "
          f"static {static['failed']} of {static['requests']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "static_cut": cut,
                                     "adaptive": adaptive, "static": static}, indent=1))


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    main()
