"""Stage `register`: one MLflow model version per fingerprint, aliased `candidate`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task
from prefect.runtime import flow_run

from shipyard.gates import Measurement, Verdict
from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.settings import Settings
from shipyard.source import Checkout

if TYPE_CHECKING:
    from shipyard.register import RegisteredVersion


@task(name="register")
def register(
    manifest: Manifest,
    tree: Checkout,
    data: Dataset,
    data_hash: str,
    measurements: list[Measurement],
    verdict: Verdict,
    fingerprint: str,
    run_id: str,
    settings: Settings,
) -> RegisteredVersion:
    """Register the chosen variant with its variants and report; idempotent per fingerprint."""
    from shipyard.register import register_release  # MLflow's ONNX flavor, ONNX

    return register_release(
        manifest,
        tree,
        data,
        data_hash,
        measurements,
        verdict,
        fingerprint,
        run_id,
        settings,
        flow_run.get_id(),
    )
