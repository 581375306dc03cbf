"""Stage `train`: run the project's training entrypoint deterministically (in the sandbox), log
it to MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from shipyard import registry
from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.sandbox import stages
from shipyard.settings import Settings
from shipyard.source import Checkout
from shipyard.training import TrainedModel


@task(name="train", persist_result=True)
def train(
    tree: Checkout,
    manifest: Manifest,
    data: Dataset,
    fingerprint: str,
    run_id: str,
    settings: Settings,
    ahead: Path | None = None,
) -> TrainedModel:
    """Train the model and log its parameters and metrics to the release's MLflow run.

    `ahead`: where the data stage's sandbox may have trained it already (`sandbox.stages`)."""
    trained = stages.train(
        tree.project_dir,
        manifest,
        data,
        settings.builds_dir / fingerprint / "train",
        settings,
        get_run_logger().info,
        granted=tree.network,
        ahead=ahead,
    )
    mlflow = registry.client(settings)
    params = {
        "framework": manifest.framework.value,
        "seed": manifest.seed,
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        **manifest.params,
    }
    for key, value in params.items():
        mlflow.log_param(run_id, key, value)
    for key, value in trained.metrics.items():
        mlflow.log_metric(run_id, key, value)
    return trained
