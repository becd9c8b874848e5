"""When one intra-op thread beats all of them: a batched decode round after an idle wait, on 1 and on 2 threads.

The tiers' OpenMP threads spin briefly and then sleep (`splitcore.openmp`, applied here as `edgesplit serve` applies
it), so after each idle wait, longer than that spin, the second thread sleeps and the round's first parallel region
wakes it (every region did with OMP_WAIT_POLICY=PASSIVE alone). For batches of 1-64 decode rows this times a
round of the cloud's range (the shipped model's blocks 2-6, the 124M model's 6-12) after `--gap-ms` of sleep,
on one thread and on two, alternately; the median ratio says which is faster at each work size (positions x
one block's parameters, what `BatchLimits.one_thread_below` compares).

    python bench/one_thread.py [--models default gpt2-small-shaped] [--rounds 40] [--gap-ms 4]
"""

from __future__ import annotations

import os

from splitcore.openmp import openmp_env

os.environ.update(openmp_env())  # this process plays a tier: its OpenMP threads idle as the services' do

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from edgesplit.tools.checkpoints import model_dir  # noqa: E402
from splitcore.batching import Batcher, BatchLimits  # noqa: E402
from splitcore.kvcache import TorchState  # noqa: E402
from splitcore.loading import load_checkpoint  # noqa: E402
from splitcore.ranges import LayerRange  # noqa: E402

RANGES = {"default": LayerRange(start=2, end=6), "gpt2-small-shaped": LayerRange(start=6, end=12)}


def round_ms(batcher: Batcher, states: list[TorchState], layers: LayerRange, width: int) -> float:
    started = time.perf_counter()
    futures = [batcher.submit(s, layers, hidden=torch.randn(1, width)) for s in states]
    batcher.run_round()
    for f in futures:
        f.result()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(RANGES))
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--gap-ms", type=float, default=4.0, help="idle wait before each round")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesplit-threads-"))
    for name in args.models:
        model, layers = load_checkpoint(model_dir(name, work)).layered, RANGES[name]
        block = sum(p.numel() for p in model.blocks[layers.start].parameters())
        for rows in args.rows:
            batcher = Batcher(model, BatchLimits(one_thread_below=0))  # the thread count is this script's
            states = [TorchState() for _ in range(rows)]
            for s in states:
                batcher.run(s, layers, hidden=torch.randn(64, model.hidden_size))
            times: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.rounds):
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    time.sleep(args.gap_ms / 1000)
                    times[threads].append(round_ms(batcher, states, layers, model.hidden_size))
            one, two = statistics.median(times[1]), statistics.median(times[2])
            print(f"{name} blocks {layers}, {rows} decode rows ({rows * block / 1e6:.0f} M per block): "
                  f"1 thread {one:.2f} ms, 2 threads {two:.2f} ms, 2/1 = {two / one:.2f}", flush=True)


if __name__ == "__main__":
    main()
