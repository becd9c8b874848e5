"""The link benchmark's report: a Markdown table for README and a PNG of latency against the cut per link."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def _cut_axis(cut: str, n: int) -> int:
    """Blocks on the edge: 0 for cloud-only, n for edge-only."""
    return {"cloud": 0, "edge": n}.get(cut, int(cut) if cut.isdigit() else -1)


def table(results: dict) -> str:
    """One row per model and link: the best measured plan and the chosen one, with the ratios."""
    w = results["workload"]
    lines = [f"Workload: {w['streams']} requests at once, {w['prompt_tokens']}-token prompt, {w['output_tokens']} "
             f"new tokens; {w['rounds']} bursts per swept plan, then the chosen plan and the best swept one "
             f"{w['confirm']} bursts each in alternation (the ratio to the best and both ms columns use those). "
             f"Edge: {results['edge']}; cloud: {results['cloud']}.", "",
             "| model | link | edge-only ms | cloud-only ms | best measured | best ms | chosen plan | chosen ms "
             "| chosen / best | chosen / edge-only | chosen / cloud-only |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in results["models"]:
        for link in model["links"]:
            plans, chosen = link["plans"], link["chosen"]
            best = link["best_measured"]
            lines.append(
                f"| {model['model']} | {link['link']} ({link['bandwidth_bps'] / 1e6:g} Mbit/s, {link['rtt_ms']:g} ms) "
                f"| {plans['edge']['total_ms']:.0f} | {plans['cloud']['total_ms']:.0f} | {_name(best)} "
                f"| {link['best_confirmed']['total_ms']:.0f} | {_short(chosen['plan'])} | {chosen['total_ms']:.0f} "
                f"| {link['chosen_vs_best']:.3f} | {link['chosen_vs_edge_only']:.3f} "
                f"| {link['chosen_vs_cloud_only']:.3f} |")
    return "\n".join(lines)


def _name(cut: str) -> str:
    return {"edge": "edge-only", "cloud": "cloud-only"}.get(cut, f"{cut}:L, head in cloud")


def _short(plan: dict) -> str:
    n, a, b = plan["num_layers"], plan["cut_a"], plan["cut_b"]
    if a == b == n:
        return "edge-only"
    if a == 0 and plan["head"] == "cloud":
        return f"cloud-only ({plan['codec']})"
    return f"{a}:{b}, head {plan['head']}, {plan['codec']}"


def plot(results: dict, stem: Path) -> list[Path]:
    """One PNG per model: request, first-token and per-token time against the cut, one panel per link."""
    paths = []
    for model in results["models"]:
        n = model["num_layers"]
        fig, axes = plt.subplots(1, len(model["links"]), figsize=(4.2 * len(model["links"]), 3.6), squeeze=False)
        for ax, link in zip(axes[0], model["links"], strict=True):
            cuts = sorted(link["plans"], key=lambda c: _cut_axis(c, n))
            xs = [_cut_axis(c, n) for c in cuts]
            for key, label in (("total_ms", "request"), ("ttft_ms", "first token"), ("tpot_ms", "per token x10")):
                scale = 10 if key == "tpot_ms" else 1
                ax.plot(xs, [link["plans"][c][key] * scale for c in cuts], marker=".", label=label)
            chosen = link["chosen"]
            plan = chosen["plan"]
            x = plan["cut_a"] if plan["cut_b"] == n else plan["cut_a"] + 0.5
            ax.plot([x], [chosen["total_ms"]], marker="*", markersize=14, color="crimson", linestyle="none",
                    label=f"chosen ({_short(plan)})")
            ax.set_title(f"{link['link']}: {link['bandwidth_bps'] / 1e6:g} Mbit/s, {link['rtt_ms']:g} ms RTT",
                         fontsize=9)
            ax.set_xlabel("blocks on the edge (0 = cloud-only, L = edge-only)", fontsize=8)
            ax.set_ylabel("ms", fontsize=8)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7)
        fig.suptitle(f"{model['model']} ({model['parameters'] / 1e6:.0f}M): median of "
                     f"{results['workload']['streams']} requests at once", fontsize=10)
        fig.tight_layout()
        path = stem.parent / f"{stem.name}-{model['model']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
