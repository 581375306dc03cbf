"""Stage `build_image`: the serving image of the chosen variant, built reproducibly, smoke-tested."""

from __future__ import annotations

from prefect import task

from shipyard.gates import Measurement
from shipyard.image.release import ReleaseImage, build_release_image
from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.settings import Settings
from shipyard.source import Checkout


@task(name="build_image")
def build_image(
    manifest: Manifest,
    tree: Checkout,
    chosen: Measurement,
    data: Dataset,
    fingerprint: str,
    version: str,
    settings: Settings,
) -> ReleaseImage:
    """Build the image, normalize it, and smoke-test it against the validated ONNX model."""
    return build_release_image(manifest, tree, chosen, data, fingerprint, version, settings)
