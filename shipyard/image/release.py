"""The release image of a chosen variant: built reproducibly from the bundle, smoke-tested."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shipyard import engine
from shipyard.bundle import write_metadata
from shipyard.deploy.checks import Golden
from shipyard.errors import ImageError
from shipyard.gates import Measurement
from shipyard.image.build import smoke_test
from shipyard.image.context import NO_COMMIT_EPOCH, ImageSpec, server_wheel, wheelhouse
from shipyard.image.layers import compose
from shipyard.image.runtime import Runtime, ensure_runtime
from shipyard.image.sbom import sbom
from shipyard.inference import predict, session
from shipyard.manifest import Manifest
from shipyard.project import Dataset
from shipyard.settings import Settings
from shipyard.source import Checkout


@dataclass(frozen=True)
class ReleaseImage:
    reference: str
    image_id: str
    size_bytes: int
    sbom: Path
    golden: Path
    """Inputs and the validated outputs the image answered in its smoke test; deploys reuse them."""
    metadata: Path
    """The image's `shipyard.json`: a rebuild needs the same bytes to reproduce the digest."""


def image_spec(
    manifest: Manifest, tree: Checkout, chosen: Measurement, fingerprint: str, base: str
) -> ImageSpec:
    return ImageSpec(
        model=manifest.name,
        fingerprint=fingerprint,
        onnx_sha256=chosen.sha256,
        base=base,
        revision=tree.commit or "",
        source=tree.source,
        epoch=tree.commit_time if tree.commit_time is not None else NO_COMMIT_EPOCH,
    )


def runtime_for(settings: Settings) -> Runtime:
    """The runtime image on the configured base: the base pulled if this engine lacks it."""
    client = engine.engine(settings)
    registry = engine.registry_login(settings)
    base = engine.base_image(settings)
    try:
        client.images.get(base)
    except Exception:
        try:
            client.images.pull(base, auth_config=registry.auth())
        except Exception as e:
            raise ImageError(
                f"Base image {base} is missing and cannot be pulled ({e}). "
                "Run `shipyard stack up`, or set SHIPYARD_BASE_IMAGE to one you can pull."
            ) from e
    return ensure_runtime(client, base, settings.wheelhouse_dir)


def build_release_image(
    manifest: Manifest,
    tree: Checkout,
    chosen: Measurement,
    data: Dataset,
    fingerprint: str,
    version: str,
    settings: Settings,
) -> ReleaseImage:
    """The runtime image plus the model layer, smoke-tested against the validated ONNX model."""
    client = engine.engine(settings)
    runtime = runtime_for(settings)
    build_dir = settings.builds_dir / fingerprint / "image"
    bundle = build_dir / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "model.onnx").write_bytes(chosen.path.read_bytes())
    write_metadata(bundle, manifest, tree, chosen, fingerprint, version)
    spec = image_spec(manifest, tree, chosen, fingerprint, engine.base_image(settings))
    # Content names the tag: the same fingerprint at another commit is another image (labels).
    reference = f"{settings.registry}/shipyard/{manifest.name}:{fingerprint[:12]}-{(tree.commit or 'worktree')[:12]}"
    built = compose(
        client,
        runtime,
        [bundle / "model.onnx", bundle / "shipyard.json"],
        spec.labels,
        spec.epoch,
        reference,
    )
    # A sample within the server's default limits (1024 rows, 1 MiB) whatever the test set's size.
    sample = data.x_test[:64]
    labels, probabilities = predict(session(chosen.path), sample)
    smoke_test(client, built.image_id, sample, labels, probabilities)
    golden = Golden(sample.tolist(), labels.tolist(), probabilities.tolist())
    return ReleaseImage(
        built.reference,
        built.image_id,
        built.size_bytes,
        sbom(
            build_dir / "sbom.cdx.json",
            settings.builds_dir / "sbom",
            [
                *wheelhouse(settings.wheelhouse_dir).glob("*.whl"),
                server_wheel(settings.wheelhouse_dir),
            ],
            runtime.packages,
        ),
        golden.save(build_dir / "golden.json"),
        bundle / "shipyard.json",
    )
