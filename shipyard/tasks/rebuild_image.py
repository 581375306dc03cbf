"""Stage `rebuild_image`: a registered version's image again, from its recorded ONNX file, on
the current base image and locked dependencies; smoke-tested and pushed, never retrained."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

from shipyard.settings import Settings

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from shipyard.image.rebuild import RebuiltImage


@task(name="rebuild_image")
def rebuild_image(version: ModelVersion, settings: Settings) -> RebuiltImage:
    """Build, smoke-test and push `version`'s image on today's base; return its digest."""
    from shipyard.image.rebuild import rebuild

    return rebuild(version, settings)
