"""Speculation against plain decoding on emulated links: tokens per round trip and time per output token.

    python bench/speculation.py           # the shipped model, the four links of bench/links.py, about 10 minutes

A cloud (one core, one torch thread) and, for each link and depth, an edge (the other core, one thread, emulated
3x slower as in bench/links.py) as real processes, the edge's frames through the userspace link emulator
(`edgesplit/tools/linkemu.py`); plan 2:6 int8, greedy, `--speculate` 0, 2, 4, 8 and auto, with each draft
(the edge's own blocks, and the shipped draft model, models/draft). Per depth: the
drafts' acceptance rate, tokens per round trip, time per output token (TPOT) as a ratio of depth 0's in the same
run, and whether every text equals depth 0's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from edgesplit.procs import free_port, serve, wait_healthy
from edgesplit.tools.linkbench import LINKS
from edgesplit.tools.linkemu import LinkEmulator
from splitcore.defaults import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["And God said unto Moses,", "Blessed are they that", "And it came to pass, when the king"]  # the
# shipped model's corpus is the King James Bible


def run_depth(cloud_port: int, depth: str, draft: str, args: argparse.Namespace, work: Path,
              cpus: set[int] | None) -> dict:
    """Every prompt once through an edge that speculates `depth` with `draft` ("self" or a checkpoint); each
    request's figures."""
    port = free_port()
    edge_args = ["--model", str(ROOT / DEFAULT_MODEL_DIR), "--cloud", f"http://127.0.0.1:{cloud_port}",
                 "--cut", args.cut, "--codec", "int8", "--speculate", depth, "--threads", "1",
                 "--emulate-slowdown", str(args.slowdown), "--cloud-step-timeout-s", "60"]
    edge_args += ["--draft-model", "self" if draft == "self" else str(ROOT / draft)]
    runs = []
    with serve("edge", edge_args, port, work / f"edge-{depth}-{Path(draft).name}.log", cpus=cpus) as edge:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", edge, timeout_s=300)
        body = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}
        httpx.post(f"{url}/v1/completions", json=body, timeout=600).raise_for_status()  # warm up, teach auto
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                body = {"prompt": prompt, "max_tokens": args.tokens, "temperature": 0, "ignore_eos": True}
                answer = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
                answer.raise_for_status()
                out = answer.json()
                info, tokens = out["edgesplit"], out["usage"]["completion_tokens"]
                spec = info.get("speculation") or {}
                rounds = spec.get("round_trips", 0)
                runs.append({"text": out["choices"][0]["text"], "tokens": tokens,
                             "tpot_ms": (info["total_ms"] - info["time_to_first_token_ms"]) / max(1, tokens - 1),
                             "exchanges": rounds + (tokens - 1 - rounds - spec.get("accepted", 0)),
                             "drafted": spec.get("drafted", 0), "accepted": spec.get("accepted", 0),
                             "depth": spec.get("depth", 0)})
    drafted = sum(r["drafted"] for r in runs)
    return {"depth": depth, "draft": draft if depth != "0" else None, "runs": runs,
            "tpot_ms": statistics.median(r["tpot_ms"] for r in runs),
            "acceptance": sum(r["accepted"] for r in runs) / drafted if drafted else None,
            "tokens_per_round_trip": sum(r["tokens"] - 1 for r in runs) / max(1, sum(r["exchanges"] for r in runs))}


def plot(report: dict, path: Path) -> Path:
    """Time per output token as a ratio of depth 0, by depth, one panel per link, a line per draft source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = report["links"]
    fig, axes = plt.subplots(1, len(links), figsize=(3.6 * len(links), 3.4), squeeze=False, sharey=True)
    for ax, link in zip(axes[0], links, strict=True):
        rows = link["depths"]
        for draft in sorted({r["draft"] for r in rows if r["draft"]}):
            mine = [r for r in rows if r["draft"] == draft]
            labels = [r["depth"] for r in mine]
            ax.plot(labels, [r["tpot_over_depth0"] for r in mine], marker="o",
                    label="own blocks" if draft == "self" else f"draft model ({draft})")
            for r in mine:
                ax.annotate(f"{r['tokens_per_round_trip']:.1f}", (r["depth"], r["tpot_over_depth0"]), fontsize=7,
                            textcoords="offset points", xytext=(0, 5), ha="center")
        ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8, label="depth 0")
        ax.set_title(f"{link['link']} ({link['bandwidth_bps'] / 1e6:g} Mbit/s, {link['rtt_ms']:g} ms)", fontsize=9)
        ax.set_xlabel("drafts per round (labels: tokens per round trip)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("time per output token / depth 0's")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--links", nargs="+", default=list(LINKS), choices=list(LINKS))
    ap.add_argument("--depths", nargs="+", default=["0", "2", "4", "8", "auto"])
    ap.add_argument("--drafts", nargs="+", default=["self", "models/draft"],
                    help="draft sources: self (the edge's own blocks) or a checkpoint directory")
    ap.add_argument("--cut", default="2:6")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=1, help="times each prompt is sent per depth")
    ap.add_argument("--slowdown", type=float, default=3.0, help="the edge's emulated slowdown against one core")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/speculation.json")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from --out")
    args = ap.parse_args()
    if args.plot_only:
        print(f"wrote {plot(json.loads(args.out.read_text()), args.out.with_suffix('.png'))}")
        return
    work = Path(tempfile.mkdtemp(prefix="edgesplit-speculation-"))
    cores = sorted(os.sched_getaffinity(0))
    edge_cpus, cloud_cpus = ({cores[0]}, {cores[1]}) if len(cores) >= 2 else (None, None)
    cloud_port, results = free_port(), []
    cloud_args = ["--model", str(ROOT / DEFAULT_MODEL_DIR), "--threads", "1"]
    with serve("cloud", cloud_args, cloud_port, work / "cloud.log", cpus=cloud_cpus) as cloud:
        wait_healthy(f"http://127.0.0.1:{cloud_port}/health", cloud, timeout_s=300)
        for link in args.links:
            bandwidth, rtt = LINKS[link]
            started = time.monotonic()
            with LinkEmulator(cloud_port, bandwidth, rtt) as port:
                rows = [run_depth(port, "0", "self", args, work, edge_cpus)]
                rows += [run_depth(port, depth, draft, args, work, edge_cpus)
                         for draft in args.drafts for depth in args.depths if depth != "0"]
            base = rows[0]
            for row in rows:
                row["tpot_over_depth0"] = row["tpot_ms"] / base["tpot_ms"]
                row["same_text"] = [r["text"] for r in row["runs"]] == [r["text"] for r in base["runs"]]
                acceptance = "-" if row["acceptance"] is None else f"{row['acceptance']:.2f}"
                print(f"{link:>6} {row['draft'] or '-':>12} depth {row['depth']:>4}: acceptance {acceptance}, "
                      f"{row['tokens_per_round_trip']:.2f} tokens per round trip, TPOT "
                      f"{row['tpot_over_depth0']:.2f}x depth 0, same text: {row['same_text']}", flush=True)
            results.append({"link": link, "bandwidth_bps": bandwidth, "rtt_ms": rtt, "depths": rows,
                            "seconds": time.monotonic() - started})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": "shipped default", "cut": args.cut, "codec": "int8",
                                    "edge_slowdown": args.slowdown, "tokens": args.tokens, "links": results},
                                   indent=1))
    print(f"wrote {args.out} and {plot(json.loads(args.out.read_text()), args.out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
