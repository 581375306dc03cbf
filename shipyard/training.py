"""The `train` stage's logic: run the project's training entrypoint deterministically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from shipyard.frameworks import adapter_for
from shipyard.manifest import Manifest
from shipyard.project import Dataset, call_entrypoint, load_entrypoint


@dataclass(frozen=True)
class TrainedModel:
    """A trained framework model on disk, with its predictions on the test set."""

    model_path: Path
    reference_path: Path
    """Framework probabilities on x_test: what the ONNX variants must reproduce."""
    metrics: dict[str, float]

    def load(self) -> Any:
        with self.model_path.open("rb") as f:
            return cloudpickle.load(f)

    def reference(self) -> np.ndarray:
        return np.asarray(np.load(self.reference_path))


def train_model(
    project_dir: Path, manifest: Manifest, data: Dataset, out_dir: Path
) -> TrainedModel:
    """Train with fixed seeds and deterministic algorithms; write the model into `out_dir`."""
    adapter = adapter_for(manifest.framework)
    field = f"entrypoints.train ({manifest.entrypoints.train})"
    func = load_entrypoint(project_dir, manifest.entrypoints.train, field)
    start = time.perf_counter()
    with adapter.deterministic(manifest.seed):
        model = call_entrypoint(
            func,
            field,
            data.x_train,
            data.y_train,
            seed=manifest.seed,
            params=dict(manifest.params),
        )
    seconds = time.perf_counter() - start
    adapter.check_model(model, manifest)
    train_probs = adapter.predict_proba(model, data.x_train)
    test_probs = adapter.predict_proba(model, data.x_test)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.pkl"
    with model_path.open("wb") as f:
        cloudpickle.dump(model, f)
    reference_path = out_dir / "reference.npy"
    np.save(reference_path, test_probs)
    metrics = {
        "train_accuracy": float((train_probs.argmax(1) == data.y_train).mean()),
        "framework_test_accuracy": float((test_probs.argmax(1) == data.y_test).mean()),
        "train_seconds": round(seconds, 3),
    }
    return TrainedModel(model_path, reference_path, metrics)
