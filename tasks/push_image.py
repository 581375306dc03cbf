"""Stage `push_image`: push the smoke-tested image; record its digest on the model version."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task

from shipyard import registry, stack
from shipyard.image.push import push_with_retries
from shipyard.settings import Settings
from tasks.build_image import ReleaseImage


@dataclass(frozen=True)
class PushedImage:
    reference: str
    digest: str

    @property
    def pinned(self) -> str:
        """repository@digest: what deploys pull."""
        return f"{self.reference.rpartition(':')[0]}@{self.digest}"


@task(name="push_image")
def push_image(
    image: ReleaseImage, model: str, version: str, run_id: str, settings: Settings
) -> PushedImage:
    """Push with retries; tag the MLflow version with `image` and `image_digest`."""
    client = stack.engine(settings)
    credentials = stack.registry_credentials(settings)
    digest = push_with_retries(client, image.reference, credentials, settings.push_attempts)
    pushed = PushedImage(image.reference, digest)
    mlflow = registry.client(settings)
    mlflow.set_model_version_tag(model, version, "image", pushed.reference)
    mlflow.set_model_version_tag(model, version, "image_digest", digest)
    mlflow.log_artifact(run_id, str(image.sbom), "image")
    mlflow.log_artifact(run_id, str(image.golden), "image")
    mlflow.log_artifact(run_id, str(image.metadata), "image")
    return pushed
