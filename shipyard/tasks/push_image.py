"""Stage `push_image`: push the smoke-tested image; record its digest on the model version."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

from shipyard.settings import Settings

if TYPE_CHECKING:
    from shipyard.image.push import PushedImage
    from shipyard.image.release import ReleaseImage


@task(name="push_image")
def push_image(
    image: ReleaseImage, model: str, version: str, run_id: str, settings: Settings
) -> PushedImage:
    """Push with retries; tag the MLflow version with `image` and `image_digest`."""
    from shipyard.image.push import push_release

    return push_release(image, model, version, run_id, settings)
