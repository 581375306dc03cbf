from pathlib import Path

import numpy as np
import onnx
import pytest

from shipyard.errors import ExportError
from shipyard.export import export_onnx
from shipyard.inference import predict, session
from shipyard.training import train_model
from tests.support.projects import EXAMPLES, sklearn_project

pytestmark = pytest.mark.unit


def test_sklearn_export_is_the_whole_pipeline_with_a_dynamic_batch(
    sklearn_trained, tmp_path: Path
) -> None:

    manifest, data, model = sklearn_trained
    path = export_onnx(model, manifest, tmp_path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Scaler" in ops  # the StandardScaler travels with the model
    sess = session(path)
    for rows in (1, 7, 360):
        labels, probabilities = predict(sess, data.x_test[:rows])
        assert labels.shape == (rows,) and probabilities.shape == (rows, 10)
    _, probabilities = predict(sess, data.x_test)
    assert np.abs(probabilities - model.reference()).max() <= 1e-4


def test_pytorch_export_drops_training_only_nodes(cnn_trained, tmp_path: Path) -> None:
    manifest, data, model = cnn_trained
    path = export_onnx(model, manifest, tmp_path)
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Dropout", "BatchNormalization"}  # folded or removed in eval mode
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    labels, probabilities = predict(session(path), data.x_test)
    assert np.array_equal(labels, model.reference().argmax(1))
    assert np.abs(probabilities - model.reference()).max() <= 1e-4


def test_two_trainings_export_byte_identical_onnx(sklearn_trained, tmp_path: Path) -> None:
    manifest, data, model = sklearn_trained
    again = train_model(EXAMPLES / "digits-sklearn", manifest, data, tmp_path / "again")
    first = export_onnx(model, manifest, tmp_path / "a").read_bytes()
    second = export_onnx(again, manifest, tmp_path / "b").read_bytes()
    assert first == second


def test_a_model_skl2onnx_cannot_convert_is_an_export_error(
    sklearn_trained, tmp_path: Path
) -> None:
    manifest, data, _ = sklearn_trained
    project = sklearn_project(
        tmp_path,
        train="from sklearn.pipeline import make_pipeline\n"
        "from sklearn.preprocessing import FunctionTransformer\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "def train(x, y, *, seed, params):\n"
        "    return make_pipeline(FunctionTransformer(lambda v: v / 16), "
        "LogisticRegression(max_iter=200)).fit(x, y)\n",
    )
    model = train_model(project, manifest, data, tmp_path / "out")
    with pytest.raises(ExportError, match="skl2onnx cannot convert Pipeline") as e:
        export_onnx(model, manifest, tmp_path / "onnx")
    assert "register a converter" in str(e.value)


def test_the_same_graph_with_its_opsets_listed_in_another_order_gives_the_same_bytes(
    tmp_path: Path,
) -> None:
    # skl2onnx lists the opsets in the order of a set of domain names, which follows each
    # process's string-hash seed: a sandbox export and the next one could differ only there.
    import onnx
    from onnx import helper

    from shipyard.export import strip_debug_info

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    ml, core = helper.make_opsetid("ai.onnx.ml", 1), helper.make_opsetid("", 18)
    paths = []
    for i, opsets in enumerate(([ml, core], [core, ml])):
        path = tmp_path / f"{i}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
        paths.append(strip_debug_info(path))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert [o.domain for o in onnx.load(str(paths[0])).opset_import] == ["", "ai.onnx.ml"]
