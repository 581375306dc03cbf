"""A registered version's image again, from its recorded ONNX file, on the current base image and
locked dependencies; smoke-tested and pushed, never retrained."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities.model_registry import ModelVersion

from shipyard import engine, registry
from shipyard.contracts import pinned
from shipyard.deploy.checks import Golden
from shipyard.errors import ImageError, RegistryError
from shipyard.image.build import smoke_test
from shipyard.image.context import NO_COMMIT_EPOCH, ImageSpec
from shipyard.image.layers import compose
from shipyard.image.push import push_with_retries
from shipyard.image.release import runtime_for
from shipyard.settings import Settings


@dataclass(frozen=True)
class RebuiltImage:
    base: str
    reference: str
    digest: str
    golden: Golden

    @property
    def pinned(self) -> str:
        return pinned(self.reference, self.digest)


def _download(settings: Settings, version: ModelVersion, names: dict[str, str], out: Path) -> None:
    mlflow = registry.client(settings)
    for artifact, target in names.items():
        try:
            local = Path(mlflow.download_artifacts(str(version.run_id), artifact, str(out)))
        except Exception as e:
            raise RegistryError(
                f"{version.name} v{version.version}: artifact {artifact} is missing from run "
                f"{version.run_id} ({e}): the version was never pushed, or was pushed before Shipyard "
                "recorded it. `shipyard release SOURCE` of its commit records it again."
            ) from e
        local.rename(out / target)


def rebuild(version: ModelVersion, settings: Settings) -> RebuiltImage:
    """Build, smoke-test and push `version`'s image on today's base; return its digest."""
    tags = registry.tags_of(version)
    model = str(version.name)
    missing = tags.missing("variant", "onnx_sha256", "fingerprint")
    if missing:
        raise RegistryError(
            f"{model} v{version.version} has no {', '.join(missing)} tag(s), which every release "
            "records: it was not registered by `shipyard release`, so it cannot be rebuilt. "
            "Release its source with `shipyard release SOURCE` instead."
        )
    client = engine.engine(settings)
    base = engine.base_image(settings)
    runtime = runtime_for(settings)
    reference = f"{settings.registry}/shipyard/{model}:v{version.version}-rebuild"
    work = settings.builds_dir / "rebuild" / f"{model}-v{version.version}"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        bundle = Path(tmp)
        _download(
            settings,
            version,
            {
                f"onnx/{tags.variant}.onnx": "model.onnx",
                "image/shipyard.json": "shipyard.json",
                "image/golden.json": "golden.json",
            },
            bundle,
        )
        onnx_sha = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
        if onnx_sha != tags.onnx_sha256:
            raise ImageError(
                f"{model} v{version.version}: the recorded ONNX file hashes to {onnx_sha}, not "
                f"the registered onnx_sha256 {tags.onnx_sha256}: refusing to rebuild it."
            )
        golden = Golden.load(bundle / "golden.json")
        spec = ImageSpec(
            model=model,
            fingerprint=str(tags.fingerprint),
            onnx_sha256=onnx_sha,
            base=base,
            revision=tags.git_sha or "",
            source=tags.source or "",
            epoch=tags.commit_time or NO_COMMIT_EPOCH,
        )
        built = compose(
            client,
            runtime,
            [bundle / "model.onnx", bundle / "shipyard.json"],
            spec.labels,
            spec.epoch,
            reference,
        )
    smoke_test(
        client,
        built.image_id,
        np.asarray(golden.inputs, dtype=np.float32),
        np.asarray(golden.labels),
        np.asarray(golden.probabilities),
    )
    digest = push_with_retries(
        client, reference, engine.registry_login(settings), settings.push_attempts
    )
    return RebuiltImage(base, reference, digest, golden)
