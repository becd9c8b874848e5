"""Choosing a plan: an Optuna study over the cost model, checked by an exact enumeration.

Privacy, the minimum number of blocks on the device and the codec accuracy limit shape the search space
itself (a plan that breaks them is never suggested); the device memory budget is a constraint the sampler
learns (`constraints_func`). The exact solver enumerates every plan, for tests, benchmarks and small models.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import optuna
from pydantic import Field

from partitioner.costmodel import Estimate, Workload, predict
from profiling.acceptance import DraftProfile, can_draft
from profiling.link_estimator import Link
from profiling.profile import ZSTD_LEVELS, Profile
from splitcore.defaults import MIB, mib_bytes
from splitcore.errors import PlanError
from splitcore.plan import BackendName, CodecName, Plan, Tier
from splitcore.schema import StrictModel

CODECS: tuple[CodecName, ...] = ("fp32", "fp16", "bf16", "int8")
DEPTHS: tuple[int, ...] = (0, 1, 2, 3, 4, 6, 8)  # speculation depths a search weighs, with measured drafts
Objective = Literal["total_ms", "time_to_first_token_ms", "time_per_output_token_ms"]


class Constraints(StrictModel):
    edge_memory_bytes: int | None = Field(default=None, ge=0, description="device memory budget; None: no limit")
    min_edge_layers: int = Field(default=0, ge=0, description="privacy: blocks [0, K) always run on the device")
    allow_tokens_off_device: bool = False
    codec_loss: dict[str, float] = Field(default_factory=dict,
                                         description="codec -> measured accuracy loss (e.g. perplexity ratio - 1)")
    max_codec_loss: float | None = Field(default=None, ge=0, description="None: any codec")

    @classmethod
    def from_limits(cls, edge_memory_mb: float | None = None, min_edge_layers: int = 0,
                    allow_tokens_off_device: bool = False, max_codec_loss: float | None = None) -> Constraints:
        """The constraints an operator's limits give (settings or flags, sizes in MiB), in one place; the codec
        losses a `max_codec_loss` needs are measured with the plan's inputs (`PlanInputs.codec_loss`)."""
        return cls(edge_memory_bytes=mib_bytes(edge_memory_mb), min_edge_layers=min_edge_layers,
                   allow_tokens_off_device=allow_tokens_off_device, max_codec_loss=max_codec_loss)

    def narrowed(self, edge_memory_mb: float | None = None, min_edge_layers: int | None = None) -> Constraints:
        """These constraints with one search's own budget or privacy floor (an admin request); whether token ids
        may leave the device stays the operator's setting."""
        update: dict[str, int | None] = {}
        if edge_memory_mb is not None:
            update["edge_memory_bytes"] = mib_bytes(edge_memory_mb)
        if min_edge_layers is not None:
            update["min_edge_layers"] = min_edge_layers
        return self.model_copy(update=update)


class Choice(StrictModel):
    plan: Plan
    estimate: Estimate
    feasible: bool = True
    speculate: int = Field(default=0, ge=0, description="drafts per round the estimate assumes (0: plain decoding)")

    def describe(self) -> str:
        return self.plan.describe() + (f", speculate {self.speculate}" if self.speculate else "")


class SearchResult(StrictModel):
    best: Choice
    baselines: dict[str, Choice] = Field(description="edge-only, cloud-only, best single cut")
    trials: int
    evaluated_plans: int
    search_s: float


class InfeasibleError(PlanError):
    """No plan meets every constraint; the message names the binding ones."""


def allowed_codecs(c: Constraints) -> list[CodecName]:
    if c.max_codec_loss is None:
        return list(CODECS)
    return [k for k in CODECS if k == "fp32" or c.codec_loss.get(k, float("inf")) <= c.max_codec_loss]


def runtime_options(profile: Profile) -> list[BackendName | None]:
    """The runtimes a tier's plans may name: None (the tier's own) when its profile measured only one."""
    names = profile.backends()
    return [None] if len(names) == 1 else [cast(BackendName, name) for name in names]


