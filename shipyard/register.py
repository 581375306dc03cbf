"""The `register` stage's logic: one MLflow model version per fingerprint, aliased `candidate`."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from shipyard import registry
from shipyard.contracts import VersionTags
from shipyard.gates import Measurement, Verdict
from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.settings import Settings
from shipyard.source import Checkout


@dataclass(frozen=True)
class RegisteredVersion:
    model: str
    version: str
    reused: bool
    """True when this fingerprint was registered before and that version was reused."""
    tags: VersionTags


def load_requirement_checks() -> None:
    """Fill MLflow's map of installed packages to modules, once per process: `save_model` reads
    it to check the pinned requirements against this environment, and building it walks every
    installed distribution's files (about 2 s here). Loaded ahead by `shipyard.warmup`."""
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    warn_dependency_requirement_mismatches(["numpy"])


def mlflow_model(chosen: Measurement, manifest: Manifest, data: Dataset, out_dir: Path) -> Path:
    """The chosen variant as an MLflow ONNX model (so `mlflow models serve` can serve it too)."""
    # Imported here: a release of a fingerprint registered before reuses its version, and
    # needs neither ONNX nor MLflow's ONNX flavor.
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    if out_dir.exists():
        shutil.rmtree(out_dir)
    sample = data.x_test[:2]
    outputs = {
        "label": np.zeros(2, dtype=np.int64),
        "probabilities": np.zeros((2, len(manifest.labels)), dtype=np.float32),
    }
    mlflow.onnx.save_model(
        onnx.load(str(chosen.path)),
        str(out_dir),
        signature=infer_signature(sample, outputs),
        save_as_external_data=False,
        # Pinned from this environment: inference would import the model in a subprocess.
        pip_requirements=[
            f"onnx=={version('onnx')}",
            f"onnxruntime=={version('onnxruntime')}",
            f"numpy=={version('numpy')}",
        ],
    )
    return out_dir


def register_release(
    manifest: Manifest,
    tree: Checkout,
    data: Dataset,
    data_hash: str,
    measurements: list[Measurement],
    verdict: Verdict,
    fingerprint: str,
    run_id: str,
    settings: Settings,
    flow_run_id: str | None = None,
) -> RegisteredVersion:
    """Register the chosen variant with its variants and report; idempotent per fingerprint."""
    client = registry.client(settings)
    existing = registry.version_by_fingerprint(client, manifest.name, fingerprint)
    if existing is not None:
        client.set_registered_model_alias(manifest.name, registry.CANDIDATE, existing.version)
        return RegisteredVersion(
            manifest.name, str(existing.version), True, VersionTags.from_mlflow(existing.tags)
        )
    from shipyard.bundle import write_metadata

    chosen = next(m for m in measurements if m.variant == verdict.chosen)
    build = settings.builds_dir / fingerprint
    model_dir = mlflow_model(chosen, manifest, data, build / "mlflow-model")
    write_metadata(model_dir, manifest, tree, chosen, fingerprint)
    client.log_artifacts(run_id, str(model_dir), "model")
    client.log_artifacts(run_id, str(build / "onnx"), "onnx")
    tags = VersionTags(
        fingerprint=fingerprint,
        git_sha=tree.commit or None,
        git_dirty=tree.dirty,
        source=tree.source or None,
        ref=tree.ref or None,
        commit_time=tree.commit_time,
        onnx_sha256=chosen.sha256,
        variant=chosen.variant.value,
        accuracy=chosen.accuracy,
        size_bytes=chosen.size_bytes,
        data_sha256=data_hash,
        prefect_flow_run_id=flow_run_id,
    )
    run = client.get_run(run_id)
    version = registry.register(
        client, manifest.name, f"{run.info.artifact_uri}/model", run_id, tags.to_mlflow()
    )
    return RegisteredVersion(manifest.name, str(version.version), False, tags)
