"""Stage `export`: the trained model, preprocessing included, as one checked ONNX graph."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from shipyard.manifest import Manifest
from shipyard.sandbox import stages
from shipyard.settings import Settings
from shipyard.source import Checkout
from shipyard.training import TrainedModel


@task(name="export", persist_result=True)
def export(
    trained: TrainedModel,
    tree: Checkout,
    manifest: Manifest,
    fingerprint: str,
    settings: Settings,
    ahead: Path | None = None,
) -> Path:
    """The fp32 ONNX graph every other variant derives from (exported in the sandbox: a PyTorch
    module's `forward` is the project's code; by the data stage's sandbox when `ahead` holds it)."""
    return stages.export(
        trained,
        tree.project_dir,
        manifest,
        settings.builds_dir / fingerprint / "onnx",
        settings,
        get_run_logger().info,
        granted=tree.network,
        ahead=ahead,
    )