def plan_space(num_layers: int, c: Constraints, edge_runtimes: Sequence[BackendName | None] = (None,),
               cloud_runtimes: Sequence[BackendName | None] = (None,)) -> list[Plan]:
    """Every distinct plan the structural constraints allow (memory is checked separately)."""
    if c.min_edge_layers > num_layers:
        return []
    plans = [Plan(num_layers=num_layers, cut_a=num_layers, cut_b=num_layers, codec="fp32", edge_backend=e)
             for e in edge_runtimes]  # edge-only
    low = _lowest_cut(c)
    for codec, a, level, e, k in itertools.product(allowed_codecs(c), range(low, num_layers), ZSTD_LEVELS,
                                                   edge_runtimes, cloud_runtimes):
        heads: list[tuple[int, Tier]] = [(b, "edge") for b in range(a + 1, num_layers + 1)]
        if c.allow_tokens_off_device:
            heads.append((num_layers, "cloud"))
        plans += [Plan(num_layers=num_layers, cut_a=a, cut_b=b, head=head, codec=codec, zstd_level=level,
                       edge_backend=e, cloud_backend=k) for b, head in heads]
    return plans


def _lowest_cut(c: Constraints) -> int:
    """The smallest first cloud block the privacy settings allow (0 sends token ids off the device)."""
    return c.min_edge_layers if c.allow_tokens_off_device else max(1, c.min_edge_layers)


@dataclass(frozen=True)
class _Space:
    """What a study may suggest."""

    num_layers: int
    low: int  # the lowest first cloud block
    codecs: list[CodecName]
    edge_runtimes: list[BackendName | None]
    cloud_runtimes: list[BackendName | None]


def _depths(plan: Plan, drafts: DraftProfile | None) -> tuple[int, ...]:
    """The speculation depths to weigh for `plan`: only 0 without measured drafts or when it cannot draft."""
    return DEPTHS if drafts is not None and can_draft(plan) else (0,)


def best_depth(plan: Plan, edge: Profile, cloud: Profile, link: Link, workload: Workload,
                drafts: DraftProfile | None, objective: Objective, c: Constraints) -> tuple[int, Estimate]:
    """The plan at its best speculation depth (one that fits the device when any does): a depth is a handful of
    cost-model calls, so each plan the study suggests is weighed at every depth, and the study searches cuts."""
    options = [(k, predict(plan, edge, cloud, link, workload, k, drafts)) for k in _depths(plan, drafts)]
    fitting = [o for o in options if _fits(o[1], c)] or options
    return min(fitting, key=lambda o: getattr(o[1], objective))


def _space(c: Constraints, edge: Profile, cloud: Profile) -> _Space:
    """The cuts, codecs and runtimes a study may suggest.

    Raises:
        InfeasibleError: the privacy settings keep more blocks on the device than the model has.
    """
    low = _lowest_cut(c)
    if low > edge.num_layers:
        raise InfeasibleError(_binding([], edge, c))
    return _Space(edge.num_layers, low, allowed_codecs(c), runtime_options(edge), runtime_options(cloud))


def _suggest(trial: optuna.Trial, space: _Space, c: Constraints) -> Plan:
    """One plan from the trial's suggestions; only the structurally allowed space is offered."""
    num_layers = space.num_layers
    a = trial.suggest_int("cut_a", space.low, num_layers)
    b = trial.suggest_int("cut_b", a, num_layers)
    head: Tier = "edge"
    if b == num_layers and a < b and c.allow_tokens_off_device:
        head = cast(Tier, trial.suggest_categorical("head", ["edge", "cloud"]))
    codec = cast(CodecName, trial.suggest_categorical("codec", space.codecs))
    level = cast(int, trial.suggest_categorical("zstd_level", ZSTD_LEVELS))
    edge = _runtime(trial, "edge_backend", space.edge_runtimes)
    if a == b:  # nothing in the cloud: edge-only
        return Plan(num_layers=num_layers, cut_a=num_layers, cut_b=num_layers, codec="fp32", edge_backend=edge)
    return Plan(num_layers=num_layers, cut_a=a, cut_b=b, head=head, codec=codec, zstd_level=level, edge_backend=edge,
                cloud_backend=_runtime(trial, "cloud_backend", space.cloud_runtimes))


