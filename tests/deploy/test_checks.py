"""The live-traffic gates over the metrics a real server exposes (serving.metrics)."""

from __future__ import annotations

import pytest

from shipyard.deploy.checks import judge, parse, window
from shipyard.manifest import DeployPolicy
from shipyard_serving.metrics import Metrics
from shipyard_serving.model import ModelInfo

pytestmark = pytest.mark.unit


def server_metrics() -> Metrics:
    return Metrics(ModelInfo("m", "1", "pixels", (64,), None, "0" * 64))


def test_a_window_counts_only_inference_between_two_scrapes() -> None:
    metrics = server_metrics()
    metrics.observe("/invocations", 200, 0.003)
    before = parse(metrics.render().decode())
    for _ in range(98):
        metrics.observe("/v2/models/{name}/infer", 200, 0.0008)
    metrics.observe("/invocations", 503, 0.2)
    metrics.observe("/invocations", 200, 0.2)
    metrics.observe("/metrics", 500, 3.0)  # not inference: ignored
    metrics.observe("/v2/health/ready", 200, 0.0001)
    w = window(before, parse(metrics.render().decode()))
    assert (w.requests, w.errors) == (100, 1)
    assert w.error_rate == 0.01
    assert w.p99_ms == 250.0  # the bucket holding the 99th of 100: (0.1, 0.25] s


def test_no_traffic_passes_and_the_limits_name_value_and_field() -> None:
    metrics = server_metrics()
    quiet = parse(metrics.render().decode())
    assert judge(window(quiet, quiet), DeployPolicy()) == []
    for status in (200, 500, 500):
        metrics.observe("/invocations", status, 0.03)
    failures = judge(window(quiet, parse(metrics.render().decode())), DeployPolicy(max_p99_ms=10))
    assert failures == [
        "Gate 'error_rate' failed: 0.667 (2 of 3 requests answered 5xx) > limit 0.010 "
        "(deploy.max_error_rate)",
        "Gate 'p99_latency' failed: 50 ms > limit 10 ms (deploy.max_p99_ms)",
    ]
