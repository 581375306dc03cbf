"""Prometheus metrics, on a registry of the app's own (two apps in one process never collide).

With several worker processes (`PROMETHEUS_MULTIPROC_DIR` set before prometheus_client is
imported, as `python -m serving` does), values live in shared files and a scrape of any
worker aggregates all of them.
https://prometheus.github.io/client_python/multiprocess/
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from shipyard_serving.model import ModelInfo

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, info: ModelInfo) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode the scrape reads the shared files, not a registry.
        registry = None if self.multiprocess else CollectorRegistry()
        self.registry = registry
        self.requests = Counter(
            "shipyard_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "shipyard_request_duration_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "shipyard_inference_batch_rows",
            "Rows per ONNX Runtime call (after micro-batching)",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "shipyard_inflight_requests",
            "Requests being handled",
            registry=registry,
            multiprocess_mode="livesum",
        )
        model = Gauge(
            "shipyard_model_info",
            "The model this server serves (value 1)",
            ["name", "version", "onnx_sha256", "git_sha", "fingerprint"],
            registry=registry,
            multiprocess_mode="max",
        )
        model.labels(
            info.name,
            info.version,
            info.onnx_sha256,
            info.extra.get("git_sha", ""),
            info.extra.get("fingerprint", ""),
        ).set(1)
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        # Label lookups cost more than the increments; keep the children.
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
