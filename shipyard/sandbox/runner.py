"""What runs inside the sandbox: one stage of the project's own code, from `/in/request.json`.

Reads the project at `/project` (read-only) and writes only plain files into `/out`: arrays as
`.npy`/`.npz`, metrics as JSON, the model as a pickle only the sandbox itself loads again, and
the ONNX graph. `/out/result.json` says how it ended; a Shipyard error keeps its class name and
message so the worker can raise the same error. Imports nothing but the project-facing core
(no Prefect, MLflow or Docker client: the sandbox's environment does not have them).
"""

from __future__ import annotations

import json
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


def _dataset() -> Dataset:
    with np.load(INPUTS / "data.npz", allow_pickle=False) as arrays:
        return Dataset(**{key: arrays[key] for key in DATA_KEYS})


def data(manifest: Manifest) -> dict[str, Any]:
    dataset = load_dataset(PROJECT, manifest)
    np.savez(OUTPUTS / "data.npz", **{key: getattr(dataset, key) for key in DATA_KEYS})
    return {}


def train(manifest: Manifest) -> dict[str, Any]:
    from shipyard.training import train_model

    trained = train_model(PROJECT, manifest, _dataset(), OUTPUTS)
    return {"metrics": trained.metrics}


def export(manifest: Manifest) -> dict[str, Any]:
    import cloudpickle

    from shipyard.export import write_onnx

    # The project's modules must import before its pickled model can load.
    from shipyard.project import load_entrypoint

    load_entrypoint(PROJECT, manifest.entrypoints.train, "entrypoints.train")
    with (INPUTS / "model.pkl").open("rb") as f:
        model = cloudpickle.load(f)
    write_onnx(model, manifest, OUTPUTS)
    return {}


STAGES = {"data": data, "train": train, "export": export}


def main(request_path: Path) -> int:
    request = json.loads(request_path.read_text())
    manifest = parse_manifest(request["manifest"])
    try:
        result: dict[str, Any] = {"ok": True, **STAGES[request["stage"]](manifest)}
    except ShipyardError as e:
        result = {"ok": False, "kind": type(e).__name__, "error": str(e)}
    except BaseException as e:
        frames = traceback.extract_tb(e.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        result = {"ok": False, "kind": "ProjectError", "error": f"{type(e).__name__}: {e}{where}"}
    (OUTPUTS / "result.json").write_text(json.dumps(result))
    return 0 if result["ok"] else 3


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else INPUTS / "request.json"))
