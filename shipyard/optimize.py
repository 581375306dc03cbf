"""The `optimize` stage's logic: derive the ONNX variants and measure each one the same way.

- `optimized`: ONNX Runtime's offline graph optimization (constant folding, node fusion,
  removal of what inference does not need), saved so the server loads it ready.
- `int8`: quantized weights; static QDQ with activation scales calibrated on training data,
  or dynamic quantization (activation scales computed per call, so a row's answer can move
  with the rows that share its batch: the `batch_invariance` gate decides whether it ships).
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
from shipyard.inference import batch_invariance, latency, predict, session
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


# What static quantization turns into INT8. Not Softmax: quantized, the served probabilities
# would take some sixty distinct values.
STATIC_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "MaxPool")
# Rows of the test set checked for batch invariance: every row of a small set, a bounded cost
# on a large one.
INVARIANCE_ROWS = 1000


def _typed(model_path: Path) -> None:
    """Declare the float type of every tensor ONNX shape inference left untyped.

    The calibrator only records ranges of tensors whose type it knows; after an `ai.onnx.ml`
    op (skl2onnx's Scaler) ONNX infers none, so the activations would not be quantized at all.
    ONNX Runtime resolves every type when it loads the graph: ask it.
    """
    model = onnx.load(str(model_path))
    graph = model.graph
    known = {v.name for v in (*graph.value_info, *graph.input, *graph.output)}
    untyped = [o for node in graph.node for o in node.output if o and o not in known]
    if not untyped:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in untyped)
    outputs = ort.InferenceSession(
        probe.SerializeToString(), providers=["CPUExecutionProvider"]
    ).get_outputs()
    graph.value_info.extend(
        onnx.helper.make_tensor_value_info(o.name, onnx.TensorProto.FLOAT, None)
        for o in outputs
        if o.name in untyped and o.type == "tensor(float)"
    )
    onnx.save(model, str(model_path))


class _Calibration(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32) -> None:
        self._batches = iter([{input_name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(fp32: Path, out: Path, manifest: Manifest, calibration: np.ndarray) -> Path:
    """INT8 weights: static QDQ with activations calibrated on `calibration` rows, or dynamic."""
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
            _typed(prepared)
            quantize_static(
                prepared,
                out,
                _Calibration(manifest.input.name, calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(STATIC_OPS),
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
    """Size, accuracy, agreement with the framework model, batch invariance, and latency at
    batch 1 and 32."""
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
        batch_invariance=batch_invariance(sess, data.x_test[:INVARIANCE_ROWS]),
    )
