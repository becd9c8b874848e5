"""The edge's running state: model, plan, cloud link, orchestrator; and the readiness check."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from edge_service.cloud_client import CloudClient
from edge_service.metrics import EdgeMetrics
from edge_service.orchestrator import Orchestrator
from edge_service.replanner import Replanner
from edge_service.settings import EdgeSettings
from edge_service.speculation import DraftModel
from partitioner.planning import PlanInputs
from profiling.acceptance import DraftProfile, measure_drafts
from profiling.link_estimator import LinkEstimator
from profiling.profile import Profile
from profiling.profiler import measure_profile
from splitcore.backends import Runners
from splitcore.defaults import usable_cores
from splitcore.errors import CloudUnavailableError, PlanError, UserError
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
    plan.check_privacy(settings.allow_tokens_off_device)
    return plan


def cloud_client(settings: EdgeSettings) -> CloudClient:
    """The client of the configured cloud, with its token and TLS material."""
    cert = None
    if settings.cloud_client_cert is not None:
        if settings.cloud_client_key is None:
            raise PlanError("EDGE_CLOUD_CLIENT_CERT needs EDGE_CLOUD_CLIENT_KEY too")
        cert = (settings.cloud_client_cert, settings.cloud_client_key)
    token = settings.cloud_token.get_secret_value() if settings.cloud_token else None
    return CloudClient(settings.cloud_url, settings.cloud_timeout_s, settings.cloud_connect_timeout_s,
                       token=token, ca_file=settings.cloud_ca_file, client_cert=cert,
                       transport=settings.cloud_transport)


def _draft(settings: EdgeSettings, loaded: LoadedModel) -> DraftModel | None:
    """The draft model the settings name (the shipped one with the shipped model), or None: the edge's own blocks
    draft. Loaded only when the edge may speculate."""
    path = settings.draft_dir()
    if path is None or settings.speculate in ("off", "0"):
        return None
    try:
        return DraftModel.load(path, loaded)
    except UserError:
        if settings.draft_model is not None:
            raise  # the operator's choice: say why it cannot draft
        log.info("the shipped draft model does not share this model's tokenizer: the edge's own blocks draft")
        return None


@dataclass
class EdgeRuntime:
    """Everything a request handler needs, built once at start-up."""

    settings: EdgeSettings
    loaded: LoadedModel
    orchestrator: Orchestrator
    cloud: CloudClient
    link: LinkEstimator
    metrics: EdgeMetrics
    replanner: Replanner
    _edge_profile: Profile | None = None
    _gathering: threading.Lock = field(default_factory=threading.Lock)  # one measurement of the inputs at a time

    @classmethod
    def build(cls, settings: EdgeSettings, loaded: LoadedModel | None = None,
              metrics: EdgeMetrics | None = None) -> EdgeRuntime:
        """Load the model, connect the cloud client, and start on the configured plan (or search one)."""
        loaded = settings.named(loaded or load_checkpoint(settings.model_dir))
        n = loaded.layered.num_layers
        metrics = metrics or EdgeMetrics()
        estimator = LinkEstimator()
        cloud = cloud_client(settings)
        cloud.on_probe = metrics.probe_bytes.inc
        cloud.replicas.on_new = lambda replica: metrics.replica_sessions.labels(replica).inc()
        auto = settings.cut == "auto"
        plan = Plan(num_layers=n, cut_a=n, cut_b=n) if auto else plan_from_settings(settings, n)
        orchestrator = Orchestrator(loaded, plan, cloud, estimator.observe, slowdown=settings.emulate_slowdown,
                                    fallback=settings.fallback, step_timeout_s=settings.cloud_step_timeout_s,
                                    max_concurrent_steps=settings.max_concurrent_steps or usable_cores(),
                                    speculate=settings.speculate, draft=_draft(settings, loaded),
                                    speculate_max_streams=settings.speculate_max_streams or None,
                                    runners=Runners(loaded.layered, settings.backend, settings.onnx_dir,
                                                    quantize=settings.onnx_quantize,
                                                    batching=settings.batch_limits(),
                                                    observer=metrics.batches.observe))
        replanner = Replanner(settings, orchestrator, cloud, estimator, metrics)
        runtime = cls(settings, loaded, orchestrator, cloud, estimator, metrics, replanner)
        if auto:
            runtime.plan_at_start()
        log.info("edge plan: %s", orchestrator.plan.describe())
        return runtime

    @property
    def max_positions(self) -> int:
        return self.loaded.layered.max_positions

    def edge_profile(self) -> Profile:
        """This device's profile: the configured file or measured here (once), slowed as emulated."""
        if self._edge_profile is None:
            s = self.settings
            if s.edge_profile is not None:
                profile = Profile.load(s.edge_profile)
            else:
                profile = measure_profile(self.loaded, device_name="edge", repeats=3, onnx_dir=s.onnx_dir,
                                          quantize=s.onnx_quantize)
            self._edge_profile = profile.slowed(s.emulate_slowdown)
        return self._edge_profile

    def plan_inputs(self) -> PlanInputs:
        """What the planner needs, gathered once and handed to the replanner: this device's profile, the cloud's,
        the probed link, and the codec losses when a codec limit is set.

        Raises:
            CloudUnavailableError: the cloud cannot be reached.
        """
        with self._gathering:
            if self.replanner.inputs is None:
                self.cloud.info()  # fail fast, before spending time measuring the edge
                losses_of = self.loaded if self.settings.max_codec_loss is not None else None
                self.replanner.inputs = PlanInputs.gather(self.edge_profile(), self.cloud, self.link, losses_of,
                                                          self._drafts())
            return self.replanner.inputs

    def _drafts(self) -> DraftProfile | None:
        """The acceptance of this edge's draft, measured here, when it may speculate: the search weighs depths."""
        orch = self.orchestrator
        if orch.speculate == 0:
            return None
        return measure_drafts(self.loaded, orch.draft.loaded if orch.draft is not None else None,
                              slowdown=self.settings.emulate_slowdown)

    def plan_at_start(self) -> None:
        """`--plan auto`: gather the inputs, search, switch; edge-only while the cloud is unreachable.

        An unreachable cloud is not an error here: `tick` plans as soon as probes get through.
        """
        try:
            self.plan_inputs()
            self.replanner.plan_at_start()
        except CloudUnavailableError as exc:
            log.warning("--plan auto: %s; serving edge-only until the cloud answers", exc)

    def tick(self) -> None:
        """One periodic re-planning check; gathers the inputs first when an adaptive edge started without them."""
        if self.replanner.adaptive and self.replanner.inputs is None and self.link.estimate().samples:
            self.plan_inputs()
        self.replanner.tick()

    def cloud_status(self) -> tuple[bool, str]:
        """Ready when the plan needs no cloud, or the cloud answers, serves this model and holds the plan's blocks."""
        plan = self.orchestrator.plan
        if not plan.uses_cloud:
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
        self.cloud.close()
