"""The cloud tier as Ray Serve replicas: the same FastAPI app (`cloud_service.app`) in each, behind Ray's HTTP
proxy, every session's frames routed to the replica that holds its cache (`cloud_service.ray_router`).

Each replica builds the app in its own process (the model is loaded there, not pickled), with the same settings,
auth, limits, metrics and health as a plain `edgesplit serve cloud`; its answers name it in
`splitcore.replicas.REPLICA_HEADER`.
Frames go over HTTP, one POST each with the session header: the per-edge frame channel would carry every
session of an edge to one replica, so a replicated cloud does not offer it (`/v1/info` says so, and the edge
sends frames over HTTP). A session's first frame goes through Ray's proxy; the rest, by default, straight to
the replica's own listener (`cloud_service.direct`: Ray's proxy costs about 10 ms per request here).

`serve()` runs the deployment until SIGINT/SIGTERM: on the cluster at `ray_address` (`ray start --head` on one
machine, `ray start --address` on the others), or on a one-node cluster it starts and stops itself.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from cloud_service.settings import CloudSettings
from splitcore.errors import UserError
from splitcore.openmp import openmp_passed_on

if TYPE_CHECKING:
    from ray.serve import Application

log = logging.getLogger(__name__)

APP_NAME = "edgesplit"
DEPLOYMENT_NAME = "cloud"



def _replica_class() -> type:
    import ray
    from ray import serve

    @serve.ingress()
    class CloudReplica:
        """One replica: the cloud app with its own engine and session store."""

        def __init__(self, settings: CloudSettings) -> None:
            from cloud_service.direct import ReplicaIdentity

            self.settings = settings
            name = serve.get_replica_context().replica_id.unique_id
            host = settings.host if settings.replica_direct else None
            wildcard = host in ("0.0.0.0", "::", "")
            self.replica = ReplicaIdentity(name, host, ray.util.get_node_ip_address() if wildcard else host)

        def __serve_build_asgi_app__(self) -> Any:  # Ray Serve's hook, called in the replica
            from cloud_service.app import create_app
            from splitcore.logs import configure_logging

            configure_logging("cloud", self.settings.log_level, self.settings.log_format)
            self.cloud_app = create_app(self.settings, replica=self.replica)
            return self.cloud_app

        def record_autoscaling_stats(self) -> dict[str, float]:
            """What the autoscaler reads (`sessions_policy`): this replica's live sessions and queued steps; most
            frames come through the replica's own listener, which Ray's request counts do not see."""
            engine = getattr(self.cloud_app.state, "engine", None)
            if engine is None:  # still loading
                return {"sessions": 0.0, "waiting": 0.0}
            batcher = engine.runners.batcher
            return {"sessions": float(len(engine.store)), "waiting": float(batcher.waiting if batcher else 0)}

    return CloudReplica


def sessions_policy(ctx: Any) -> tuple[float, dict]:
    """Ray Serve autoscaling policy: enough replicas that each holds at most `target_ongoing_requests` live
    sessions (or queued steps, or requests through the proxy, whichever asks for more). Ray applies the bounds
    and the up- and down-scaling delays around it."""
    target = ctx.config.get_target_ongoing_requests()
    metrics = ctx.aggregated_metrics or {}
    load = max(sum(metrics.get("sessions", {}).values()), sum(metrics.get("waiting", {}).values()),
               float(ctx.total_num_requests))
    return max(1.0, load / target), {}


def build_application(settings: CloudSettings) -> Application:
    """The Serve application: `settings.replicas` replicas, or autoscaled within `settings.autoscale`."""
    from ray import serve
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig

    from cloud_service.ray_router import SessionRouter

    scaling: dict[str, Any] = {"num_replicas": settings.replicas}
    if settings.autoscale:
        low, high = (int(x) for x in settings.autoscale.split(":"))
        scaling = {"autoscaling_config": AutoscalingConfig(
            min_replicas=low, max_replicas=max(low, high), target_ongoing_requests=settings.sessions_per_replica,
            upscale_delay_s=5.0, downscale_delay_s=60.0, look_back_period_s=5.0,
            policy=AutoscalingPolicy(policy_function=sessions_policy))}
    deployment = serve.deployment(
        _replica_class(), name=DEPLOYMENT_NAME,
        ray_actor_options={"num_cpus": settings.replica_cpus},
        # steps of one replica's sessions batch inside it (splitcore.batching): let them all in
        max_ongoing_requests=max(64, settings.max_sessions),
        request_router_config=RequestRouterConfig(
            request_router_class=SessionRouter,  # type: ignore[arg-type]  # a class or its import path
            request_router_kwargs={"session_ttl_s": settings.session_ttl_s, "num_fallback_replicas": 1}),
        **scaling)
    return deployment.bind(settings)  # type: ignore[attr-defined]  # serve.deployment(cls) is a Deployment


def app_builder(args: dict[str, Any]) -> Application:
    """For `serve run` / `serve deploy` config files (deploy/ray-serve.yaml): `args` are `CloudSettings` fields
    (`model_dir`, `replicas`, `autoscale`, ...); the rest comes from `CLOUD_*` variables as for `serve cloud`."""
    return build_application(CloudSettings(**args))


def serve_forever(settings: CloudSettings) -> None:
    """Deploy on Ray and block until SIGINT or SIGTERM, then take the application down.

    Raises:
        UserError: settings that a replicated cloud cannot honour.
    """
    import ray
    from ray import serve

    if settings.ssl_certfile is not None:
        raise UserError("--ray serves plain HTTP through Ray's proxy; terminate TLS in front of it (e.g. a load "
                        "balancer), or run the cloud without --ray")
    if settings.layers is not None:
        raise UserError("--ray replicas hold every block: --layers would be one replica's alone after an edge "
                        "asks for more (POST /v1/layers reaches one replica)")
    threads = settings.threads or max(1, int(settings.replica_cpus))
    settings = settings.model_copy(update={"threads": threads})
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": openmp_passed_on()}  # replicas are tiers too: their OpenMP threads idle as ours
    ray.init(address=address, runtime_env=env, include_dashboard=False if address is None else None,
             logging_level=logging.WARNING)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_application(settings), name=APP_NAME, route_prefix="/", blocking=False)
    log.info("edgesplit cloud on Ray Serve at http://%s:%d (%s)", settings.host, settings.port,
             f"autoscaled {settings.autoscale}" if settings.autoscale else f"{settings.replicas} replicas")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("taking the edgesplit application down")
    serve.delete(APP_NAME)
    if address is None:  # the cluster is ours: stop it too
        serve.shutdown()
        ray.shutdown()
