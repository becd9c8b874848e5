"""The batching benchmark's plot: output tokens/s against streams, per model and plan, with the monolithic limit."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def plot(report: dict, path: Path) -> Path:
    """One panel per model: each plan's output tokens/s by concurrent streams (measured, and the cost model's
    prediction when the report has one), and `generate` at that batch."""
    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        limit = {int(k): v for k, v in model["monolithic_tokens_per_s"].items()}
        ax.plot(list(limit), list(limit.values()), "k--", marker="o", label="transformers generate (batch = streams)")
        for name, rows in model["plans"].items():
            (line,) = ax.plot([r["streams"] for r in rows], [r["output_tokens_per_s"] for r in rows], marker="o",
                              label=f"cloud, {name}")
            predicted = [(r["streams"], r["predicted"]["tokens_per_s"]) for r in rows if "predicted" in r]
            if predicted:
                ax.plot(*zip(*predicted, strict=True), ":", color=line.get_color(), label=f"cost model, {name}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams (edges)")
        ax.set_ylabel("output tokens/s")
        ax.set_title(f"{model['model']} ({model['params'] / 1e6:.0f}M parameters)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
