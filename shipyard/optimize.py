"""The `optimize` stage's logic: derive the ONNX variants and measure each one the same way.

- `optimized`: ONNX Runtime's offline graph optimization (constant folding, node fusion,
  removal of what inference does not need), saved so the server loads it ready.
- `int8`: quantized weights; dynamic quantization, or static QDQ calibrated on training data.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from shipyard.gates import Measurement
from shipyard.inference import latency, predict, session
from shipyard.manifest import Manifest, Variant
from shipyard.project import Dataset
from shipyard.settings import Settings


def optimize_graph(fp32: Path, out: Path) -> Path:
    """Offline graph optimization at the extended level.

    Not `ORT_ENABLE_ALL`: its layout transforms are specific to the machine that runs them.
    https://onnxruntime.ai/docs/performance/model-optimizations/graph-optimizations.html
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    return out


class _Calibration(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32) -> None:
        self._batches = iter([{input_name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(fp32: Path, out: Path, manifest: Manifest, calibration: np.ndarray) -> Path:
    """INT8 weights: dynamic, or static QDQ calibrated on `calibration` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        if manifest.optimize.quantization == "dynamic":
            # skl2onnx graphs hold ai.onnx.ml ops that shape inference cannot type.
            quantize_dynamic(
                prepared,
                out,
                weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        else:
            quantize_static(
                prepared,
                out,
                _Calibration(manifest.input.name, calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    return out


def build_variants(
    fp32: Path, manifest: Manifest, data: Dataset, out_dir: Path
) -> dict[Variant, Path]:
    """Every variant the manifest asks for, written into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {Variant.FP32: fp32}
    if Variant.OPTIMIZED in manifest.optimize.variants:
        paths[Variant.OPTIMIZED] = optimize_graph(fp32, out_dir / "optimized.onnx")
    if Variant.INT8 in manifest.optimize.variants:
        calibration = data.x_train[: manifest.optimize.calibration_samples]
        paths[Variant.INT8] = quantize(fp32, out_dir / "int8.onnx", manifest, calibration)
    return paths


def measure(
    variant: Variant, path: Path, data: Dataset, reference: np.ndarray, settings: Settings
) -> Measurement:
    """Size, accuracy, agreement with the framework model, and latency at batch 1 and 32."""
    sess = session(path, settings.ort_threads)
    labels, probabilities = predict(sess, data.x_test)
    batch32 = np.resize(data.x_test, (32, *data.x_test.shape[1:]))
    n = probabilities.shape[1]
    confusion = np.bincount(data.y_test * n + labels, minlength=n * n).reshape(n, n)
    return Measurement(
        variant=variant,
        path=path,
        size_bytes=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        accuracy=float((labels == data.y_test).mean()),
        label_agreement=float((labels == reference.argmax(1)).mean()),
        max_prob_delta=float(np.abs(probabilities - reference).max()),
        batch1=latency(sess, data.x_test[:1], settings.latency_runs),
        batch32=latency(sess, batch32, max(10, settings.latency_runs // 4)),
        confusion=confusion.tolist(),
    )