def _runtime(trial: optuna.Trial, name: str, options: list[BackendName | None]) -> BackendName | None:
    if len(options) == 1:
        return options[0]
    return cast(BackendName, trial.suggest_categorical(name, [str(o) for o in options]))


def _fits(estimate: Estimate, c: Constraints) -> bool:
    return c.edge_memory_bytes is None or estimate.edge_memory_bytes <= c.edge_memory_bytes


def _best(choices: Iterable[Choice], objective: Objective) -> Choice | None:
    return min(choices, key=lambda ch: getattr(ch.estimate, objective), default=None)


def exact_best(edge: Profile, cloud: Profile, link: Link, workload: Workload, c: Constraints,
               objective: Objective = "total_ms", drafts: DraftProfile | None = None) -> Choice:
    """The optimum by enumeration (over speculation depths too, with measured `drafts`).

    Raises:
        InfeasibleError: no plan meets the constraints.
    """
    space = plan_space(edge.num_layers, c, runtime_options(edge), runtime_options(cloud))
    choices = [Choice(plan=p, estimate=predict(p, edge, cloud, link, workload, k, drafts), speculate=k)
               for p in space for k in _depths(p, drafts)]
    best = _best((ch for ch in choices if _fits(ch.estimate, c)), objective)
    if best is None:
        raise InfeasibleError(_binding(choices, edge, c))
    return best


def _binding(choices: list[Choice], edge: Profile, c: Constraints) -> str:
    if not choices:
        return f"min_edge_layers={c.min_edge_layers} exceeds the model's {edge.num_layers} blocks"
    least = min(ch.estimate.edge_memory_bytes for ch in choices)
    budget = c.edge_memory_bytes or 0
    reasons = [f"device memory budget: {budget / MIB:.1f} MiB, but the smallest allowed plan needs "
               f"{least / MIB:.1f} MiB on the device"]
    if not c.allow_tokens_off_device:
        reasons.append("allowing tokens off the device would permit plans that keep less on it")
    if c.min_edge_layers:
        reasons.append(f"min_edge_layers={c.min_edge_layers} keeps those blocks on the device")
    return "no plan meets the constraints; binding: " + "; ".join(reasons)


def search(edge: Profile, cloud: Profile, link: Link, workload: Workload, c: Constraints,
           objective: Objective = "total_ms", n_trials: int = 150, seed: int = 0,
           drafts: DraftProfile | None = None) -> SearchResult:
    """Minimise `objective` with Optuna's TPE sampler under the constraints; seeded, so reproducible. With
    measured `drafts`, the speculation depth is chosen together with the cuts (each plan at its best depth).

    Raises:
        InfeasibleError: no plan meets the constraints (checked exactly: the space is enumerable).
    """
    started = time.perf_counter()
    space = _space(c, edge, cloud)
    cache: dict[Plan, tuple[int, Estimate]] = {}

    def evaluate(plan: Plan) -> Estimate:
        if plan not in cache:
            cache[plan] = best_depth(plan, edge, cloud, link, workload, drafts, objective, c)
        return cache[plan][1]

    def objective_fn(trial: optuna.Trial) -> float:
        plan = _suggest(trial, space, c)
        trial.set_user_attr("plan", plan.model_dump())
        estimate = evaluate(plan)
        over = 0 if c.edge_memory_bytes is None else estimate.edge_memory_bytes - c.edge_memory_bytes
        trial.set_constraint("edge_memory", float(over))  # <= 0 is feasible
        return float(getattr(estimate, objective))

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=20)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for plan in _anchors(space, c):
        study.enqueue_trial(plan)
    study.optimize(objective_fn, n_trials=n_trials)
    evaluated = [Choice(plan=p, estimate=e, speculate=k) for p, (k, e) in cache.items()]
    best = _best((ch for ch in evaluated if _fits(ch.estimate, c)), objective)
    if best is None:
        raise InfeasibleError(_binding(evaluated, edge, c))
    return SearchResult(best=best, baselines=baselines(edge, cloud, link, workload, c, objective),
                        trials=len(study.trials),
                        evaluated_plans=len(cache), search_s=time.perf_counter() - started)


