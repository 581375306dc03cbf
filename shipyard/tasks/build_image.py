"""Stage `build_image`: the serving image of the chosen variant, built reproducibly, smoke-tested."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

from shipyard.gates import Measurement
from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.settings import Settings
from shipyard.source import Checkout

if TYPE_CHECKING:
    from shipyard.image.release import ReleaseImage


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
    from shipyard.image.release import build_release_image  # the engine's client, SBOM tools

    return build_release_image(manifest, tree, chosen, data, fingerprint, version, settings)
