"""Serving bundles: a directory with `model.onnx` and `shipyard.json`, made from a registered
version (`models:/NAME@ALIAS` or `models:/NAME/VERSION`) or given as a path."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from shipyard import registry
from shipyard.errors import RegistryError, ShipyardError
from shipyard.gates import Measurement
from shipyard.manifest import Manifest
from shipyard.settings import Settings
from shipyard.source import Checkout

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def write_metadata(
    out_dir: Path,
    manifest: Manifest,
    tree: Checkout,
    chosen: Measurement,
    fingerprint: str,
    version: str | None = None,
) -> Path:
    """`shipyard.json` beside a model: what the server reports about the model it serves.

    The MLflow model is written before its version exists; `materialize` adds it there.
    """
    metadata = {
        "name": manifest.name,
        "labels": manifest.labels,
        "fingerprint": fingerprint,
        "git_sha": tree.commit,
        "variant": chosen.variant.value,
        "onnx_sha256": chosen.sha256,
    }
    if version is not None:
        metadata["version"] = version
    path = out_dir / "shipyard.json"
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return path


def _version(mlflow: MlflowClient, uri: str) -> ModelVersion:
    match = _MODELS_URI.match(uri)
    if match is None:
        raise ShipyardError(
            f"{uri!r} is not a model URI: use models:/NAME@ALIAS (e.g. models:/digits-sklearn@candidate) "
            "or models:/NAME/VERSION."
        )
    name = match["name"]
    try:
        if match["alias"]:
            return mlflow.get_model_version_by_alias(name, match["alias"])
        return mlflow.get_model_version(name, match["version"])
    except MlflowException as e:
        raise RegistryError(
            f"{uri}: {e.message}. `shipyard status {name}` lists its aliases."
        ) from e


def materialize(target: str, settings: Settings) -> Path:
    """A directory the server can load: `target` itself, or the version downloaded from MLflow."""
    if not target.startswith("models:/"):
        path = Path(target)
        if not (path / "model.onnx").is_file():
            raise ShipyardError(
                f"{target!r} holds no model.onnx: pass a bundle directory, an MLflow ONNX model "
                "directory, or models:/NAME@ALIAS."
            )
        return path
    mlflow = registry.client(settings)
    version = _version(mlflow, target)
    bundle = settings.state_dir.resolve() / "serving" / f"{version.name}-v{version.version}"
    if (bundle / "model.onnx").is_file():
        return bundle
    with tempfile.TemporaryDirectory(dir=settings.state_dir) as tmp:
        local = Path(mlflow.download_artifacts(str(version.run_id), "model", tmp))
        staged = Path(tmp) / "bundle"
        staged.mkdir()
        shutil.copy(local / "model.onnx", staged / "model.onnx")
        meta_path = local / "shipyard.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {"name": version.name}
        meta.update(
            {
                "version": str(version.version),
                **{
                    k: v
                    for k, v in version.tags.items()
                    if k in ("git_sha", "fingerprint", "variant", "source")
                },
            }
        )
        (staged / "shipyard.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        bundle.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(bundle)
    return bundle
