"""Prometheus metrics, counted in plain Python numbers, exposed in Prometheus' text format.

prometheus_client's metric objects take a lock on every change and, in multiprocess mode, check
the pid, look the value up in its file and pack it: seven times a request, a third of what the
server added to a request. Here a request adds to plain numbers held by this app (two apps in
one process never collide). With several worker processes (`PROMETHEUS_MULTIPROC_DIR` set, as
`python -m shipyard_serving` does) every change is also stored in this process's files, in
prometheus_client's multiprocess format (`valuefile.py`: one 8-byte store), so a scrape of any
worker reads every worker's values as they are now, merged by prometheus_client's own
MultiProcessCollector. https://prometheus.github.io/client_python/multiprocess/

prometheus_client itself (~12 ms to import: its exposition module imports an HTTP server) is
imported at the first scrape, not while the server starts. Not thread-safe: the app changes and
renders its metrics on its event loop's thread only.
"""

from __future__ import annotations

import json
import math
import os
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

from shipyard_serving.model import ModelInfo
from shipyard_serving.valuefile import Doubles, ValueFile

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Family(NamedTuple):
    name: str
    help: str
    labels: tuple[str, ...] = ()


REQUESTS = Family("shipyard_requests", "HTTP requests by route and status", ("route", "status"))
LATENCY = Family("shipyard_request_duration_seconds", "Request latency by route", ("route",))
BATCH_ROWS = Family(
    "shipyard_inference_batch_rows", "Rows per ONNX Runtime call (after micro-batching)"
)
INFLIGHT = Family("shipyard_inflight_requests", "Requests being handled")
MODEL_INFO = Family(
    "shipyard_model_info",
    "The model this server serves (value 1)",
    ("name", "version", "onnx_sha256", "git_sha", "fingerprint"),
)


def _le(bound: float) -> str:
    """A bucket's `le` label as prometheus_client writes it (`0.005`, `1.0`, `+Inf`): its
    floatToGoString, which is repr() below 1e6, as every bucket here is."""
    if bound == math.inf:
        return "+Inf"
    assert bound < 1e6, "floatToGoString writes 1e6 and beyond in Go's exponent form"
    return repr(float(bound))


def mmap_key(
    metric: str, sample: str, labels: Sequence[str], values: Sequence[str], help: str
) -> str:
    """A value's key in a multiprocess file: prometheus_client.mmap_dict.mmap_key's JSON."""
    return json.dumps(
        [metric, sample, dict(zip(labels, values, strict=True)), help], sort_keys=True
    )


class _Local:
    """One process's values in a list: what `ValueFile` is without a file (nothing else reads
    them)."""

    def __init__(self) -> None:
        self._list: list[float] = []
        self.doubles: Doubles = self._list
        self._indexes: dict[str, int] = {}

    def index(self, key: str) -> int:
        i = self._indexes.get(key)
        if i is None:
            i = self._indexes[key] = len(self._list)
            self._list.append(0.0)
        return i


class _Store:
    """Where this process keeps its values: files in `directory`, named and keyed as
    prometheus_client's multiprocess mode names them (`counter_<pid>.db`,
    `gauge_livesum_<pid>.db`, …) so that MultiProcessCollector merges them; lists without one."""

    def __init__(self, directory: str | None) -> None:
        pid = os.getpid()
        self.counter, self.histogram, self.livesum, self.max = (
            ValueFile(os.path.join(directory, f"{prefix}_{pid}.db")) if directory else _Local()
            for prefix in ("counter", "histogram", "gauge_livesum", "gauge_max")
        )


Values = ValueFile | _Local


