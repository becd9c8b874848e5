"""One batching round packed into one forward, against the same round unpacked, in the same process.

A round of N decode steps (sessions of 100 positions) and one P-position prompt chunk, and a round of K
prompts of 8-64 positions, each timed over a whole model's blocks with the batcher's packing on and off
(`splitcore.batching.Batcher`). Unpacked, the first runs as two forwards (the decode rows, then the chunk) and
the second as one forward of the prompts padded to the longest. Reports the median round time per mode and
their ratio; the modes alternate, and the better of two passes of each is kept, so a noisy moment hits both.

    python bench/packed_round.py                       # the shipped model and the 124M shape
    python bench/packed_round.py --models default --repeats 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from edgesplit.tools.checkpoints import model_dir
from splitcore.batching import Batcher
from splitcore.kvcache import TorchState
from splitcore.layered import LayeredModel
from splitcore.loading import load_checkpoint
from splitcore.ranges import LayerRange

MIXED = [(8, 64), (32, 64), (32, 256)]  # (decode rows, prompt positions)
PROMPTS = [4, 16]  # prompts of 8-64 positions in one round


def _mixed_ms(model: LayeredModel, packing: bool, rows: int, prompt: int, repeats: int) -> float:
    layers = LayerRange(start=0, end=model.num_layers)
    batcher = Batcher(model)
    batcher._packing = packing  # noqa: SLF001 (the A/B this bench exists for)
    states = [TorchState() for _ in range(rows)]
    for s in states:
        batcher.run(s, layers, hidden=torch.randn(100, model.hidden_size))
    times = []
    for _ in range(repeats + 1):  # the first round fills the running batch
        futures = [batcher.submit(s, layers, hidden=torch.randn(1, model.hidden_size)) for s in states]
        futures.append(batcher.submit(TorchState(), layers, hidden=torch.randn(prompt, model.hidden_size)))
        start = time.perf_counter()
        batcher.run_round()
        times.append(time.perf_counter() - start)
        assert all(f.done() for f in futures), "a round left steps behind"
    return statistics.median(times[1:]) * 1e3


def _prompts_ms(model: LayeredModel, packing: bool, count: int, repeats: int) -> float:
    layers = LayerRange(start=0, end=model.num_layers)
    batcher = Batcher(model)
    batcher._packing = packing  # noqa: SLF001
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        lengths = torch.randint(8, 65, (count,), generator=gen).tolist()
        futures = [batcher.submit(TorchState(), layers, hidden=torch.randn(n, model.hidden_size)) for n in lengths]
        start = time.perf_counter()
        batcher.run_round()
        times.append(time.perf_counter() - start)
        assert all(f.done() for f in futures), "a round left steps behind"
    return statistics.median(times) * 1e3


def _ab(measure: Callable[[bool], float]) -> dict[str, float]:
    packed, apart = [], []
    for _ in range(2):
        packed.append(measure(True))
        apart.append(measure(False))
    return {"packed_ms": min(packed), "unpacked_ms": min(apart), "ratio": min(packed) / min(apart)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default", "gpt2-small-shaped"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/packed_round.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="edgesplit-packed-"))
    report: dict[str, dict[str, dict[str, float]]] = {}
    for name in args.models:
        path = model_dir(name, work)
        model = load_checkpoint(path).layered
        rows: dict[str, dict[str, float]] = {}
        for n, p in MIXED:
            rows[f"{n} decode + {p}-position prompt"] = _ab(
                lambda packing, n=n, p=p, m=model: _mixed_ms(m, packing, n, p, args.repeats))
        for k in PROMPTS:
            rows[f"{k} prompts of 8-64"] = _ab(lambda packing, k=k, m=model: _prompts_ms(m, packing, k, args.repeats))
        report[name] = rows
        for label, r in rows.items():
            print(f"{name}: {label}: packed {r['packed_ms']:.1f} ms, unpacked {r['unpacked_ms']:.1f} ms, "
                  f"ratio {r['ratio']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "models": report}, indent=1))
    print(f"report: {args.out}")


if __name__ == "__main__":
    main()
