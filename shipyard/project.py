"""Load a model project's entrypoints and check the data they return against the manifest."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import numpy as np

from shipyard.errors import DataError, ProjectError
from shipyard.manifest import Manifest

DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays, checked against the manifest's input signature and labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def sha256(self) -> str:
        """A hash of the arrays' shapes, dtypes and bytes: the data part of the fingerprint."""
        digest = hashlib.sha256()
        for key in DATA_KEYS:
            array = np.ascontiguousarray(getattr(self, key))
            digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


def _module(project_dir: Path, module_name: str, field: str) -> ModuleType:
    path = project_dir.joinpath(*module_name.split(".")).with_suffix(".py")
    if not path.is_file():
        raise ProjectError(
            f"{field}: module {module_name!r} not found (expected {path}). "
            "Entrypoints are `module:function` with the module relative to the project directory."
        )
    # A name unique to this tree, so two projects (or two commits) never share a module.
    # Named by path and content: two projects, two commits or an edited working tree in one
    # long-lived process (a served deployment) never share a module.
    key = hashlib.sha256(str(path).encode() + b"\0" + path.read_bytes()).hexdigest()[:12]
    unique = f"_shipyard_project_{key}_{path.stem}"
    if unique in sys.modules:
        return sys.modules[unique]
    spec = importlib.util.spec_from_file_location(unique, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    sys.path.insert(0, str(project_dir))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[unique]
        raise ProjectError(f"{field}: importing {path} raised {_last_frame(e)}") from e
    finally:
        sys.path.remove(str(project_dir))
    # Models defined in the project pickle by value: a cached result loads in any process.
    cloudpickle.register_pickle_by_value(module)
    return module


def load_entrypoint(project_dir: Path, spec: str, field: str) -> Callable[..., Any]:
    """Import `module:function` from the project directory; `field` names it in errors."""
    module_name, func_name = spec.split(":")
    module = _module(project_dir, module_name, field)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ProjectError(f"{field}: {module_name!r} has no function {func_name!r} ({spec}).")
    return func  # type: ignore[no-any-return]


def _last_frame(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def call_entrypoint(func: Callable[..., Any], field: str, *args: Any, **kwargs: Any) -> Any:
    """Call a project entrypoint, wrapping whatever it raises in a `ProjectError`."""
    try:
        return func(*args, **kwargs)
    except Exception as e:
        raise ProjectError(f"{field} raised {_last_frame(e)}") from e


def load_dataset(project_dir: Path, manifest: Manifest) -> Dataset:
    """Call the data entrypoint and check every array; all problems are reported at once."""
    field = f"entrypoints.data ({manifest.entrypoints.data})"
    func = load_entrypoint(project_dir, manifest.entrypoints.data, field)
    raw = call_entrypoint(func, field)
    if not isinstance(raw, Mapping) or set(raw) != set(DATA_KEYS):
        got = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
        raise DataError(f"{field} must return a mapping with keys {list(DATA_KEYS)}, got {got}.")
    return check_dataset(raw, manifest)


def check_dataset(raw: Mapping[str, Any], manifest: Manifest) -> Dataset:
    """Coerce arrays to the served dtypes and check shapes, values and labels."""
    problems: list[str] = []
    features = manifest.input.feature_shape
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        try:
            x = np.asarray(raw[f"x_{split}"])
            y = np.asarray(raw[f"y_{split}"])
        except ValueError as e:  # ragged rows
            problems.append(f"x_{split}/y_{split}: not a rectangular array ({e})")
            continue
        if x.ndim < 1 or x.shape[1:] != features:
            problems.append(
                f"x_{split}: shape {x.shape}, expected (n, {', '.join(map(str, features))}) "
                f"from input.shape {manifest.input.shape}"
            )
        elif not np.issubdtype(x.dtype, np.number):
            problems.append(f"x_{split}: dtype {x.dtype} is not numeric")
        elif not np.isfinite(x).all():
            bad = int(np.size(x) - np.isfinite(x).sum())
            problems.append(f"x_{split}: {bad} NaN or infinite value(s); clean or impute them")
        if y.ndim != 1 or len(y) != len(x):
            problems.append(f"y_{split}: shape {y.shape}, expected ({len(x)},) to match x_{split}")
        elif len(y) and (
            not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(manifest.labels)
        ):
            problems.append(
                f"y_{split}: labels must be integers in [0, {len(manifest.labels)}) indexing "
                f"`labels`, got dtype {y.dtype} and values {sorted(set(y.tolist()))[:12]}"
            )
        if len(x) == 0:
            problems.append(f"x_{split}: empty")
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = y
    if problems:
        raise DataError(
            "Data does not match the manifest:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return Dataset(
        x_train=arrays["x_train"].astype(np.float32),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"].astype(np.float32),
        y_test=arrays["y_test"].astype(np.int64),
    )