class _Value:
    """One sample: its value is `values.doubles[index]`."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Values, key: str) -> None:
        self._values, self._index = values, values.index(key)

    @property
    def value(self) -> float:
        return self._values.doubles[self._index]

    def set(self, value: float) -> None:
        self._values.doubles[self._index] = value

    def add(self, amount: float) -> None:
        self._values.doubles[self._index] += amount


class _Histogram:
    """One label set's per-bucket counts (not cumulative: what the files hold) and sum."""

    __slots__ = ("_bounds", "_indexes", "_values")

    def __init__(
        self, values: Values, family: Family, bounds: Sequence[float], labels: dict[str, str]
    ) -> None:
        self._bounds = (*map(float, bounds), math.inf)
        name = family.name
        names, label_values = [*labels, "le"], [*labels.values(), ""]
        keys = []
        for bound in self._bounds:
            label_values[-1] = _le(bound)
            keys.append(mmap_key(name, f"{name}_bucket", names, label_values, family.help))
        keys.append(mmap_key(name, f"{name}_sum", [*labels], [*labels.values()], family.help))
        self._values = values
        self._indexes = [values.index(key) for key in keys]  # the buckets', then the sum's

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as Prometheus' `le` means.
        doubles, indexes = self._values.doubles, self._indexes
        doubles[indexes[bisect_left(self._bounds, value)]] += 1
        doubles[indexes[-1]] += value

    @property
    def sum(self) -> float:
        return self._values.doubles[self._indexes[-1]]

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0.0
        for bound, i in zip(self._bounds, self._indexes, strict=False):
            total += self._values.doubles[i]
            out.append((_le(bound), total))
        return out


class Metrics:
    """The server's metrics: requests by route and status, latency by route, rows per inference
    call, requests in flight, and the served model."""

    def __init__(self, info: ModelInfo, directory: str | None = None) -> None:
        directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.directory = directory
        self._store = store = _Store(directory)
        # (route, status) → where its count is, and the route's latency histogram
        self._requests: dict[tuple[str, int], tuple[Values, int, _Histogram]] = {}
        self._latency: dict[str, _Histogram] = {}
        self.batch_rows = _Histogram(store.histogram, BATCH_ROWS, BATCH_BUCKETS, {})
        """Rows per ONNX Runtime call: `batch_rows.observe(rows)`."""
        key = mmap_key(INFLIGHT.name, INFLIGHT.name, [], [], INFLIGHT.help)
        self.inflight = _Value(store.livesum, key)
        """Requests this process is handling now: `inflight.add(±1)` (a scrape sums them)."""
        self.inflight.set(0)
        self._model_labels = [
            info.name,
            info.version,
            info.onnx_sha256,
            info.extra.get("git_sha", ""),
            info.extra.get("fingerprint", ""),
        ]
        name, labels = MODEL_INFO.name, list(MODEL_INFO.labels)
        _Value(store.max, mmap_key(name, name, labels, self._model_labels, MODEL_INFO.help)).set(1)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One answered request: counted by route and status, its latency by route."""
        child = self._requests.get((route, status))
        if child is None:
            child = self._child(route, status)
        values, index, latency = child
        values.doubles[index] += 1
        latency.observe(seconds)

    def _child(self, route: str, status: int) -> tuple[Values, int, _Histogram]:
        name, labels = REQUESTS.name, list(REQUESTS.labels)
        key = mmap_key(name, f"{name}_total", labels, [route, str(status)], REQUESTS.help)
        latency = self._latency.get(route)
        if latency is None:  # every status of a route shares the route's latency histogram
            latency = _Histogram(self._store.histogram, LATENCY, LATENCY_BUCKETS, {"route": route})
            self._latency[route] = latency
        child = self._requests[route, status] = (
            self._store.counter,
            self._store.counter.index(key),
            latency,
        )
        return child

    def render(self) -> bytes:
        """The text exposition; with several processes, the sum over all of them."""
        from prometheus_client.exposition import generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        if self.directory is None:
            return generate_latest(self)
        return generate_latest(MultiProcessCollector(None, self.directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        """This process's values as metric families (prometheus_client's collector protocol)."""
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        requests = CounterMetricFamily(REQUESTS.name, REQUESTS.help, labels=REQUESTS.labels)
        for (route, status), (values, index, _) in self._requests.items():
            requests.add_metric([route, str(status)], values.doubles[index])
        yield requests
        latency = HistogramMetricFamily(LATENCY.name, LATENCY.help, labels=LATENCY.labels)
        for route, histogram in self._latency.items():
            latency.add_metric([route], histogram.cumulative(), histogram.sum)
        yield latency
        rows = HistogramMetricFamily(BATCH_ROWS.name, BATCH_ROWS.help)
        rows.add_metric([], self.batch_rows.cumulative(), self.batch_rows.sum)
        yield rows
        yield GaugeMetricFamily(INFLIGHT.name, INFLIGHT.help, value=self.inflight.value)
        model = GaugeMetricFamily(MODEL_INFO.name, MODEL_INFO.help, labels=MODEL_INFO.labels)
        model.add_metric(self._model_labels, 1)
        yield model
