"""Rollout gates: golden smoke requests, and error rate and p99 from a server's own metrics.

Decisions are pure functions over scraped numbers; the I/O around them is thin.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from shipyard.image.build import PARITY, differences
from shipyard.manifest import DeployPolicy

INFERENCE_ROUTES = ("/invocations", "/infer")


@dataclass(frozen=True)
class Golden:
    """A release's golden inputs and the validated model's outputs for them."""

    inputs: list[list[float]]
    labels: list[int]
    probabilities: list[list[float]]

    @classmethod
    def load(cls, path: Path) -> Golden:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(self.__dict__))
        return path


def headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def smoke(url: str, golden: Golden, api_key: str | None) -> list[str]:
    """Send the golden inputs; every way the answer differs from the expected outputs."""
    try:
        answer = httpx.post(
            f"{url}/invocations",
            json={"inputs": golden.inputs},
            headers=headers(api_key),
            timeout=30,
        )
    except httpx.HTTPError as e:
        return [f"Gate 'smoke' failed: {url}/invocations did not answer ({e})"]
    if answer.status_code != 200:
        return [
            f"Gate 'smoke' failed: {url}/invocations answered {answer.status_code}: "
            f"{answer.text[:200]}"
        ]
    mismatched, delta = differences(
        answer.json()["predictions"],
        np.asarray(golden.labels),
        np.asarray(golden.probabilities),
    )
    if mismatched or delta > PARITY:
        return [
            f"Gate 'smoke' failed: {mismatched} of {len(golden.labels)} golden labels differ, "
            f"max |Δprob| {delta:.2e} (limit {PARITY:.0e})"
        ]
    return []


@dataclass(frozen=True)
class Counts:
    """Cumulative inference counters of one server, as its /metrics reported them."""

    requests: int
    errors: int
    buckets: tuple[tuple[float, int], ...]
    """Cumulative latency histogram: (upper bound in seconds, count), summed over routes."""


def parse(text: str) -> Counts:
    requests = errors = 0
    buckets: dict[float, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            route = sample.labels.get("route", "")
            if not route.endswith(INFERENCE_ROUTES):
                continue
            if sample.name == "shipyard_requests_total":
                requests += int(sample.value)
                errors += int(sample.value) if sample.labels["status"].startswith("5") else 0
            elif sample.name == "shipyard_request_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0) + int(sample.value)
    return Counts(requests, errors, tuple(sorted(buckets.items())))


def scrape(url: str) -> Counts:
    return parse(httpx.get(f"{url}/metrics", timeout=5).text)


@dataclass(frozen=True)
class Window:
    requests: int
    errors: int
    p99_ms: float | None
    """Upper bound of the histogram bucket holding the 99th percentile; None without traffic."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def window(before: Counts, after: Counts) -> Window:
    """What happened between two scrapes of the same server."""
    previous = dict(before.buckets)
    deltas = [(bound, count - previous.get(bound, 0)) for bound, count in after.buckets]
    total = after.requests - before.requests
    p99 = None
    if deltas and deltas[-1][1] > 0:
        need = math.ceil(0.99 * deltas[-1][1])
        p99 = next(bound for bound, count in deltas if count >= need) * 1000
    return Window(total, after.errors - before.errors, p99)


def judge(w: Window, policy: DeployPolicy) -> list[str]:
    """Every live-traffic gate the window fails, with value and limit."""
    failures = []
    if w.error_rate > policy.max_error_rate:
        failures.append(
            f"Gate 'error_rate' failed: {w.error_rate:.3f} ({w.errors} of {w.requests} requests "
            f"answered 5xx) > limit {policy.max_error_rate:.3f} (deploy.max_error_rate)"
        )
    if w.p99_ms is not None and w.p99_ms > policy.max_p99_ms:
        failures.append(
            f"Gate 'p99_latency' failed: {w.p99_ms:g} ms > limit {policy.max_p99_ms:g} ms "
            "(deploy.max_p99_ms)"
        )
    return failures
