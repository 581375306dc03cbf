"""The release image's SBOM (CycloneDX 1.6 JSON): every wheel its venv installs, with the
sha256 of the file installed, and the base's Debian packages.

Written with `cyclonedx-python-lib`, from the wheels themselves: the hash-locked wheelhouse
the runtime image installs and the server's own wheel. The same wheels and packages always
give the same bytes (a serial number derived from them, a fixed timestamp), so one document serves every image
on one runtime.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cyclonedx.model import HashAlgorithm, HashType
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL
from packaging.utils import parse_wheel_filename

from shipyard.image.packages import DebianPackage

EPOCH = datetime(1980, 1, 1, tzinfo=UTC)


def wheel_component(wheel: Path) -> Component:
    name, version, _, _ = parse_wheel_filename(wheel.name)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    purl = PackageURL(type="pypi", name=str(name), version=str(version))
    return Component(
        type=ComponentType.LIBRARY,
        name=str(name),
        version=str(version),
        purl=purl,
        bom_ref=purl.to_string(),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha)],
    )


def debian_component(package: DebianPackage) -> Component:
    purl = PackageURL(
        type="deb",
        namespace="debian",
        name=package.name,
        version=package.version,
        qualifiers={"arch": package.architecture, "distro": "debian-12"},
    )
    return Component(
        type=ComponentType.LIBRARY,
        name=package.name,
        version=package.version,
        purl=purl,
        bom_ref=purl.to_string(),
    )


def document(wheels: list[Path], packages: list[DebianPackage], key: str) -> str:
    bom = Bom(
        # Derived, not random: the same wheels and packages give the same document.
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"urn:shipyard:sbom:{key}"),
        components=[
            *(wheel_component(w) for w in sorted(wheels, key=lambda w: w.name)),
            *(debian_component(p) for p in sorted(packages)),
        ],
        metadata=BomMetaData(timestamp=EPOCH),
    )
    return str(JsonV1Dot6(bom).output_as_string(indent=2))


def sbom(out: Path, cache_dir: Path, wheels: list[Path], packages: list[DebianPackage]) -> Path:
    """Write the SBOM of an image with `wheels` installed on a base with `packages` to `out`
    (made once per wheel set and package set, then copied)."""
    # Wheel paths name their content: the wheelhouse is per lock, the server's wheel per source.
    key = hashlib.sha256(repr((sorted(map(str, wheels)), sorted(packages))).encode()).hexdigest()[
        :16
    ]
    cached = cache_dir / f"{key}.cdx.json"
    if not cached.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f"{key}.tmp"
        tmp.write_text(document(wheels, packages, key))
        tmp.replace(cached)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, out)
    return out
