from pathlib import Path

import numpy as np
import pytest

from shipyard.errors import ProjectError
from shipyard.training import train_model
from tests.support.projects import EXAMPLES, sklearn_project, trained

pytestmark = pytest.mark.unit


def test_sklearn_training_is_deterministic(sklearn_trained, tmp_path: Path) -> None:
    manifest, data, first = sklearn_trained
    again = train_model(EXAMPLES / "digits-sklearn", manifest, data, tmp_path)
    assert np.array_equal(first.reference(), again.reference())
    assert first.metrics["framework_test_accuracy"] >= 0.95


def test_pytorch_training_is_deterministic(cnn_trained, tmp_path: Path) -> None:
    _, _, first = cnn_trained
    _, _, again = trained("digits-cnn", tmp_path)
    assert np.array_equal(first.reference(), again.reference())
    assert first.metrics["framework_test_accuracy"] >= 0.95


def test_trained_model_reloads_from_disk(sklearn_trained) -> None:
    _, data, model = sklearn_trained
    probabilities = model.load().predict_proba(data.x_test)
    assert np.allclose(probabilities, model.reference(), atol=1e-6)


def test_a_training_entrypoint_that_raises_is_named(sklearn_trained, tmp_path: Path) -> None:
    manifest, data, _ = sklearn_trained
    project = sklearn_project(
        tmp_path, train="def train(x, y, *, seed, params):\n    raise MemoryError('GPU gone')\n"
    )
    with pytest.raises(ProjectError) as e:
        train_model(project, manifest, data, tmp_path / "out")
    assert "entrypoints.train (train:train) raised MemoryError: GPU gone" in str(e.value)
    assert "train.py:2" in str(e.value)


def test_returning_something_that_is_not_a_classifier(sklearn_trained, tmp_path: Path) -> None:
    manifest, data, _ = sklearn_trained
    project = sklearn_project(tmp_path, train="def train(x, y, *, seed, params):\n    return 42\n")
    with pytest.raises(ProjectError, match="returned int, which has no predict_proba"):
        train_model(project, manifest, data, tmp_path / "out")
