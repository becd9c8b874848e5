"""Prometheus exposition shared by both services: one registry per app, so apps in one process stay apart."""

from __future__ import annotations

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# Seconds: from a few ms (a loopback decode step) to a minute (a long request on a poor link).
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUEUE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)


class BatchMetrics:
    """What a tier's continuous batcher does: rows per forward, how long steps queue, the latest batch's size."""

    def __init__(self, registry: CollectorRegistry, tier: str) -> None:
        self.size = Histogram(f"edgesplit_{tier}_batch_size", "Sessions in one batched forward",
                              buckets=BATCH_BUCKETS, registry=registry)
        self.positions = Histogram(f"edgesplit_{tier}_batch_positions", "Positions in one batched forward",
                                   buckets=BATCH_BUCKETS, registry=registry)
        self.queue_wait = Histogram(f"edgesplit_{tier}_batch_queue_wait_seconds",
                                    "A step's wait for its first batch", buckets=QUEUE_BUCKETS_S, registry=registry)
        self.current = Gauge(f"edgesplit_{tier}_batch_current_size", "Sessions in the latest batched forward",
                             registry=registry)
        self.forward = Histogram(f"edgesplit_{tier}_batch_forward_seconds",
                                 "One batched forward's compute (what the profile's batched figures predict)",
                                 buckets=LATENCY_BUCKETS_S, registry=registry)

    def observe(self, rows: int, positions: int, waits_s: list[float], seconds: float) -> None:
        """The batcher's observer (`splitcore.batching.BatchObserver`)."""
        self.forward.observe(seconds)
        self.size.observe(rows)
        self.positions.observe(positions)
        self.current.set(rows)
        for wait in waits_s:
            self.queue_wait.observe(wait)


def install_metrics_route(app: FastAPI, registry: CollectorRegistry) -> None:
    """`GET /metrics` in Prometheus' text format, with the process's own figures (resident memory, CPU time, open
    files: `process_*`), which the load tests sample."""
    ProcessCollector(registry=registry)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
