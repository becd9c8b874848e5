"""Keeping the plan right for the link: watch the estimate, re-search when it moves, switch plans atomically.

Hysteresis keeps a noisy link from flapping the plan: the estimate must differ from the link the current plan
was chosen for by `replan_threshold` (bandwidth or RTT, as a factor; RTT also by `replan_rtt_floor_ms`) on
`replan_confirmations` checks in a row, and the new plan must be predicted at least `replan_min_gain` faster
than the current one on the new link. A switch loads the blocks the new plan needs in the cloud first, then
swaps the orchestrator's plan: generations already running finish on the plan they started with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

from edge_service.cloud_client import CloudClient
from edge_service.metrics import EdgeMetrics
from edge_service.orchestrator import Orchestrator
from edge_service.settings import EdgeSettings
from partitioner.costmodel import Link, Workload, predict
from partitioner.link_estimator import LinkEstimator
from partitioner.planning import plan_for
from partitioner.profile import Profile
from partitioner.search import Constraints, SearchResult
from splitcore.errors import CloudUnavailableError, PlanError
from splitcore.loading import LoadedModel
from splitcore.plan import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkPoint:
    """One reading of the link estimate, for the bandwidth history."""

    at_s: float  # unix time
    bandwidth_bps: float
    rtt_ms: float
    confidence: float


@dataclass(frozen=True)
class PlanChange:
    """One switch of the plan, with why and what it was predicted to gain."""

    at_s: float  # unix time
    old: str
    new: str
    reason: str  # "link", "admin" or "start"
    bandwidth_bps: float
    rtt_ms: float
    predicted_old_ms: float | None
    predicted_new_ms: float | None


def link_moved(now: Link, planned: Link, threshold: float, rtt_floor_ms: float) -> bool:
    """True when `now` differs from `planned` enough to consider re-planning."""
    bw = max(now.bandwidth_bps, planned.bandwidth_bps) / min(now.bandwidth_bps, planned.bandwidth_bps)
    rtt_gap = abs(now.rtt_ms - planned.rtt_ms)
    rtt_ratio = (max(now.rtt_ms, planned.rtt_ms) + rtt_floor_ms) / (min(now.rtt_ms, planned.rtt_ms) + rtt_floor_ms)
    return bw >= threshold or (rtt_gap >= rtt_floor_ms and rtt_ratio >= threshold)


class Replanner:
    """Owns the plan's lifecycle on the edge: the profiles, the link history, searches and switches."""

    def __init__(self, settings: EdgeSettings, loaded: LoadedModel, orchestrator: Orchestrator,
                 cloud: CloudClient, estimator: LinkEstimator, metrics: EdgeMetrics,
                 edge_profile: Profile | None = None, cloud_profile: Profile | None = None) -> None:
        self.settings = settings
        self.loaded = loaded
        self.orchestrator = orchestrator
        self.cloud = cloud
        self.estimator = estimator
        self.metrics = metrics
        self.edge_profile = edge_profile
        self.cloud_profile = cloud_profile
        self.adaptive = settings.cut == "auto" and settings.adaptive
        self.workload = Workload.parse(settings.plan_workload)
        self.constraints = Constraints(
            edge_memory_bytes=int(settings.edge_memory_mb * 2**20) if settings.edge_memory_mb else None,
            min_edge_layers=settings.min_edge_layers, allow_tokens_off_device=settings.allow_tokens_off_device,
            max_codec_loss=settings.max_codec_loss)  # the codec losses are measured with the profiles
        self.planned_link: Link | None = None  # the link the current plan was chosen for
        self.history: deque[LinkPoint] = deque(maxlen=900)
        self.changes: deque[PlanChange] = deque(maxlen=200)
        self._moved_checks = 0
        self._lock = threading.Lock()  # one search or switch at a time
        self._record_cut(orchestrator.plan)

    @property
    def plan(self) -> Plan:
        return self.orchestrator.plan

    def profiles(self) -> tuple[Profile, Profile]:
        """Both tiers' profiles: the edge's measured here (once) and slowed as emulated, the cloud's fetched.

        Raises:
            CloudUnavailableError: there is no cloud, or it cannot be reached.
        """
        from partitioner.accuracy import codec_losses
        from partitioner.profiler import measure_profile

        if self.constraints.max_codec_loss is not None and not self.constraints.codec_loss:
            losses = codec_losses(self.loaded)
            log.info("measured codec losses (perplexity ratio - 1): %s", losses)
            self.constraints = self.constraints.model_copy(update={"codec_loss": losses})
        if self.edge_profile is None:
            if self.settings.edge_profile is not None:
                edge = Profile.load(self.settings.edge_profile)
            else:
                edge = measure_profile(self.loaded, device_name="edge", repeats=3, onnx_dir=self.settings.onnx_dir,
                                       quantize=self.settings.onnx_quantize)
            self.edge_profile = edge.slowed(self.settings.emulate_slowdown)
        if self.cloud_profile is None:
            self.cloud_profile = Profile.model_validate(self.cloud.profile())
        return self.edge_profile, self.cloud_profile

    def search(self, link: Link | None = None, constraints: dict | None = None,
               workload: Workload | None = None) -> SearchResult:
        """The best plan for a link (default: the current estimate); does not switch to it.

        `constraints` overrides fields of the configured `Constraints` for this search only.
        """
        edge, cloud = self.profiles()
        link = link or self.estimator.estimate().as_link()
        c = self.constraints.model_copy(update=constraints or {})
        return plan_for(edge, cloud, link, workload or self.workload, c, seed=self.settings.plan_seed)

    def plan_at_start(self) -> None:
        """`--plan auto`: probe the link, search with both profiles, switch; edge-only while the cloud is unreachable.

        An unreachable cloud is not an error here: `tick` plans as soon as probes get through.
        """
        from partitioner.planning import describe, probe_link

        try:
            self.cloud.info()  # fail fast, before spending time measuring the edge
            probe_link(self.cloud.probe, self.estimator)
            result = self.search()
        except CloudUnavailableError as exc:
            log.warning("--plan auto: %s; serving edge-only until the cloud answers", exc)
            return
        link = self.estimator.estimate().as_link()
        log.info("--plan auto:\n%s", describe(result, link, self.workload))
        self.switch(result.best.plan, "start", link)

    def predicted_ms(self, plan: Plan, link: Link) -> float | None:
        """The cost model's time for one request of the workload, or None before profiles exist."""
        if self.edge_profile is None or self.cloud_profile is None:
            return None
        return predict(plan, self.edge_profile, self.cloud_profile, link, self.workload).total_ms

    def switch(self, plan: Plan, reason: str, link: Link | None = None) -> PlanChange | None:
        """Make `plan` current: check privacy, have the cloud load its blocks, swap; None if it already is.

        Raises:
            PlanError: the plan breaks the privacy setting, or the cloud cannot hold its blocks.
            CloudUnavailableError: the plan needs the cloud and it cannot be reached.
        """
        if plan.num_layers != self.loaded.layered.num_layers:
            raise PlanError(f"the model has {self.loaded.layered.num_layers} blocks; the plan is for {plan.num_layers}")
        if plan.tokens_leave_device and not self.settings.allow_tokens_off_device:
            raise PlanError(f"plan {plan.describe()} sends token ids to the cloud, which this edge's privacy "
                            "setting forbids (EDGE_ALLOW_TOKENS_OFF_DEVICE)")
        with self._lock:
            old = self.orchestrator.plan
            link = link or self.estimator.estimate().as_link()
            self.planned_link = link
            self._moved_checks = 0
            if plan == old:
                return None
            if plan.uses_cloud:
                self.cloud.hold(plan.cut_a, plan.cut_b)  # before the swap: no request may meet missing blocks
            self.orchestrator.set_plan(plan)
            change = PlanChange(time.time(), old.describe(), plan.describe(), reason, link.bandwidth_bps,
                                link.rtt_ms, self.predicted_ms(old, link), self.predicted_ms(plan, link))
            self.changes.append(change)
            self.metrics.plan_changes.labels(reason).inc()
            self._record_cut(plan)
        log.info("plan changed (%s): %s -> %s on %.1f Mbit/s, %.1f ms", reason, change.old, change.new,
                 link.bandwidth_bps / 1e6, link.rtt_ms)
        return change

    def tick(self) -> PlanChange | None:
        """One periodic check: record the estimate; re-plan if the link has moved for long enough."""
        estimate = self.estimator.estimate()
        self.history.append(LinkPoint(time.time(), estimate.bandwidth_bps, estimate.rtt_ms, estimate.confidence))
        self.metrics.bandwidth.set(estimate.bandwidth_bps)
        self.metrics.rtt.set(estimate.rtt_ms / 1000)
        if not self.adaptive or estimate.samples == 0:
            return None
        now = estimate.as_link()
        if self.planned_link is None:  # the cloud was unreachable at start: plan now that the link answers
            return self.switch(self.search(now).best.plan, "start", now)
        s = self.settings
        if not link_moved(now, self.planned_link, s.replan_threshold, s.replan_rtt_floor_ms):
            self._moved_checks = 0
            return None
        self._moved_checks += 1
        if self._moved_checks < s.replan_confirmations:
            return None
        result = self.search(now)
        current = self.predicted_ms(self.plan, now)
        best = result.best
        if current is not None and best.estimate.total_ms > current * (1 - s.replan_min_gain):
            log.info("link moved to %.1f Mbit/s, %.1f ms; keeping %s (best alternative %.1f ms vs %.1f ms)",
                     now.bandwidth_bps / 1e6, now.rtt_ms, self.plan.describe(), best.estimate.total_ms, current)
            self.planned_link, self._moved_checks = now, 0
            return None
        return self.switch(best.plan, "link", now)

    def snapshot(self) -> dict:
        """The plan, the link it was chosen for, and the histories, as JSON for the admin API."""
        plan = self.plan
        planned = self.planned_link
        return {"plan": plan.model_dump(), "describe": plan.describe(), "adaptive": self.adaptive,
                "planned_link": planned.model_dump() if planned else None,
                "predicted_ms": self.predicted_ms(plan, planned) if planned else None,
                "changes": [asdict(c) for c in self.changes]}

    def _record_cut(self, plan: Plan) -> None:
        self.metrics.cut.labels("a").set(plan.cut_a)
        self.metrics.cut.labels("b").set(plan.cut_b)
