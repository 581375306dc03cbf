"""Stage fixtures: each reference project trained once per module, from the plain functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.manifest import Manifest, load_manifest
from shipyard.project import Dataset, load_dataset
from tasks.train import TrainedModel, train_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def trained(name: str, out: Path) -> tuple[Manifest, Dataset, TrainedModel]:
    project = EXAMPLES / name
    manifest = load_manifest(project)
    data = load_dataset(project, manifest)
    return manifest, data, train_model(project, manifest, data, out)


@pytest.fixture(scope="module")
def sklearn_trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Manifest, Dataset, TrainedModel]:
    return trained("digits-sklearn", tmp_path_factory.mktemp("sk"))


@pytest.fixture(scope="module")
def cnn_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Dataset, TrainedModel]:
    return trained("digits-cnn", tmp_path_factory.mktemp("cnn"))
