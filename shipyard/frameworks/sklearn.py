"""scikit-learn: the whole fitted `Pipeline` (preprocessing included) is exported by skl2onnx."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import ExportError, ProjectError
from shipyard.frameworks import PACKAGES
from shipyard.manifest import Framework, Manifest


class SklearnAdapter:
    packages: tuple[str, ...] = PACKAGES[Framework.SKLEARN]

    def check_model(self, model: Any, manifest: Manifest) -> None:
        if not hasattr(model, "predict_proba"):
            raise ProjectError(
                f"entrypoints.train returned {type(model).__name__}, which has no predict_proba: "
                "return a fitted scikit-learn classifier or Pipeline ending in one."
            )
        classes = getattr(model, "classes_", None)
        expected = np.arange(len(manifest.labels))
        if classes is None or not np.array_equal(np.asarray(classes), expected):
            raise ProjectError(
                f"The classifier was fit on classes {None if classes is None else list(classes)}, "
                f"but the manifest lists {len(manifest.labels)} labels: fit on y in "
                f"0..{len(manifest.labels) - 1}, every class present."
            )

    def predict_proba(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_proba(x), dtype=np.float32)

    def export(self, model: Any, manifest: Manifest, out: Path, opset: int) -> Path:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        try:
            proto = to_onnx(
                model,
                initial_types=[(manifest.input.name, FloatTensorType(list(manifest.input.shape)))],
                options={"zipmap": False},  # a plain probability tensor, not a list of maps
                target_opset=opset,
            )
        except Exception as e:
            raise ExportError(
                f"skl2onnx cannot convert {type(model).__name__}: {type(e).__name__}: {e}. "
                "Use estimators skl2onnx supports (see its supported-operators list) or "
                "register a converter for your custom step."
            ) from e
        out.write_bytes(proto.SerializeToString())
        return out

    @contextmanager
    def deterministic(self, seed: int) -> Iterator[None]:
        random.seed(seed)
        np.random.seed(seed)
        yield
