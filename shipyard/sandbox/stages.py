"""The stages that run the project's own code, where the settings say (`SHIPYARD_SANDBOX`):
in the sandbox (`container`, the default) or in the worker's process (`off`, for code you trust).

Either way the result is the same type, and what the sandbox wrote is read back as data and
checked before anything else uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from shipyard.errors import ProjectError
from shipyard.manifest import Manifest
from shipyard.project import DATA_KEYS, Dataset, check_dataset, load_dataset
from shipyard.settings import Settings
from shipyard.training import TrainedModel, train_model

# The engine's client (docker) and ONNX are imported by the stages that use them, not with this
# module: the release flow imports it, and a run's start waits for what the flow imports.

Say = Callable[[str], None]


def network_allowed(manifest: Manifest, granted: bool) -> bool:
    """The sandbox gets a network only when the manifest asks and its source's entry grants it."""
    if manifest.sandbox.network and not granted:
        raise ProjectError(
            f"{manifest.name}: sandbox.network is true in the manifest, but its repository's "
            "entry in the allowed sources does not grant `network: true`. Remove the request, "
            "or grant it in the allowed sources."
        )
    return manifest.sandbox.network


AHEAD = ("train", "export")
"""The stages a new commit's data stage runs ahead, in its own sandbox."""


def _request(manifest: Manifest) -> dict[str, object]:
    return {"manifest": manifest.model_dump(mode="json")}


def data(
    project_dir: Path,
    manifest: Manifest,
    work_dir: Path,
    settings: Settings,
    say: Say,
    granted: bool = False,
    ahead: Path | None = None,
) -> Dataset:
    """The project's dataset, checked against the manifest.

    With `ahead` (a release whose data is new, so are its model and graph), the same sandbox
    trains and exports right after, into `ahead`, for `train` and `export` to adopt: one
    container start and one interpreter (the project and its framework imported once) instead
    of three. They read what they would have been handed: the checked arrays, then the model.
    """
    if settings.sandbox == "off":
        return load_dataset(project_dir, manifest)
    from shipyard.sandbox import container

    out = work_dir / "data"
    run = container.Run(
        "data",
        project_dir,
        out,
        _request(manifest),
        {},
        network_allowed(manifest, granted),
        ahead=ahead,
        ahead_stages=AHEAD if ahead is not None else (),
    )
    container.run(run, settings, say)
    path = container.output(out, "data.npz", "data")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            raw = {key: arrays[key] for key in DATA_KEYS}
    except (ValueError, KeyError, OSError) as e:
        raise ProjectError(f"The data stage's sandbox wrote an unreadable data.npz: {e}") from e
    return check_dataset(raw, manifest)


def train(
    project_dir: Path,
    manifest: Manifest,
    dataset: Dataset,
    out_dir: Path,
    settings: Settings,
    say: Say,
    granted: bool = False,
    ahead: Path | None = None,
) -> TrainedModel:
    """The trained model on disk, its test-set probabilities and its training metrics (adopted
    from `ahead` when the data stage's sandbox trained it)."""
    if settings.sandbox == "off":
        return train_model(project_dir, manifest, dataset, out_dir)
    from shipyard.sandbox import container

    result = container.adopt(ahead, "train", out_dir, say) if ahead is not None else None
    if result is None:
        arrays = out_dir.parent / "train-input.npz"
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        np.savez(arrays, **{key: getattr(dataset, key) for key in DATA_KEYS})
        run = container.Run(
            "train",
            project_dir,
            out_dir,
            _request(manifest),
            {"data.npz": arrays},
            network_allowed(manifest, granted),
        )
        try:
            result = container.run(run, settings, say)
        finally:
            arrays.unlink(missing_ok=True)
    reference = container.output(out_dir, "reference.npy", "train")
    try:
        probabilities = np.load(reference, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ProjectError(
            f"The train stage's sandbox wrote an unreadable reference.npy: {e}"
        ) from e
    expected = (len(dataset.x_test), len(manifest.labels))
    if probabilities.shape != expected or not np.issubdtype(probabilities.dtype, np.floating):
        raise ProjectError(
            f"The train stage's test-set probabilities have shape {probabilities.shape} and dtype "
            f"{probabilities.dtype}, expected {expected} floats (one column per label)."
        )
    metrics = result.get("metrics")
    if not isinstance(metrics, dict) or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in metrics.values()
    ):
        raise ProjectError("The train stage's sandbox reported metrics that are not numbers.")
    return TrainedModel(
        container.output(out_dir, "model.pkl", "train"),
        reference,
        {str(k): float(v) for k, v in metrics.items()},
    )


def export(
    trained: TrainedModel,
    project_dir: Path,
    manifest: Manifest,
    out_dir: Path,
    settings: Settings,
    say: Say,
    granted: bool = False,
    ahead: Path | None = None,
) -> Path:
    """The fp32 ONNX graph, checked by the full ONNX checker and against the served contract
    (adopted from `ahead` when the data stage's sandbox exported it)."""
    from shipyard.export import check_onnx, export_onnx

    if settings.sandbox == "off":
        return export_onnx(trained, manifest, out_dir)
    from shipyard.sandbox import container

    model = {"model_sha256": hashlib.sha256(trained.model_path.read_bytes()).hexdigest()}
    if ahead is None or container.adopt(ahead, "export", out_dir, say, model) is None:
        run = container.Run(
            "export",
            project_dir,
            out_dir,
            _request(manifest),
            {"model.pkl": trained.model_path},
            network_allowed(manifest, granted),
        )
        container.run(run, settings, say)
    return check_onnx(container.output(out_dir, "fp32.onnx", "export"), manifest)


@contextlib.contextmanager
def ahead(manifest: Manifest, settings: Settings, wanted: bool = True) -> Iterator[Path | None]:
    """A directory for what a new commit's data stage runs ahead (`data`), removed when the
    release ends; None when the data stage is not cached by its inputs (`sealed`: it runs on
    every release, so its running does not mean the next stages will) or not `wanted`."""
    if not (wanted and sealed(manifest, settings)):
        yield None
        return
    settings.builds_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".ahead-", dir=settings.builds_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def describe(settings: Settings) -> str:
    """What the fingerprint records of where the project's code ran."""
    if settings.sandbox == "off":
        return "worker"
    from shipyard.sandbox import container

    return f"sandbox-{container.lock_digest()}"


def sealed(manifest: Manifest, settings: Settings) -> bool:
    """Whether the data stage's output is determined by its inputs alone: its code runs in the
    sandbox (a read-only copy of the project, the locked environment, nothing of the worker's)
    with no network. Only then may a release reuse the data an earlier one computed from the
    same inputs; in the worker's process (`off`) or with a network the data may come from
    anywhere, and is loaded every time."""
    return settings.sandbox == "container" and not manifest.sandbox.network
