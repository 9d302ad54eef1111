"""Prometheus metrics, on a registry of the app's own (several apps can live in one process, as in tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.executions = Counter("sandbox_executions_total", "Executions finished, by outcome.",
                                  ["language", "provider", "status"], registry=self.registry)
        self.duration = Histogram("sandbox_execution_duration_seconds",
                                  "Time from admission to result, including compile and queueing in the provider.",
                                  ["language", "provider", "status"], buckets=BUCKETS, registry=self.registry)
        self.active = Gauge("sandbox_active_containers", "Sandboxes alive now: executions running, or for "
                            "pooling providers (docker) the containers of the pool.", ["provider"],
                            registry=self.registry)
        self.pooled: set[str] = set()  # providers whose gauge is the pool's size, set at scrape time
        self.errors = Counter("sandbox_errors_total",
                              "Executions that produced no result: bad_request (the client's), unavailable "
                              "or internal_error (the sandbox's).", ["language", "provider", "status"],
                              registry=self.registry)
        self.queued = Gauge("sandbox_queued_requests", "Requests waiting for an execution slot.",
                            registry=self.registry)
        self.circuit = Gauge("sandbox_provider_circuit_state", "Each provider's circuit breaker: 0 closed, 1 "
                             "half-open (one probe may go through), 2 open (skipped).", ["provider"],
                             registry=self.registry)
        self.pending_jobs = Gauge("sandbox_pending_jobs", "Async jobs queued or running.", registry=self.registry)

    @contextlib.contextmanager
    def in_progress(self, provider: str) -> Iterator[None]:
        """Count a running execution in sandbox_active_containers, unless the provider's pool is counted."""
        if provider in self.pooled:
            yield
            return
        with self.active.labels(provider).track_inprogress():
            yield
