"""Stage `data`: call the project's data entrypoint, check the arrays, hash them."""

from __future__ import annotations

from prefect import task

from shipyard.manifest import Manifest
from shipyard.project import Dataset, load_dataset
from shipyard.settings import Settings
from shipyard.source import Checkout


@task(name="data")
def load_data(tree: Checkout, manifest: Manifest, settings: Settings) -> tuple[Dataset, str]:
    """The checked dataset and its sha256 (part of the fingerprint)."""
    data = load_dataset(tree.project_dir, manifest)
    return data, data.sha256()
