"""Choosing a plan for a deployment: probe the link, gather both profiles, search, and explain the choice."""

from __future__ import annotations

import logging

from partitioner.costmodel import Link, Workload
from partitioner.link_estimator import LinkEstimator
from partitioner.profile import Profile
from partitioner.search import Choice, Constraints, SearchResult, search
from splitcore.errors import PlanError

log = logging.getLogger(__name__)
PROBE_SMALL, PROBE_LARGE = 64, 256 * 1024  # bytes: the spread that lets the estimator see the bandwidth
PROBE_MIN_LARGE = 4 * 1024  # bytes: the large probe never shrinks below this


def probe_link(probe: object, estimator: LinkEstimator, rounds: int = 4, large_bytes: int = PROBE_LARGE) -> None:
    """Time `rounds` small and large probe exchanges into the estimator (`probe(nbytes) -> ms`)."""
    for _ in range(rounds):
        for nbytes in (PROBE_SMALL, large_bytes):
            estimator.observe(nbytes, probe(nbytes))  # type: ignore[operator]


def probe_size(bandwidth_bps: float, budget_ms: float = 50.0) -> int:
    """A large probe that takes about `budget_ms` on the estimated link, so probing a slow link stays cheap."""
    return int(min(PROBE_LARGE, max(PROBE_MIN_LARGE, bandwidth_bps * budget_ms / 1000 / 8)))


def describe(result: SearchResult, link: Link, workload: Workload) -> str:
    """A person's summary: the chosen plan, its predicted figures, and the alternatives it beat."""
    def line(name: str, ch: Choice) -> str:
        e = ch.estimate
        flag = "" if ch.feasible else "  (not allowed by the constraints)"
        return (f"  {name:16} {ch.plan.describe():60} total {e.total_ms:9.1f} ms  first token "
                f"{e.time_to_first_token_ms:8.1f} ms  per token {e.time_per_output_token_ms:7.2f} ms  "
                f"device {e.edge_memory_bytes / 2**20:7.1f} MiB  {e.bytes_per_token:6.0f} B/token{flag}")
    best = result.best
    lines = [f"link {link.bandwidth_bps / 1e6:.1f} Mbit/s, rtt {link.rtt_ms:.2f} ms; workload {workload.prompt_tokens} "
             f"prompt + {workload.output_tokens} output tokens",
             f"search: {result.trials} trials, {result.evaluated_plans} distinct plans, {result.search_s:.2f} s",
             line("chosen", best)]
    for name, alt in result.baselines.items():
        ratio = alt.estimate.total_ms / best.estimate.total_ms
        lines.append(line(name, alt) + f"  ({ratio:.2f}x the chosen plan's time)")
    return "\n".join(lines)


def plan_for(edge: Profile, cloud: Profile, link: Link, workload: Workload, constraints: Constraints,
             seed: int = 0, trials: int = 150) -> SearchResult:
    """Search, after checking both profiles describe the same model."""
    if edge.fingerprint != cloud.fingerprint:
        raise PlanError(f"edge profile is of {edge.model_name!r}, cloud profile of {cloud.model_name!r}: "
                        "profile one model")
    result = search(edge, cloud, link, workload, constraints, n_trials=trials, seed=seed)
    log.info("chose %s (predicted %.1f ms per request)", result.best.plan.describe(), result.best.estimate.total_ms)
    return result
