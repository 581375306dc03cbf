"""Framework adapters: what differs between scikit-learn and PyTorch models, behind one protocol.

Each adapter checks what a training entrypoint returned, predicts probabilities with the
framework itself (the parity reference), exports the whole inference pipeline to ONNX with
the served contract (`label` int64 [N], `probabilities` float32 [N, n_labels]), and seeds
training so it is deterministic.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shipyard.manifest import Framework, Manifest

OUTPUTS = ("label", "probabilities")

PACKAGES: dict[Framework, tuple[str, ...]] = {
    Framework.SKLEARN: ("numpy", "scipy", "scikit-learn", "skl2onnx", "onnx"),
    Framework.PYTORCH: ("numpy", "torch", "onnx", "onnxscript"),
}
"""Per framework, the distributions whose versions change what training and export produce
(part of the fingerprint): readable without importing the framework."""


class Adapter(Protocol):
    packages: tuple[str, ...]
    """Distributions whose versions change what training and export produce."""

    def check_model(self, model: Any, manifest: Manifest) -> None: ...

    def predict_proba(self, model: Any, x: np.ndarray) -> np.ndarray: ...

    def export(self, model: Any, manifest: Manifest, out: Path, opset: int) -> Path: ...

    def deterministic(self, seed: int) -> AbstractContextManager[None]: ...


def adapter_for(framework: Framework) -> Adapter:
    """The adapter for a framework; PyTorch is imported only when asked for."""
    if framework is Framework.SKLEARN:
        from shipyard.frameworks.sklearn import SklearnAdapter

        return SklearnAdapter()
    from shipyard.frameworks.pytorch import PytorchAdapter

    return PytorchAdapter()
