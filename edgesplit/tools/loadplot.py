"""The load test's plot: latency of each request over the run, throughput per stage, both tiers' memory."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def plot(report: dict, path: Path) -> Path:
    fig, (lat, thr, mem) = plt.subplots(1, 3, figsize=(14, 3.8))
    for stage in report["stages"]:
        reqs = [r for r in stage["requests"] if r["e2e_s"] is not None]
        lat.scatter([r["started_s"] for r in reqs], [r["e2e_s"] * 1000 for r in reqs], s=4, color="tab:blue")
        firsts = [r for r in reqs if r["ttft_s"] is not None]
        lat.scatter([r["started_s"] for r in firsts], [r["ttft_s"] * 1000 for r in firsts], s=4, color="tab:orange")
        failed = [r for r in stage["requests"] if r["error"] is not None]
        lat.scatter([r["started_s"] for r in failed], [0] * len(failed), marker="x", color="crimson")
        lat.axvline(stage["started_s"], color="grey", linewidth=0.5)
    lat.set_title("each request: end-to-end (blue), first token (orange), failed (x)", fontsize=9)
    lat.set_xlabel("s into the run", fontsize=8)
    lat.set_ylabel("ms", fontsize=8)
    labels = [f"{s['stage']['concurrency']}" if s["stage"]["mode"] == "closed" else f"{s['stage']['rate']:g}/s"
              for s in report["stages"]]
    thr.bar(labels, [s["output_tokens_per_s"] for s in report["stages"]], color="tab:green")
    thr.set_title("output tokens/s per stage", fontsize=9)
    thr.set_xlabel("clients (closed loop)" if report["mode"] == "closed" else "arrival rate (open loop)", fontsize=8)
    for tier in ("edge", "cloud"):
        points = [(m["t_s"], m[tier]) for m in report["memory"] if m.get(tier) is not None]
        if points:
            mem.plot([t for t, _ in points], [v for _, v in points], label=tier)
    mem.set_title("resident memory (MiB)", fontsize=9)
    mem.set_xlabel("s into the run", fontsize=8)
    mem.set_ylim(bottom=0)
    mem.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
