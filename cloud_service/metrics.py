"""The cloud's Prometheus metrics: step latency, link traffic, sessions, refusals."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from cloud_service.sessions import SessionStore
from splitcore.metrics import LATENCY_BUCKETS_S, BatchMetrics

if TYPE_CHECKING:
    from cloud_service.engine import ShardEngine


class CloudMetrics:
    """Every cloud metric, on a registry of its own; session gauges read the store when scraped."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.step_latency = Histogram("edgesplit_cloud_step_duration_seconds", "One frame: decode, blocks, encode",
                                      buckets=LATENCY_BUCKETS_S, registry=r)
        self.link_bytes = Counter("edgesplit_cloud_link_bytes", "Frame bytes received from and sent to edges",
                                  ["direction"], registry=r)
        self.probe_bytes = Counter("edgesplit_cloud_link_probe_bytes", "Bytes of link probes received from edges",
                                   registry=r)
        self.errors = Counter("edgesplit_cloud_errors", "Frames refused or failed, by error", ["kind"], registry=r)
        self.sessions = Gauge("edgesplit_cloud_active_sessions", "Live edge sessions", registry=r)
        self.running = Gauge("edgesplit_cloud_num_requests_running",
                             "Sessions (edges' generations) the cloud holds a KV cache for (as vLLM's running)",
                             registry=r)
        self.waiting = Gauge("edgesplit_cloud_num_requests_waiting",
                             "Steps queued for the next batched forward (as vLLM's waiting)", registry=r)
        self.cache_bytes = Gauge("edgesplit_cloud_cache_bytes", "KV cache bytes over all sessions", registry=r)
        self.cache_usage = Gauge("edgesplit_cloud_kv_cache_usage_ratio",
                                 "KV cache bytes over the cap (CLOUD_MAX_CACHE_MB), 0 to 1 (as vLLM's "
                                 "kv_cache_usage_perc)", registry=r)
        self.evictions = _Evictions()
        r.register(self.evictions)
        self.channels = Gauge("edgesplit_cloud_open_channels", "Edges' frame channels (WebSockets) open now",
                              registry=r)
        self.in_flight = Gauge("edgesplit_cloud_in_flight_steps", "Frames being computed now", registry=r)
        self.batches = BatchMetrics(r, "cloud")

    def watch(self, engine: ShardEngine) -> None:
        """Read the engine's session store and batcher at each scrape."""
        store = engine.store
        self.sessions.set_function(lambda: len(store))
        self.running.set_function(lambda: len(store))
        self.waiting.set_function(lambda: engine.runners.batcher.waiting if engine.runners.batcher else 0)
        self.cache_bytes.set_function(lambda: store.cache_bytes)
        self.cache_usage.set_function(lambda: store.cache_bytes / store.max_cache_bytes if store.max_cache_bytes else 0)
        self.evictions.store = store


class _Evictions(Collector):
    """`edgesplit_cloud_session_evictions_total`: a counter the session store keeps (read at each scrape)."""

    def __init__(self) -> None:
        self.store: SessionStore | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("edgesplit_cloud_session_evictions",
                                     "Sessions evicted (cache cap, session cap or idle TTL) since start")
        family.add_metric([], self.store.evictions if self.store is not None else 0)
        yield family
