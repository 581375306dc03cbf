"""The release image of a chosen variant: built reproducibly from the bundle, smoke-tested."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shipyard import engine
from shipyard.bundle import write_metadata
from shipyard.deploy.checks import Golden
from shipyard.errors import ImageError
from shipyard.gates import Measurement
from shipyard.image.build import smoke_test
from shipyard.image.context import LOCK, NO_COMMIT_EPOCH, ImageSpec
from shipyard.image.layers import compose
from shipyard.image.packages import DebianPackage
from shipyard.image.runtime import Runtime, ensure_runtime
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


def _python_sbom(lock: Path, out: Path) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cyclonedx_py",
            "requirements",
            "--of",
            "JSON",
            "--output-reproducible",
            "-o",
            str(out),
            str(lock),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise ImageError(f"SBOM generation failed: {done.stderr.strip()[-500:]}")
    document: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return document


def debian_component(package: DebianPackage) -> dict[str, str]:
    """A base package as a CycloneDX component, with its package URL (purl-spec's `deb` type)."""
    version = quote(package.version, safe="")
    purl = f"pkg:deb/debian/{package.name}@{version}?arch={package.architecture}&distro=debian-12"
    return {
        "bom-ref": purl,
        "type": "library",
        "name": package.name,
        "version": package.version,
        "purl": purl,
    }


def sbom(out: Path, cache_dir: Path, packages: list[DebianPackage], lock: Path = LOCK) -> Path:
    """A CycloneDX SBOM of the image: the hash-locked Python requirements it installs and the
    base's Debian packages (name, version, architecture), so a changed digest can be explained.
    The same for every image on one runtime, so made once per lock and package set."""
    key = hashlib.sha256(lock.read_bytes() + repr(packages).encode()).hexdigest()[:16]
    cached = cache_dir / f"{key}.cdx.json"
    if not cached.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        document = _python_sbom(lock, cache_dir / f"{key}.python.tmp")
        document["components"] = [
            *document.get("components", []),
            *(debian_component(p) for p in sorted(packages)),
        ]
        tmp = cache_dir / f"{key}.tmp"
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True))
        tmp.replace(cached)
    shutil.copyfile(cached, out)
    return out


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
        sbom(build_dir / "sbom.cdx.json", settings.builds_dir / "sbom", runtime.packages),
        golden.save(build_dir / "golden.json"),
        bundle / "shipyard.json",
    )
