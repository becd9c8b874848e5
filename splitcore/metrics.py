"""Prometheus exposition shared by both services: one registry per app, so apps in one process stay apart."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

# Seconds: from a few ms (a loopback decode step) to a minute (a long request on a poor link).
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)  # a request's lengths
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


def sample_totals(text: str) -> dict[str, float]:
    """Each sample name of a `/metrics` page with its value summed over its label sets (`model_name` and the rest)."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


class _Labelled:
    """A registry's series with labels every one of them carries (`model_name`, as vLLM's), added when scraped."""

    def __init__(self, registry: CollectorRegistry, labels: Callable[[], dict[str, str]]) -> None:
        self.registry, self.labels = registry, labels

    def collect(self) -> Iterator[Metric]:
        extra = self.labels()
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**extra, **s.labels}) for s in family.samples]
            yield labelled


def install_metrics_route(app: FastAPI, registry: CollectorRegistry,
                          model_name: Callable[[], str] = lambda: "") -> None:
    """`GET /metrics` in Prometheus' text format, every series labelled with `model_name()` (the served model),
    with the process's own figures (resident memory, CPU time, open files: `process_*`), which the load tests
    sample."""
    ProcessCollector(registry=registry)
    labelled = _Labelled(registry, lambda: {"model_name": model_name()})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(labelled), media_type=CONTENT_TYPE_LATEST)  # type: ignore[arg-type]
