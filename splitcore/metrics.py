"""Prometheus exposition shared by both services: one registry per app, so apps in one process stay apart."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest

# Seconds: from a few ms (a loopback decode step) to a minute (a long request on a poor link).
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def install_metrics_route(app: FastAPI, registry: CollectorRegistry) -> None:
    """`GET /metrics` in Prometheus' text format, with the process's own figures (resident memory, CPU time, open
    files: `process_*`), which the load tests sample."""
    ProcessCollector(registry=registry)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
