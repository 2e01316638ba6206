"""Prometheus metrics, on a registry of the app's own (no process-global collectors).

Under `twotower serve --workers N` (app.supervisor) every process writes its values to files in
`PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode, chosen when the variable is set
at import) and /metrics reads them all, so any process answers for the service: counters and
histograms summed, gauges as each one's `multiprocess_mode` says.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "twotower_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "twotower_request_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.builds = Counter(
            "twotower_index_builds", "Index builds by outcome", ["version", "outcome"], registry=r
        )
        self.swaps = Counter("twotower_index_swaps", "Snapshots swapped in", ["version"], registry=r)
        self.refused = Counter(
            "twotower_index_loads_refused",
            "Builds refused at load (checksum, dim, version...)",
            ["version"],
            registry=r,
        )
        self.load_retries = Counter(
            "twotower_index_load_retries",
            "Build loads that failed with an I/O error and are retried with backoff",
            ["version"],
            registry=r,
        )
        # Every process serves the same builds: the highest of the live processes' values.
        self.items = Gauge(
            "twotower_index_items",
            "Items in the serving index",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.delta_items = Gauge(
            "twotower_delta_items",
            "Catalog changes (upserts and deletes) pending on top of the serving build",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_progress = Gauge(
            "twotower_build_items_encoded",
            "Items encoded by the running build",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",  # only the process with the worker sets it
        )
        self.store_errors = Counter(
            "twotower_feature_store_errors", "Feature store calls that failed", ["op"], registry=r
        )
        self.worker_last_loop = Gauge(
            "twotower_worker_last_loop_timestamp_seconds",
            "When the reindex worker of this process last went round its loop (unix time)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.worker_failures = Counter(
            "twotower_worker_failures", "Unexpected failures the reindex worker survived", registry=r
        )
        self.cold_start = Counter("twotower_cold_start", "Requests served as cold-start users", registry=r)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            every = CollectorRegistry()
            multiprocess.MultiProcessCollector(every)  # type: ignore[no-untyped-call]
            return generate_latest(every)
        return generate_latest(self.registry)
