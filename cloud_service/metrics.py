"""The cloud's Prometheus metrics: step latency, link traffic, sessions, refusals."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cloud_service.sessions import SessionStore
from splitcore.metrics import LATENCY_BUCKETS_S, BatchMetrics


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
        self.cache_bytes = Gauge("edgesplit_cloud_cache_bytes", "KV cache bytes over all sessions", registry=r)
        self.evictions = Gauge("edgesplit_cloud_session_evictions", "Sessions evicted since start", registry=r)
        self.channels = Gauge("edgesplit_cloud_open_channels", "Edges' frame channels (WebSockets) open now",
                              registry=r)
        self.in_flight = Gauge("edgesplit_cloud_in_flight_steps", "Frames being computed now", registry=r)
        self.batches = BatchMetrics(r, "cloud")

    def watch(self, store: SessionStore) -> None:
        """Read the session store's figures at each scrape."""
        self.sessions.set_function(lambda: len(store))
        self.cache_bytes.set_function(lambda: store.cache_bytes)
        self.evictions.set_function(lambda: store.evictions)
