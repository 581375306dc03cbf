"""The Debian packages an image holds: what its SBOM lists besides the Python environment.

The stack's base records its package set in `PACKAGES_FILE` when it is built (`shipyard stack
up`, `shipyard/stack/base.py`); every image built on it, release images included, carries that
file. Another Debian-based base (`python:3.11-slim`) is read from its dpkg status.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import NamedTuple

import docker
from docker.errors import APIError, DockerException, NotFound

from shipyard.errors import ImageError

PACKAGES_FILE = "usr/share/shipyard/base-packages.json"
"""The package set, in the image (and in every image built on it)."""


class DebianPackage(NamedTuple):
    """One installed Debian package, as dpkg records it."""

    name: str
    version: str
    architecture: str


def parse_status(text: str) -> list[DebianPackage]:
    """The installed packages of a dpkg status file (`/var/lib/dpkg/status`), sorted."""
    packages = []
    for paragraph in text.split("\n\n"):
        fields = {
            key: value.strip()
            for key, _, value in (line.partition(":") for line in paragraph.splitlines())
            if key[:1] not in ("", " ")  # a continuation line starts with a space
        }
        if fields.get("Status") == "install ok installed":
            packages.append(
                DebianPackage(fields["Package"], fields["Version"], fields["Architecture"])
            )
    return sorted(packages)


def read_file(client: docker.DockerClient, image: str, path: str) -> bytes | None:
    """The file at `path` in `image` (a container created, never started), or None."""
    container = client.containers.create(image, command=["/bin/true"])
    try:
        stream, _ = container.get_archive(f"/{path}")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            data = tar.extractfile(member) if member is not None else None
            return data.read() if data is not None else None
    except NotFound:
        return None
    finally:
        container.remove(force=True)


def base_packages(client: docker.DockerClient, image: str) -> list[DebianPackage]:
    """The Debian packages of `image`'s base, sorted by name: the set the stack's base records
    in `PACKAGES_FILE` (images built on it carry it too); for another Debian-based image (the
    configured `python:3.11-slim`), what its dpkg status says is installed."""
    try:
        recorded = read_file(client, image, PACKAGES_FILE)
        if recorded is not None:
            return [DebianPackage(**p) for p in json.loads(recorded)["packages"]]
        status = read_file(client, image, "var/lib/dpkg/status")
    except (APIError, DockerException) as e:
        raise ImageError(f"Reading the Debian packages of {image} failed: {e}") from e
    if status is None:
        raise ImageError(
            f"{image} records no Debian packages: neither /{PACKAGES_FILE} nor "
            "/var/lib/dpkg/status is in it; is it Debian-based?"
        )
    return parse_status(status.decode())
