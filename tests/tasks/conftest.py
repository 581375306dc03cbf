"""Stage fixtures: each reference project trained once per module, from the plain functions."""

from __future__ import annotations

import pytest

from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.training import TrainedModel
from tests.support.projects import trained


@pytest.fixture(scope="module")
def sklearn_trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Manifest, Dataset, TrainedModel]:
    return trained("digits-sklearn", tmp_path_factory.mktemp("sk"))


@pytest.fixture(scope="module")
def cnn_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Dataset, TrainedModel]:
    return trained("digits-cnn", tmp_path_factory.mktemp("cnn"))
