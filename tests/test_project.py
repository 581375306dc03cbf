"""The data contract: arrays that do not match the manifest are refused with every reason."""

from pathlib import Path

import numpy as np
import pytest

from shipyard.errors import DataError, ProjectError
from shipyard.manifest import load_manifest
from shipyard.project import check_dataset, load_dataset
from tests.support.projects import sklearn_project

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits-sklearn"


def arrays(n: int = 20, features: int = 64) -> dict:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.random((n, features)),
        "y_train": np.arange(n) % 10,
        "x_test": rng.random((n, features)),
        "y_test": np.arange(n) % 10,
    }


def test_reference_data_loads_as_float32_and_int64() -> None:
    data = load_dataset(EXAMPLE, load_manifest(EXAMPLE))
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.shape[1:] == (64,) and len(data.x_test) == 360
    assert data.sha256() == load_dataset(EXAMPLE, load_manifest(EXAMPLE)).sha256()


def test_nan_and_wrong_shape_are_both_reported() -> None:
    raw = arrays()
    raw["x_train"][3, 5] = np.nan
    raw["x_test"] = raw["x_test"][:, :60]
    with pytest.raises(DataError) as e:
        check_dataset(raw, load_manifest(EXAMPLE))
    message = str(e.value)
    assert "x_train: 1 NaN or infinite value(s)" in message
    assert "x_test: shape (20, 60), expected (n, 64)" in message


def test_labels_outside_the_manifest_are_refused() -> None:
    raw = arrays()
    raw["y_test"] = raw["y_test"] + 5
    with pytest.raises(DataError, match=r"y_test: labels must be integers in \[0, 10\)"):
        check_dataset(raw, load_manifest(EXAMPLE))


def test_data_entrypoint_that_raises_is_named(tmp_path: Path) -> None:
    project = sklearn_project(
        tmp_path, ("shipyard.yaml",), data="def load():\n    raise OSError('bucket gone')\n"
    )
    with pytest.raises(
        ProjectError, match=r"entrypoints.data \(data:load\) raised OSError: bucket gone"
    ):
        load_dataset(project, load_manifest(project))


def test_data_entrypoint_returning_the_wrong_thing(tmp_path: Path) -> None:
    project = sklearn_project(
        tmp_path, ("shipyard.yaml",), data="def load():\n    return {'x': 1}\n"
    )
    with pytest.raises(DataError, match="must return a mapping with keys"):
        load_dataset(project, load_manifest(project))


def test_missing_entrypoint_module_says_where_it_looked(tmp_path: Path) -> None:
    project = sklearn_project(tmp_path, ("shipyard.yaml",))
    with pytest.raises(ProjectError, match=r"module 'data' not found \(expected .*data.py\)"):
        load_dataset(project, load_manifest(project))


def test_ragged_rows_and_empty_labels_are_reported_not_raised() -> None:
    raw = arrays()
    raw["x_train"] = [[0.0] * 64, [0.0] * 63]
    raw["y_test"] = np.array([], dtype=np.int64)
    with pytest.raises(DataError) as e:
        check_dataset(raw, load_manifest(EXAMPLE))
    assert "x_train/y_train: not a rectangular array" in str(e.value)
    assert "y_test: shape (0,), expected (20,)" in str(e.value)
