"""Stage `data`: call the project's data entrypoint (in the sandbox), check the arrays, hash them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from prefect import get_run_logger, task

from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.sandbox import stages
from shipyard.settings import Settings
from shipyard.source import Checkout


@task(name="data")
def load_data(
    tree: Checkout,
    manifest: Manifest,
    settings: Settings,
    fingerprint: str | None = None,
    ahead: Path | None = None,
) -> tuple[Dataset, str]:
    """The checked dataset and its sha256 (part of the release fingerprint).

    `fingerprint` is that of the stage's own inputs (`shipyard.fingerprint.data_inputs`), when
    they alone determine the data: the key the flow caches the stage by. With `ahead`, its
    sandbox also trains and exports, into `ahead`, for those stages to adopt.
    """
    settings.builds_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".data-", dir=settings.builds_dir))
    try:
        data = stages.data(
            tree.project_dir,
            manifest,
            work,
            settings,
            get_run_logger().info,
            granted=tree.network,
            ahead=ahead,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return data, data.sha256()
