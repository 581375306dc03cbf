"""Stage `source`: check out the exact commit (or working tree) and read its manifest."""

from __future__ import annotations

from prefect import task

from shipyard.manifest import Manifest, load_manifest
from shipyard.settings import Settings
from shipyard.source import Checkout
from shipyard.source import checkout as resolve


@task(name="source")
def checkout(
    source: str, ref: str | None, subdir: str | None, settings: Settings
) -> tuple[Checkout, Manifest]:
    """Resolve SOURCE to an exact tree and validate its manifest."""
    tree = resolve(source, ref, subdir, settings.checkouts_dir)
    return tree, load_manifest(tree.project_dir)
