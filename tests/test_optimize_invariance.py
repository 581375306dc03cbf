"""INT8 variants and the company a row keeps: dynamic quantization scales activations per call,
so a digit's answer moves with the rows batched with it; static QDQ calibrates them once."""

from pathlib import Path

import onnx
import pytest

from shipyard.export import export_onnx
from shipyard.gates import Measurement, decide
from shipyard.manifest import Manifest, Variant
from shipyard.optimize import build_variants, measure
from shipyard.project import Dataset
from shipyard.settings import Settings
from shipyard.training import TrainedModel

pytestmark = pytest.mark.unit

Trained = tuple[Manifest, Dataset, TrainedModel]


def measured(trained: Trained, quantization: str, tmp_path: Path) -> dict[Variant, Measurement]:
    manifest, data, model = trained
    optimize = manifest.optimize.model_copy(update={"quantization": quantization})
    manifest = manifest.model_copy(update={"optimize": optimize})
    paths = build_variants(export_onnx(model, manifest, tmp_path), manifest, data, tmp_path)
    settings = Settings(state_dir=tmp_path, latency_runs=20)
    return {v: measure(v, p, data, model.reference(), settings) for v, p in paths.items()}


def test_dynamic_int8_digits_changes_answers_with_the_batch_and_is_not_shipped(
    sklearn_trained: Trained, tmp_path: Path
) -> None:
    m = measured(sklearn_trained, "dynamic", tmp_path)
    int8 = m[Variant.INT8].batch_invariance
    assert int8.rows == 360 and int8.label_changes >= 1 and int8.max_prob_delta > 0.01
    verdict = decide(list(m.values()), sklearn_trained[0].gates, None, "size")
    failed = [(r.gate, r.variant) for r in verdict.results if not r.passed]
    assert failed == [("batch_invariance", Variant.INT8)]
    assert verdict.passed and verdict.chosen != Variant.INT8


def test_static_int8_digits_is_batch_invariant_within_the_size_and_accuracy_targets(
    sklearn_trained: Trained, tmp_path: Path
) -> None:
    m = measured(sklearn_trained, "static", tmp_path)
    for variant in m.values():
        assert variant.batch_invariance.label_changes == 0, variant.variant
        assert variant.batch_invariance.max_prob_delta <= 1e-4, variant.variant
    fp32, int8 = m[Variant.FP32], m[Variant.INT8]
    assert int8.size_bytes <= 0.30 * fp32.size_bytes
    assert int8.accuracy >= fp32.accuracy - 0.005
    assert decide(list(m.values()), sklearn_trained[0].gates, None, "size").chosen == Variant.INT8
    graph = onnx.load(str(int8.path)).graph
    weights = {t.name for t in graph.initializer}
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert quantized - weights, "no activation is quantized: nothing was calibrated"
    softmax = next(n.output[0] for n in graph.node if n.op_type == "Softmax")
    assert softmax not in quantized  # the served probabilities keep float resolution


def test_static_int8_cnn_is_batch_invariant(cnn_trained: Trained, tmp_path: Path) -> None:
    int8 = measured(cnn_trained, "static", tmp_path)[Variant.INT8]
    assert int8.batch_invariance.label_changes == 0
    assert int8.batch_invariance.max_prob_delta <= 1e-4
