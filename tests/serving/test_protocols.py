"""Both protocols answer what the ONNX model computes, in the shapes their clients expect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from shipyard.project import Dataset
from shipyard_serving import protocol
from shipyard_serving.model import ModelInfo
from tests.support.servers import KEY, InProcessServer, rows

pytestmark = pytest.mark.unit

AUTH = {"Authorization": f"Bearer {KEY}"}


def expected(bundle: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"pixels": x.astype(np.float32)})
    return label, probabilities


def v2_request(data: list[list[float]]) -> dict:
    flat = [v for row in data for v in row]
    return {
        "id": "req-1",
        "inputs": [{"name": "pixels", "shape": [len(data), 64], "datatype": "FP32", "data": flat}],
    }


def test_v2_infer_matches_the_onnx_model(
    server: InProcessServer, bundle: Path, digits: Dataset
) -> None:
    x = digits.x_test[:5]
    answer = server.client.post(
        "/v2/models/digits-sklearn/infer",
        json=v2_request(rows(digits, 5)),
        headers=AUTH,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "digits-sklearn" and body["model_version"] == "7"
    assert body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    label, probabilities = expected(bundle, x)
    assert outputs["label"] == {
        "name": "label",
        "datatype": "INT64",
        "shape": [5],
        "data": label.tolist(),
    }
    assert outputs["probabilities"]["shape"] == [5, 10]
    assert np.allclose(outputs["probabilities"]["data"], probabilities.reshape(-1), atol=1e-6)
    assert outputs["label_name"]["data"] == [str(v) for v in label.tolist()]


def test_v2_nested_data_versioned_route_and_output_selection(
    server: InProcessServer, digits: Dataset
) -> None:
    request = v2_request(rows(digits, 2))
    request["inputs"][0]["data"] = rows(digits, 2)  # nested rows are accepted too
    request["outputs"] = [{"name": "label"}]
    answer = server.client.post(
        "/v2/models/digits-sklearn/versions/7/infer", json=request, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == ["label"]
    wrong = server.client.post(
        "/v2/models/digits-sklearn/versions/6/infer", json=request, headers=AUTH
    )
    assert wrong.status_code == 404 and "version '7'" in wrong.json()["error"]


def test_v2_metadata_health_and_server(server: InProcessServer) -> None:
    meta = server.client.get("/v2/models/digits-sklearn", headers=AUTH).json()
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities", "label_name"]
    assert meta["versions"] == ["7"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["parameters"]["git_sha"] == "a" * 40
    assert len(meta["parameters"]["onnx_sha256"]) == 64
    assert server.client.get("/v2/health/live").json() == {"live": True}
    assert server.client.get("/v2/health/ready").json() == {"ready": True}
    assert server.client.get("/v2/models/digits-sklearn/ready", headers=AUTH).status_code == 200
    assert server.client.get("/v2", headers=AUTH).json()["name"] == "shipyard"


def test_mlflow_scoring_formats_agree(
    server: InProcessServer, bundle: Path, digits: Dataset
) -> None:
    data = rows(digits, 3)
    label, probabilities = expected(bundle, digits.x_test[:3])
    bodies = [
        {"inputs": data},
        {"instances": data},
        {"inputs": {"pixels": data}},
        {"instances": [{"pixels": r} for r in data]},
        {"dataframe_split": {"columns": [f"p{i}" for i in range(64)], "data": data}},
    ]
    for body in bodies:
        answer = server.client.post("/invocations", json=body, headers=AUTH)
        assert answer.status_code == 200, (body.keys(), answer.text)
        predictions = answer.json()["predictions"]
        assert predictions["label"] == label.tolist()
        assert np.allclose(predictions["probabilities"], probabilities, atol=1e-6)
        assert predictions["label_name"] == [str(v) for v in label.tolist()]
    assert server.client.get("/ping").status_code == 200


def test_numeric_rows_as_sent_convert_as_the_checked_path_does(digits: Dataset) -> None:
    """A body of numbers only skips numpy's type discovery: same array, same errors."""
    info = ModelInfo("digits-sklearn", "7", "pixels", (64,), None, "0" * 64)

    def parsed(body: object, text: bytes | None) -> np.ndarray | tuple[int, str]:
        try:
            return protocol.parse_mlflow(body, info, 64, text)
        except protocol.RequestError as e:
            return e.status, e.message

    good = [
        {"inputs": rows(digits, 3)},
        {"inputs": [[int(v) for v in row] for row in rows(digits, 2)]},
        {"inputs": [[-1.5e-3] * 64]},
        {"inputs": [[3e38, -3e38] * 32]},  # finite, though their squares overflow float32
    ]
    bad = [
        {"inputs": [[0] * 64, [0] * 63]},
        {"inputs": [[1e39] * 64]},
        {"inputs": [[1.0] * 63 + [-1e39]]},
        {"inputs": [[0] * 64] * 65},
        {"inputs": []},
        {"inputs": 7},
        {"inputs": [0] * 64},  # one flat row: the checked path reshapes it
        {"inputs": [[True] * 64]},
        {"inputs": [["1"] * 64]},
    ]
    for body in good + bad:
        text = orjson.dumps(body)
        fast, checked = parsed(body, text), parsed(body, None)
        if isinstance(checked, np.ndarray):
            assert isinstance(fast, np.ndarray) and fast.dtype == np.float32, body
            assert np.array_equal(fast, checked), body
        else:
            assert fast == checked, body
    assert all(isinstance(parsed(b, orjson.dumps(b)), np.ndarray) for b in good)


@pytest.mark.parametrize("size", [1, 64, protocol._DOT_CHECK_MAX, protocol._DOT_CHECK_MAX + 1])
def test_a_non_finite_value_is_found_wherever_it_is(size: int) -> None:
    """The quick check (one dot product) and the exact one agree: every inf and NaN is found,
    and large finite values whose squares overflow are not taken for one."""
    rng = np.random.default_rng(size)
    assert protocol._finite(rng.normal(size=size).astype(np.float32))
    assert protocol._finite(np.full(size, 3e38, dtype=np.float32))
    for bad in (np.inf, -np.inf, np.nan):
        for at in {0, size // 2, size - 1}:
            values = rng.normal(size=size).astype(np.float32)
            values[at] = bad
            assert not protocol._finite(values), (bad, at)
            assert not protocol._finite(values.reshape(1, -1)[:, ::-1]), (bad, at)  # a strided view
