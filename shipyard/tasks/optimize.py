"""Stage `optimize`: derive the ONNX variants (`optimized`, `int8`) and measure every one."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from shipyard.gates import Measurement
from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.settings import Settings
from shipyard.training import TrainedModel


@task(name="optimize", persist_result=True)
def optimize(
    fp32: Path,
    trained: TrainedModel,
    manifest: Manifest,
    data: Dataset,
    fingerprint: str,
    settings: Settings,
) -> list[Measurement]:
    """Build and measure every variant (fp32 included)."""
    from shipyard.optimize import build_variants, measure  # ONNX and ONNX Runtime

    paths = build_variants(fp32, manifest, data, settings.builds_dir / fingerprint / "onnx")
    reference = trained.reference()
    return [measure(v, p, data, reference, settings) for v, p in paths.items()]
