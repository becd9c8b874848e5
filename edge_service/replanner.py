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
from partitioner.costmodel import Workload
from partitioner.planning import PlanInputs, describe, plan_for
from partitioner.search import Constraints, SearchResult, best_depth
from profiling.link_estimator import Link, LinkEstimator
from splitcore.errors import PlanError
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
    """Owns the plan's lifecycle on the edge: the link history, searches and switches.

    It measures nothing itself: `inputs` (both profiles, the codec losses) is handed to it ready, by the runtime
    that gathered it (`EdgeRuntime.plan_inputs`); until then it can switch plans by hand but not search.
    """

    def __init__(self, settings: EdgeSettings, orchestrator: Orchestrator, cloud: CloudClient,
                 estimator: LinkEstimator, metrics: EdgeMetrics, inputs: PlanInputs | None = None) -> None:
        self.settings = settings
        self.orchestrator = orchestrator
        self.cloud = cloud
        self.estimator = estimator
        self.metrics = metrics
        self.inputs = inputs
        self.adaptive = settings.cut == "auto" and settings.adaptive
        self.workload = Workload.parse(settings.plan_workload)
        self.constraints = Constraints.from_limits(settings.edge_memory_mb, settings.min_edge_layers,
                                                   settings.allow_tokens_off_device, settings.max_codec_loss)
        self.planned_link: Link | None = None  # the link the current plan was chosen for
        self.history: deque[LinkPoint] = deque(maxlen=900)
        self.changes: deque[PlanChange] = deque(maxlen=200)
        self._moved_checks = 0
        self._lock = threading.Lock()  # one search or switch at a time
        self._record_cut(orchestrator.plan)

    @property
    def plan(self) -> Plan:
        return self.orchestrator.plan

    def search(self, link: Link | None = None, constraints: Constraints | None = None,
               workload: Workload | None = None) -> SearchResult:
        """The best plan for a link (default: the current estimate); does not switch to it.

        Raises:
            PlanError: no inputs yet, or no plan meets the constraints.
        """
        if self.inputs is None:
            raise PlanError("the planner has no profiles yet: the cloud has not been reached")
        link = link or self.estimator.estimate().as_link()
        return plan_for(self.inputs.on(link), workload or self.workload, constraints or self.constraints,
                        seed=self.settings.plan_seed)

    def plan_at_start(self) -> None:
        """`--plan auto`, once the inputs are gathered: search on the probed link and switch."""
        link = self.estimator.estimate().as_link()
        result = self.search(link)
        log.info("--plan auto:\n%s", describe(result, link, self.workload))
        self.switch(result.best.plan, "start", link)
        self.orchestrator.expect_depth(result.best.speculate)

    def predicted_ms(self, plan: Plan, link: Link) -> float | None:
        """The cost model's time for one request of the workload, or None before profiles exist."""
        if self.inputs is None:
            return None
        i = self.inputs  # at its best depth, as the search weighs plans
        _, estimate = best_depth(plan, i.edge, i.cloud, link, self.workload, i.drafts, "total_ms", self.constraints)
        return estimate.total_ms

    def switch(self, plan: Plan, reason: str, link: Link | None = None) -> PlanChange | None:
        """Make `plan` current: check privacy, have the cloud load its blocks, swap; None if it already is.

        Raises:
            PlanError: the plan breaks the privacy setting, or the cloud cannot hold its blocks.
            CloudUnavailableError: the plan needs the cloud and it cannot be reached.
        """
        layers = self.orchestrator.loaded.layered.num_layers
        if plan.num_layers != layers:
            raise PlanError(f"the model has {layers} blocks; the plan is for {plan.num_layers}")
        plan.check_privacy(self.settings.allow_tokens_off_device)
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
        if not self.adaptive or estimate.samples == 0 or self.inputs is None:
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
        change = self.switch(best.plan, "link", now)
        self.orchestrator.expect_depth(best.speculate)
        return change

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
