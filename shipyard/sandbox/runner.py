"""What runs inside the sandbox: one stage of the project's own code, from `/in/request.json`.

Reads the project at `/project` (read-only) and writes only plain files into `/out`: arrays as
`.npy`/`.npz`, metrics as JSON, the model as a pickle only the sandbox itself loads again, and
the ONNX graph. `/out/result.json` says how it ended; a Shipyard error keeps its class name and
message so the worker can raise the same error. Imports nothing but the project-facing core
(no Prefect, MLflow or Docker client: the sandbox's environment does not have them).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import ShipyardError
from shipyard.manifest import Manifest, parse_manifest
from shipyard.project import DATA_KEYS, Dataset, load_dataset

PROJECT = Path("/project")
INPUTS = Path("/in")
OUTPUTS = Path("/out")
AHEAD = Path("/ahead")
"""With `ahead` in the request (the data stage of a new commit's release): where the stages that
follow run in the same interpreter, one directory each, for the worker to adopt."""


def _dataset(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as arrays:
        return Dataset(**{key: arrays[key] for key in DATA_KEYS})


def data(manifest: Manifest, inputs: Path, outputs: Path) -> dict[str, Any]:
    dataset = load_dataset(PROJECT, manifest)
    np.savez(outputs / "data.npz", **{key: getattr(dataset, key) for key in DATA_KEYS})
    return {}


def train(manifest: Manifest, inputs: Path, outputs: Path) -> dict[str, Any]:
    from shipyard.training import train_model

    trained = train_model(PROJECT, manifest, _dataset(inputs / "data.npz"), outputs)
    return {"metrics": trained.metrics}


def export(manifest: Manifest, inputs: Path, outputs: Path) -> dict[str, Any]:
    import cloudpickle

    from shipyard.export import write_onnx

    # The project's modules must import before its pickled model can load.
    from shipyard.project import load_entrypoint

    load_entrypoint(PROJECT, manifest.entrypoints.train, "entrypoints.train")
    pickled = (inputs / "model.pkl").read_bytes()
    write_onnx(cloudpickle.loads(pickled), manifest, outputs)
    # Which model the graph is of: a graph exported ahead is adopted only for this one.
    return {"model_sha256": hashlib.sha256(pickled).hexdigest()}


STAGES = {"data": data, "train": train, "export": export}


def run_stage(stage: str, manifest: Manifest, inputs: Path, outputs: Path) -> dict[str, Any]:
    """Run `stage`; write and return its result (`ok`, or the error's class and message)."""
    try:
        result: dict[str, Any] = {"ok": True, **STAGES[stage](manifest, inputs, outputs)}
    except ShipyardError as e:
        result = {"ok": False, "kind": type(e).__name__, "error": str(e)}
    except BaseException as e:
        frames = traceback.extract_tb(e.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        result = {"ok": False, "kind": "ProjectError", "error": f"{type(e).__name__}: {e}{where}"}
    # Whole or not at all: the worker may read it while the stages after this one still run.
    (outputs / ".result.json").write_text(json.dumps(result))
    os.replace(outputs / ".result.json", outputs / "result.json")
    return result


def _ahead(stages: list[str], manifest: Manifest) -> None:
    """The stages after `data`, each reading what the one before wrote, as the worker would have
    handed it over: the checked arrays of `data.npz`, then the trained `model.pkl`."""
    inputs = OUTPUTS
    for stage in stages:
        outputs = AHEAD / stage
        outputs.mkdir()
        print(f"== {stage} (in the data stage's sandbox) ==", flush=True)
        if not run_stage(stage, manifest, inputs, outputs)["ok"]:
            return
        inputs = outputs


def main(request_path: Path) -> int:
    request = json.loads(request_path.read_text())
    manifest = parse_manifest(request["manifest"])
    result = run_stage(request["stage"], manifest, INPUTS, OUTPUTS)
    if result["ok"] and request.get("ahead"):
        _ahead(list(request["ahead"]), manifest)
    return 0 if result["ok"] else 3


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else INPUTS / "request.json"))
