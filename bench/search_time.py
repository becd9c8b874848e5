"""Search time and quality of the Optuna plan search for 12- and 32-block models, against the exact solver.

Profiles are synthetic (an edge 2-20x slower than the cloud, per-block variation; seeded): search time depends
on the size of the plan space, not on where the figures came from. For each size and seed the table gives
the TPE search time, the exact enumeration time, and the search's plan cost over the optimum.

Usage: python bench/search_time.py [--seeds 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings

from partitioner.costmodel import Workload
from partitioner.search import Constraints, exact_best, plan_space, search
from profiling.link_estimator import Link
from profiling.synthetic import random_profiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print("| blocks | plans in space | search s (median / max) | exact s (median) | search / optimum (max) |")
    print("|---|---|---|---|---|")
    for layers in (12, 32):
        search_s, exact_s, ratios, space = [], [], [], 0
        for seed in range(args.seeds):
            rng = random.Random(seed)
            edge, cloud = random_profiles(rng, layers)
            link = Link(bandwidth_bps=10 ** rng.uniform(6, 9), rtt_ms=rng.uniform(1, 100), overhead_ms=1.0)
            c = Constraints(allow_tokens_off_device=True)
            started = time.perf_counter()
            exact = exact_best(edge, cloud, link, Workload(), c)
            exact_s.append(time.perf_counter() - started)
            found = search(edge, cloud, link, Workload(), c, seed=seed)
            search_s.append(found.search_s)
            ratios.append(found.best.estimate.total_ms / exact.estimate.total_ms)
            space = len(plan_space(layers, c))
        print(f"| {layers} | {space} | {statistics.median(search_s):.2f} / {max(search_s):.2f} | "
              f"{statistics.median(exact_s):.2f} | {max(ratios):.4f} |")


if __name__ == "__main__":
    main()
