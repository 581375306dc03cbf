"""The `export` stage's logic: the trained model, preprocessing included, as one checked ONNX graph."""

from __future__ import annotations

from pathlib import Path

import onnx

from shipyard.errors import ExportError
from shipyard.frameworks import OUTPUTS, adapter_for
from shipyard.manifest import Manifest
from shipyard.training import TrainedModel

OPSET = 18


def check_contract(path: Path, manifest: Manifest) -> None:
    """The served contract: one float input named as in the manifest; `label` and `probabilities`."""
    model = onnx.load(str(path))
    inputs = [
        i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    outputs = [o.name for o in model.graph.output]
    problems = []
    if inputs != [manifest.input.name]:
        problems.append(
            f"inputs {inputs}, expected [{manifest.input.name!r}] (manifest input.name)"
        )
    if list(OUTPUTS) != outputs[:2]:
        problems.append(f"outputs {outputs}, expected {list(OUTPUTS)}")
    if problems:
        raise ExportError(f"{path.name} breaks the served contract: " + "; ".join(problems))


def strip_debug_info(path: Path) -> Path:
    """Drop what serving never reads: doc strings and per-node metadata (exporter stack
    traces that hold the checkout's file paths, so two checkouts would differ byte-wise); and
    list the opsets in domain order. skl2onnx lists them in the order of a set of domain names,
    which follows the process's string-hash seed: two processes exporting the same model wrote
    `ai.onnx.ml` and `""` in either order, so the same model gave two graphs' bytes."""
    model = onnx.load(str(path))
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    opsets = sorted(model.opset_import, key=lambda opset: (opset.domain, opset.version))
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    onnx.save(model, str(path))
    return path


def write_onnx(model: object, manifest: Manifest, out_dir: Path, opset: int = OPSET) -> Path:
    """Export a trained model to `out_dir/fp32.onnx` without its debug info; return the path.

    This runs the project's code (a PyTorch module's `forward`), so it runs in the sandbox.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = adapter_for(manifest.framework).export(model, manifest, out_dir / "fp32.onnx", opset)
    return strip_debug_info(path)


def check_onnx(path: Path, manifest: Manifest) -> Path:
    """The full ONNX checker and the served contract; reads the file as data only."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"The exported graph fails onnx.checker: {e}") from e
    check_contract(path, manifest)
    return path


def export_onnx(
    trained: TrainedModel, manifest: Manifest, out_dir: Path, opset: int = OPSET
) -> Path:
    """Export to `out_dir/fp32.onnx`, run the full ONNX checker, and return the path."""
    return check_onnx(write_onnx(trained.load(), manifest, out_dir, opset), manifest)
