"""The edge's running state: model, plan, cloud link, orchestrator; and the readiness check."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge_service.cloud_client import CloudClient
from edge_service.orchestrator import Orchestrator
from edge_service.settings import EdgeSettings
from partitioner.link_estimator import LinkEstimator
from splitcore.errors import CloudUnavailableError, PlanError
from splitcore.loading import LoadedModel, load_checkpoint
from splitcore.plan import Plan, parse_cut

log = logging.getLogger(__name__)


def plan_from_settings(settings: EdgeSettings, num_layers: int) -> Plan:
    """The plan the flags ask for, checked against the privacy setting.

    Raises:
        PlanError: malformed cut, or tokens would leave the device without permission.
    """
    plan = parse_cut(settings.cut, num_layers, codec=settings.codec, head=settings.head,
                     zstd_level=settings.zstd_level)
    if plan.tokens_leave_device and not settings.allow_tokens_off_device:
        raise PlanError(f"plan {plan.describe()} sends token ids to the cloud; allow it with "
                        "--allow-tokens-off-device (EDGE_ALLOW_TOKENS_OFF_DEVICE=1) or cut at A >= 1")
    return plan


def auto_plan(settings: EdgeSettings, loaded: LoadedModel, cloud: CloudClient, estimator: LinkEstimator) -> Plan:
    """Plan at start-up from both tiers' profiles and a probed link; edge-only when the cloud cannot be reached."""
    from partitioner.costmodel import Workload
    from partitioner.planning import describe, plan_for, probe_link
    from partitioner.profile import Profile
    from partitioner.profiler import measure_profile
    from partitioner.search import Constraints

    n = loaded.layered.num_layers
    try:
        cloud_profile = Profile.model_validate(cloud.profile())
        probe_link(cloud.probe, estimator)
    except CloudUnavailableError as exc:
        log.warning("--plan auto: %s; serving edge-only until replanned", exc)
        return Plan(num_layers=n, cut_a=n, cut_b=n)
    if settings.edge_profile is not None:
        edge_profile = Profile.load(settings.edge_profile)
    else:
        edge_profile = measure_profile(loaded, device_name="edge", repeats=3)
    workload = Workload.parse(settings.plan_workload)
    constraints = Constraints(
        edge_memory_bytes=int(settings.edge_memory_mb * 2**20) if settings.edge_memory_mb else None,
        min_edge_layers=settings.min_edge_layers, allow_tokens_off_device=settings.allow_tokens_off_device)
    link = estimator.estimate().as_link()
    result = plan_for(edge_profile, cloud_profile, link, workload, constraints, seed=settings.plan_seed)
    log.info("--plan auto:\n%s", describe(result, link, workload))
    return result.best.plan


@dataclass
class EdgeRuntime:
    """Everything a request handler needs, built once at start-up."""

    settings: EdgeSettings
    loaded: LoadedModel
    orchestrator: Orchestrator
    cloud: CloudClient | None
    max_positions: int
    link: LinkEstimator

    @classmethod
    def build(cls, settings: EdgeSettings, loaded: LoadedModel | None = None) -> EdgeRuntime:
        loaded = loaded or load_checkpoint(settings.model_dir)
        estimator = LinkEstimator()
        cloud = CloudClient(settings.cloud_url, settings.cloud_timeout_s, settings.cloud_connect_timeout_s)
        if settings.cut == "auto":
            plan = auto_plan(settings, loaded, cloud, estimator)
        else:
            plan = plan_from_settings(settings, loaded.layered.num_layers)
        positions = int(getattr(loaded.layered.config, "max_position_embeddings", 0) or 2**31)
        log.info("edge plan: %s", plan.describe())
        link: CloudClient | None = cloud
        if not plan.uses_cloud:
            cloud.close()
            link = None
        orchestrator = Orchestrator(loaded, plan, link, estimator.observe)
        return cls(settings, loaded, orchestrator, link, positions, estimator)

    def cloud_status(self) -> tuple[bool, str]:
        """Ready when the plan needs no cloud, or the cloud answers, serves this model and holds the plan's blocks."""
        plan = self.orchestrator.plan
        if self.cloud is None or not plan.uses_cloud:
            return True, "edge-only plan: no cloud needed"
        try:
            info = self.cloud.info()
        except CloudUnavailableError as exc:
            return False, str(exc)
        if info.get("fingerprint") != self.loaded.fingerprint:
            return False, (f"the cloud serves model {info.get('model')!r} ({info.get('fingerprint')}), not this edge's "
                           f"{self.loaded.name!r} ({self.loaded.fingerprint})")
        held = info.get("held_layers", [0, 0])
        if not (held[0] <= plan.cut_a and plan.cut_b <= held[1]):
            return False, f"the cloud holds blocks [{held[0]}, {held[1]}), the plan needs {plan.cloud_layers}"
        return True, f"cloud at {self.cloud.base_url} ready"

    def close(self) -> None:
        if self.cloud is not None:
            self.cloud.close()
