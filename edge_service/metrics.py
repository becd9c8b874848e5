"""The edge's Prometheus metrics: latency histograms, link traffic, plan changes, cloud errors."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edge_service.orchestrator import Finished
from splitcore.errors import CloudUnavailableError, EdgesplitError
from splitcore.metrics import LATENCY_BUCKETS_S, TOKEN_BUCKETS, BatchMetrics

SPEC_KINDS = ("drafted", "accepted", "round_trips")  # speculation's counted tokens (SpeculationStats' fields)


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, kept (boundedly) for the dashboard's rate and latency charts."""

    at_s: float  # unix time it ended
    endpoint: str
    outcome: str  # stop, length, cancelled, error, disconnected
    time_to_first_token_ms: float | None
    total_ms: float | None
    output_tokens: int


class EdgeMetrics:
    """Every edge metric, on a registry of its own, and the recent requests."""

    def __init__(self, keep_recent: int = 2000) -> None:
        self.recent: deque[RequestRecord] = deque(maxlen=keep_recent)
        self.registry = r = CollectorRegistry()
        self.time_to_first_token = Histogram("edgesplit_edge_time_to_first_token_seconds",
                                             "Request start to first generated token", buckets=LATENCY_BUCKETS_S,
                                             registry=r)
        self.inter_token = Histogram("edgesplit_edge_inter_token_latency_seconds",
                                     "Time between consecutive generated tokens", buckets=LATENCY_BUCKETS_S, registry=r)
        self.request_latency = Histogram("edgesplit_edge_request_duration_seconds", "Whole generation, start to end",
                                         ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.requests = Counter("edgesplit_edge_requests", "Generations by endpoint and outcome",
                                ["endpoint", "outcome"], registry=r)
        self.generation_tokens = Counter("edgesplit_edge_generation_tokens", "Generated tokens (as vLLM's)",
                                         registry=r)
        self.prompt_tokens = Counter("edgesplit_edge_prompt_tokens", "Prompt tokens of finished requests (as vLLM's)",
                                     registry=r)
        self.request_prompt = Histogram("edgesplit_edge_request_prompt_tokens", "Prompt length of each request",
                                        buckets=TOKEN_BUCKETS, registry=r)
        self.request_generation = Histogram("edgesplit_edge_request_generation_tokens",
                                            "Generated tokens of each request", buckets=TOKEN_BUCKETS, registry=r)
        self.running = Gauge("edgesplit_edge_num_requests_running", "Generations past their first token",
                             registry=r)
        self.waiting = Gauge("edgesplit_edge_num_requests_waiting", "Generations not yet at their first token "
                             "(tokenising, prefill, waiting for the cloud)", registry=r)
        self.link_bytes = Counter("edgesplit_edge_link_bytes", "Bytes the edge sent to and received from the cloud",
                                  ["direction"], registry=r)
        self.active = Gauge("edgesplit_edge_active_requests", "Generations running now", registry=r)
        self.plan_changes = Counter("edgesplit_edge_plan_changes", "Plan switches, by who asked",
                                    ["reason"], registry=r)
        self.cloud_errors = Counter("edgesplit_edge_cloud_errors", "Cloud calls that failed, by kind",
                                    ["kind"], registry=r)
        self.bandwidth = Gauge("edgesplit_edge_link_bandwidth_bits_per_second", "Estimated link bandwidth, each way",
                               registry=r)
        self.rtt = Gauge("edgesplit_edge_link_rtt_seconds", "Estimated link round-trip time", registry=r)
        self.fallbacks = Counter("edgesplit_edge_fallbacks", "Generations finished on the edge alone after a cloud "
                                 "failure (or while the cloud was backed off)", registry=r)
        self.replica_sessions = Counter("edgesplit_edge_cloud_replica_sessions",
                                        "Cloud sessions opened, by the replica that took them (a replicated cloud)",
                                        ["replica"], registry=r)
        self.probe_bytes = Counter("edgesplit_edge_link_probe_bytes", "Bytes of link probes sent to the cloud",
                                   registry=r)
        self.replays = Counter("edgesplit_edge_replays", "Cloud caches rebuilt by replaying a prefix", registry=r)
        self.batches = BatchMetrics(r, "edge")
        self.spec_acceptance = Histogram("edgesplit_edge_speculation_acceptance_ratio",
                                         "Drafts the cloud's verify accepted, per speculating generation",
                                         buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), registry=r)
        self.spec_tokens = Histogram("edgesplit_edge_speculation_tokens_per_round_trip",
                                     "Tokens each verify round gave, averaged per speculating generation",
                                     buckets=(1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 9.0, 17.0), registry=r)
        self.spec_counts = Counter("edgesplit_edge_speculation_tokens", "Speculation's tokens since start: drafted, "
                                   "accepted (drafts the verify kept) and verify round trips", ["kind"], registry=r)
        self.in_flight = 0  # generations running now (the admission limit reads it)
        self.active.set_function(lambda: self.in_flight)
        self.ended = 0  # generations ended since start, for giving their memory back (`splitcore.memory`)
        self.cut = Gauge("edgesplit_edge_plan_cut", "Current plan's cut points", ["point"], registry=r)

    def begin(self) -> None:
        self.in_flight += 1
        self.waiting.inc()

    def first_token(self) -> None:
        """A generation begun with `begin` has its first token: it moves from waiting to running."""
        self.waiting.dec()
        self.running.inc()

    def end(self, started: bool = True) -> None:
        """A generation begun with `begin` ended; `started`: it had reached `first_token`."""
        self.in_flight -= 1
        self.ended += 1
        (self.running if started else self.waiting).dec()

    def finished(self, done: Finished, endpoint: str) -> None:
        """Record one generation that ran to its end (or was cancelled by its client)."""
        self.time_to_first_token.observe(done.time_to_first_token_ms / 1000)
        for gap in done.inter_token_ms:
            self.inter_token.observe(gap / 1000)
        self.request_latency.labels(endpoint).observe(done.total_ms / 1000)
        self.requests.labels(endpoint, done.finish_reason).inc()
        self.generation_tokens.inc(len(done.token_ids))
        self.prompt_tokens.inc(done.prompt_tokens)
        self.request_prompt.observe(done.prompt_tokens)
        self.request_generation.observe(len(done.token_ids))
        if done.fallback:
            self.fallbacks.inc()
        spec = done.speculation
        if spec is not None and spec.round_trips:
            self.spec_acceptance.observe(spec.accepted / spec.drafted if spec.drafted else 0.0)
            self.spec_tokens.observe((spec.accepted + spec.round_trips) / spec.round_trips)
            for kind in SPEC_KINDS:
                self.spec_counts.labels(kind).inc(getattr(spec, kind))
        self.replays.inc(done.replays)
        self.recent.append(RequestRecord(time.time(), endpoint, done.finish_reason, done.time_to_first_token_ms,
                                         done.total_ms, len(done.token_ids)))
        link = done.link
        self.link_bytes.labels("sent").inc(link.prefill_bytes_up + link.decode_bytes_up)
        self.link_bytes.labels("received").inc(link.prefill_bytes_down + link.decode_bytes_down)

    def spec_totals(self) -> dict[str, int]:
        """Speculation since start, for the dashboard: speculating generations, and the counters' tokens."""
        get = self.registry.get_sample_value
        totals = {kind: int(get("edgesplit_edge_speculation_tokens_total", {"kind": kind}) or 0)
                  for kind in SPEC_KINDS}
        return {"generations": int(get("edgesplit_edge_speculation_acceptance_ratio_count") or 0), **totals}

    def failed(self, exc: BaseException, endpoint: str) -> None:
        """Record a generation that ended in an error."""
        kind = type(exc).__name__ if isinstance(exc, EdgesplitError) else "internal"
        self.requests.labels(endpoint, "error").inc()
        self.recent.append(RequestRecord(time.time(), endpoint, "error", None, None, 0))
        if isinstance(exc, CloudUnavailableError):  # refusals (4xx from the cloud) included
            self.cloud_errors.labels(kind).inc()

    def disconnected(self, endpoint: str) -> None:
        """Record a stream whose client hung up before the end."""
        self.requests.labels(endpoint, "disconnected").inc()
        self.recent.append(RequestRecord(time.time(), endpoint, "disconnected", None, None, 0))
