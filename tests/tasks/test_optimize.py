from pathlib import Path

import onnx
import pytest

from shipyard.export import export_onnx
from shipyard.manifest import Variant
from shipyard.optimize import build_variants, measure
from shipyard.settings import Settings

pytestmark = pytest.mark.unit


def _measured(trained, tmp_path: Path):
    manifest, data, model = trained
    fp32 = export_onnx(model, manifest, tmp_path)
    paths = build_variants(fp32, manifest, data, tmp_path)
    settings = Settings(state_dir=tmp_path, latency_runs=20)
    return paths, {v: measure(v, p, data, model.reference(), settings) for v, p in paths.items()}


def test_sklearn_variants_static_int8(sklearn_trained, tmp_path: Path) -> None:
    paths, m = _measured(sklearn_trained, tmp_path)
    assert set(paths) == {Variant.FP32, Variant.OPTIMIZED, Variant.INT8}
    ops = {n.op_type for n in onnx.load(str(paths[Variant.INT8])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # activation scales calibrated once
    assert m[Variant.INT8].size_bytes < 0.3 * m[Variant.FP32].size_bytes
    assert m[Variant.INT8].accuracy >= m[Variant.FP32].accuracy - 0.005  # at most 0.5 pp lost
    assert m[Variant.OPTIMIZED].max_prob_delta <= 1e-4
    assert sum(map(sum, m[Variant.FP32].confusion)) == 360


def test_cnn_variants_static_qdq_int8(cnn_trained, tmp_path: Path) -> None:
    paths, m = _measured(cnn_trained, tmp_path)
    ops = {n.op_type for n in onnx.load(str(paths[Variant.INT8])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format, calibrated
    assert m[Variant.INT8].size_bytes < 0.3 * m[Variant.FP32].size_bytes
    assert abs(m[Variant.INT8].accuracy - m[Variant.FP32].accuracy) <= 0.005
    assert m[Variant.INT8].batch1.p99_ms > 0 and m[Variant.INT8].batch32.p50_ms > 0


def test_variants_are_byte_reproducible(sklearn_trained, tmp_path: Path) -> None:
    manifest, data, model = sklearn_trained
    runs = []
    for name in ("a", "b"):
        fp32 = export_onnx(model, manifest, tmp_path / name)
        paths = build_variants(fp32, manifest, data, tmp_path / name)
        runs.append({v: p.read_bytes() for v, p in paths.items()})
    assert runs[0] == runs[1]
