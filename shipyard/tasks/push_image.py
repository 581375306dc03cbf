"""Stage `push_image`: push the smoke-tested image; record its digest on the model version."""

from __future__ import annotations

from prefect import task

from shipyard.image.push import PushedImage, push_release
from shipyard.image.release import ReleaseImage
from shipyard.settings import Settings


@task(name="push_image")
def push_image(
    image: ReleaseImage, model: str, version: str, run_id: str, settings: Settings
) -> PushedImage:
    """Push with retries; tag the MLflow version with `image` and `image_digest`."""
    return push_release(image, model, version, run_id, settings)
