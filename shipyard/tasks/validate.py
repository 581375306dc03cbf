"""Stage `validate`: every gate on every variant, the chosen variant, and a report of both."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_table_artifact

from shipyard import registry, report
from shipyard.errors import GateError
from shipyard.gates import Measurement, Verdict, decide
from shipyard.manifest import Manifest
from shipyard.settings import Settings

if TYPE_CHECKING:
    from mlflow.entities import Metric


@task(name="validate")
def validate(
    measurements: list[Measurement],
    manifest: Manifest,
    fingerprint: str,
    run_id: str,
    settings: Settings,
) -> Verdict:
    """Decide the release against the manifest's gates and the current champion.

    The report is logged and published whatever the outcome; a failed gate then fails the run.
    """
    mlflow = registry.client(settings)
    champion = registry.champion(mlflow, manifest.name)
    verdict = decide(measurements, manifest.gates, champion, manifest.optimize.prefer)
    out_dir = settings.builds_dir / fingerprint / "report"
    for path in report.write_report(measurements, verdict, manifest, out_dir):
        mlflow.log_artifact(run_id, str(path), "report")
    # One request for every variant's metrics, not one per metric.
    mlflow.log_batch(run_id, metrics=_metrics(measurements, int(time.time() * 1000)))
    create_table_artifact(
        table=report.variant_rows(measurements, verdict),
        key=report.artifact_key(manifest.name, "variants"),
        description=f"{manifest.name}: ONNX variants, measurements and gate verdicts "
        f"(chosen: {verdict.chosen or 'none'})",
    )
    if not verdict.passed:
        raise GateError(verdict.failures)
    return verdict


def _metrics(measurements: list[Measurement], timestamp_ms: int) -> list[Metric]:
    """Each variant's measurements as MLflow metrics named `<variant>.<measurement>`."""
    from mlflow.entities import Metric

    return [
        Metric(f"{m.variant}.{key}", value, timestamp_ms, 0)
        for m in measurements
        for key, value in {
            "accuracy": m.accuracy,
            "size_bytes": m.size_bytes,
            "p50_b1_ms": m.batch1.p50_ms,
            "p99_b1_ms": m.batch1.p99_ms,
            "p50_b32_ms": m.batch32.p50_ms,
            "p99_b32_ms": m.batch32.p99_ms,
            "batch_max_dprob": m.batch_invariance.max_prob_delta,
            "batch_label_changes": m.batch_invariance.label_changes,
        }.items()
    ]