def _anchors(space: _Space, c: Constraints) -> list[dict[str, int | str]]:
    """Trials to start from: edge-only, the least-memory plan, and (if allowed) cloud-only."""
    num_layers, low, cheapest = space.num_layers, space.low, space.codecs[-1]
    anchors: list[dict[str, int | str]] = [{"cut_a": num_layers, "cut_b": num_layers, "codec": cheapest,
                                             "zstd_level": ZSTD_LEVELS[0]}]
    if low < num_layers:
        least: dict[str, int | str] = {"cut_a": low, "cut_b": num_layers, "codec": cheapest,
                                       "zstd_level": ZSTD_LEVELS[0]}
        if c.allow_tokens_off_device:
            least["head"] = "cloud"
        anchors.append(least)
    return anchors


def baselines(edge: Profile, cloud: Profile, link: Link, workload: Workload, c: Constraints,
              objective: Objective = "total_ms") -> dict[str, Choice]:
    """Edge-only, cloud-only and the best single cut (head on the edge), each marked feasible or not."""
    num_layers = edge.num_layers
    edge_runtimes, cloud_runtimes = runtime_options(edge), runtime_options(cloud)
    allowed = set(plan_space(num_layers, c, edge_runtimes, cloud_runtimes))

    def choice(plan: Plan) -> Choice:
        estimate = predict(plan, edge, cloud, link, workload)
        ok = _fits(estimate, c) and (plan in allowed or not plan.uses_cloud)
        return Choice(plan=plan, estimate=estimate, feasible=ok)

    def fastest(plans: Iterable[Plan]) -> Choice:  # over the runtimes; a feasible one if there is one
        choices = [choice(p) for p in plans]
        return _best((ch for ch in choices if ch.feasible), objective) or _best(choices, objective)  # type: ignore

    single = [choice(Plan(num_layers=num_layers, cut_a=a, cut_b=num_layers, codec=k, edge_backend=e, cloud_backend=r))
              for a in range(1, num_layers) for k in allowed_codecs(c) for e in edge_runtimes for r in cloud_runtimes]
    best_single = _best((ch for ch in single if ch.feasible), objective) or _best(single, objective)
    out = {"edge-only": fastest(Plan(num_layers=num_layers, cut_a=num_layers, cut_b=num_layers, codec="fp32",
                                     edge_backend=e) for e in edge_runtimes),
           "cloud-only": fastest(Plan(num_layers=num_layers, cut_a=0, cut_b=num_layers, head="cloud",
                                      codec=allowed_codecs(c)[-1], cloud_backend=r) for r in cloud_runtimes)}
    if best_single is not None:
        out["best single cut"] = best_single
    return out


def pareto_front(edge: Profile, cloud: Profile, link: Link, workload: Workload, c: Constraints,
                 n_trials: int = 200, seed: int = 0) -> list[Choice]:
    """Plans no other evaluated plan beats on latency, device memory and bytes per token at once (NSGA-II)."""
    space = _space(c, edge, cloud)
    seen: dict[Plan, Estimate] = {}

    def objectives(trial: optuna.Trial) -> tuple[float, float, float]:
        plan = _suggest(trial, space, c)
        est = seen.setdefault(plan, predict(plan, edge, cloud, link, workload))
        trial.set_constraint("edge_memory", 0.0 if c.edge_memory_bytes is None
                             else float(est.edge_memory_bytes - c.edge_memory_bytes))
        return est.total_ms, float(est.edge_memory_bytes), est.bytes_per_token

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=optuna.samplers.NSGAIISampler(seed=seed))
    for anchor in _anchors(space, c):
        study.enqueue_trial(anchor)
    study.optimize(objectives, n_trials=n_trials)
    feasible = [Choice(plan=p, estimate=e) for p, e in seen.items() if _fits(e, c)]
    if not feasible:
        raise InfeasibleError(_binding([Choice(plan=p, estimate=e) for p, e in seen.items()], edge, c))

    def key(ch: Choice) -> tuple[float, float, float]:
        return ch.estimate.total_ms, float(ch.estimate.edge_memory_bytes), ch.estimate.bytes_per_token

    front = [ch for ch in feasible
             if not any(all(x <= y for x, y in zip(key(o), key(ch), strict=True)) and key(o) != key(ch)
                        for o in feasible)]
    return sorted(front, key=key)
