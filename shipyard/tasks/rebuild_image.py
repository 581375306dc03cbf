"""Stage `rebuild_image`: a registered version's image again, from its recorded ONNX file, on
the current base image and locked dependencies; smoke-tested and pushed, never retrained."""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion
from prefect import task

from shipyard.image.rebuild import RebuiltImage, rebuild
from shipyard.settings import Settings


@task(name="rebuild_image")
def rebuild_image(version: ModelVersion, settings: Settings) -> RebuiltImage:
    """Build, smoke-test and push `version`'s image on today's base; return its digest."""
    return rebuild(version, settings)
