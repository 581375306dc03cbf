"""The served model: an ONNX graph, its metadata, and one ONNX Runtime session."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

OUTPUTS = ["label", "probabilities"]
"""The outputs of a Shipyard release graph, in this order (checked at load)."""

METADATA = "shipyard.json"
"""Written next to model.onnx by a release: name, version, labels, git sha, fingerprint."""


class ModelLoadError(Exception):
    """The model directory cannot be served."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_name: str
    feature_shape: tuple[int, ...]
    labels: list[str] | None
    onnx_sha256: str
    extra: dict[str, str] = field(default_factory=dict)
    """git_sha, fingerprint, variant… as recorded by the release."""


class ServedModel:
    """Loads `model.onnx` from a bundle directory and predicts `(label, probabilities)`."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        path = model_dir / "model.onnx"
        if not path.is_file():
            raise ModelLoadError(
                f"No model.onnx in {model_dir}: serve a release bundle or an MLflow ONNX model "
                "directory (or a models:/ URI through `shipyard serve`)."
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {e}") from e
        inputs, outputs = self.session.get_inputs(), [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or outputs[:2] != OUTPUTS:
            raise ModelLoadError(
                f"{path} has inputs {[i.name for i in inputs]} and outputs {outputs}; expected one "
                "input and outputs ['label', 'probabilities'] (a Shipyard release graph)."
            )
        meta = _metadata(model_dir)
        shape = inputs[0].shape
        if not all(isinstance(d, int) for d in shape[1:]):
            raise ModelLoadError(
                f"{path} input {inputs[0].name!r} has shape {shape}; only the first (batch) axis may "
                "be symbolic."
            )
        self.info = ModelInfo(
            name=str(meta.get("name") or model_dir.resolve().name),
            version=str(meta.get("version") or "1"),
            input_name=inputs[0].name,
            feature_shape=tuple(int(d) for d in shape[1:]),
            labels=meta.get("labels"),
            onnx_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            extra={
                k: str(v)
                for k, v in meta.items()
                if k in ("git_sha", "fingerprint", "variant", "source", "commit_time")
            },
        )
        self.n_classes = int(self.session.get_outputs()[1].shape[1] or 0) or None
        self._feed = self.info.input_name
        self._names = dict(enumerate(self.info.labels or ()))
        # One warm-up call so the first request does not pay for allocation.
        self.predict(np.zeros((1, *self.info.feature_shape), dtype=np.float32))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Named, the outputs need no list built per call (run(None) builds every output's name),
        # and outputs past the two the server answers with are not computed.
        labels, probabilities = self.session.run(OUTPUTS, {self._feed: x})
        return labels, probabilities

    def label_names(self, labels: np.ndarray) -> list[str] | None:
        """Each label's name from the metadata, or the label itself where it names none."""
        names = self._names
        if not names:
            return None
        values = labels.tolist()
        try:
            return list(map(names.__getitem__, values))  # no bytecode per row
        except KeyError:
            return [names.get(i, str(i)) for i in values]


def _metadata(model_dir: Path) -> dict[str, Any]:
    path = model_dir / METADATA
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data
