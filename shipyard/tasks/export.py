"""Stage `export`: the trained model, preprocessing included, as one checked ONNX graph."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from shipyard.export import export_onnx
from shipyard.manifest import Manifest
from shipyard.settings import Settings
from shipyard.training import TrainedModel


@task(name="export", persist_result=True)
def export(trained: TrainedModel, manifest: Manifest, fingerprint: str, settings: Settings) -> Path:
    """The fp32 ONNX graph every other variant derives from."""
    return export_onnx(trained, manifest, settings.builds_dir / fingerprint / "onnx")
