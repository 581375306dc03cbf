"""What a scrape reads: every series with its name, type and labels, from one process or summed
over the worker processes that share a metrics directory."""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import mmap_key as prometheus_key
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from shipyard_serving import metrics as served
from shipyard_serving.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics
from shipyard_serving.model import ModelInfo

pytestmark = pytest.mark.unit

INFO = ModelInfo("digits", "7", "pixels", (64,), None, "0" * 64, {"git_sha": "a" * 40})
ANSWERS = [
    ("/invocations", 200, 0.0003),
    ("/invocations", 200, 0.003),
    ("/invocations", 400, 0.001),
    ("/v2/models/{name}/infer", 200, 3.0),
    ("/metrics", 200, 0.0005),
]
BATCHES = (1, 3, 32, 2000)


def record(metrics: Metrics) -> None:
    for route, status, seconds in ANSWERS:
        metrics.observe(route, status, seconds)
    for rows in BATCHES:
        metrics.batch_rows.observe(rows)
    metrics.inflight.add(1)


def record_in(directory: str) -> None:
    """A worker process: record into the shared directory and exit (still counting one request
    in flight: a dead worker's gauge stays in its file, as prometheus_client's would)."""
    record(Metrics(INFO, directory))


def scrape(metrics: Metrics) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """Family types by name, and every sample's value by name and labels."""
    types, values = {}, {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        types[family.name] = family.type
        for sample in family.samples:
            values[sample.name, frozenset(sample.labels.items())] = sample.value
    return types, values


def value(values: dict, metric: str, /, **labels: str) -> float:
    return values[metric, frozenset(labels.items())]


def test_a_scrape_has_every_series_with_its_type_and_labels() -> None:
    metrics = Metrics(INFO)
    record(metrics)
    types, values = scrape(metrics)
    assert types == {
        "shipyard_requests": "counter",
        "shipyard_request_duration_seconds": "histogram",
        "shipyard_inference_batch_rows": "histogram",
        "shipyard_inflight_requests": "gauge",
        "shipyard_model_info": "gauge",
    }
    assert value(values, "shipyard_requests_total", route="/invocations", status="200") == 2
    assert value(values, "shipyard_requests_total", route="/invocations", status="400") == 1
    latency = "shipyard_request_duration_seconds"
    assert value(values, f"{latency}_bucket", route="/invocations", le="0.0005") == 1
    assert value(values, f"{latency}_bucket", route="/invocations", le="0.0025") == 2
    assert value(values, f"{latency}_bucket", route="/invocations", le="+Inf") == 3
    assert value(values, f"{latency}_count", route="/invocations") == 3
    assert value(values, f"{latency}_sum", route="/invocations") == pytest.approx(0.0043)
    assert value(values, f"{latency}_bucket", route="/v2/models/{name}/infer", le="2.5") == 0
    rows = "shipyard_inference_batch_rows"
    assert value(values, f"{rows}_bucket", le="1.0") == 1
    assert value(values, f"{rows}_bucket", le="1024.0") == 3
    assert value(values, f"{rows}_bucket", le="+Inf") == 4
    assert value(values, f"{rows}_sum") == sum(BATCHES)
    assert value(values, "shipyard_inflight_requests") == 1
    model = {"name": "digits", "version": "7", "onnx_sha256": "0" * 64, "fingerprint": ""}
    assert value(values, "shipyard_model_info", git_sha="a" * 40, **model) == 1
    assert not any(name.endswith("_created") for name, _ in values)


def test_one_process_reads_the_same_with_or_without_a_metrics_directory(tmp_path: Path) -> None:
    alone, shared = Metrics(INFO), Metrics(INFO, str(tmp_path))
    record(alone)
    record(shared)
    assert scrape(shared) == scrape(alone)


def test_a_scrape_of_any_process_sums_every_worker_in_the_directory(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")  # as uvicorn starts its workers
    workers = [spawn.Process(target=record_in, args=(str(tmp_path),)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    _, values = scrape(Metrics(INFO, str(tmp_path)))  # a third process, which counted nothing
    assert value(values, "shipyard_requests_total", route="/invocations", status="200") == 4
    assert value(values, "shipyard_request_duration_seconds_count", route="/invocations") == 6
    assert value(values, "shipyard_inference_batch_rows_sum") == 2 * sum(BATCHES)
    assert value(values, "shipyard_inference_batch_rows_bucket", le="+Inf") == 8
    assert value(values, "shipyard_inflight_requests") == 2
    assert sum(name == "shipyard_model_info" for name, _ in values) == 1


def test_keys_and_bucket_labels_are_written_as_prometheus_client_writes_them() -> None:
    for bound in (*LATENCY_BUCKETS, *BATCH_BUCKETS, math.inf):
        assert served._le(bound) == floatToGoString(bound)
    args = ("shipyard_requests", "shipyard_requests_total", ["route", "status"], ["/x", "200"], "h")
    assert served.mmap_key(*args) == prometheus_key(*args)
