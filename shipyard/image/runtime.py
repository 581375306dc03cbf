"""The runtime image every release image is one layer on: the base, the server's locked
environment and its compiled bytecode.

It depends on the base and the lock only (its key is the sha256 of its Dockerfile and its
requirements, the server's wheel pinned by hash), so each engine builds it once per base and
lock (`shipyard/runtime:<key>`) for every model. Its layers are normalized like every image
Shipyard builds, so two clean machines build the same bytes; a registry receives them with the
first release pushed to it, and a release's push after that sends its model layer alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound

from shipyard.image.build import docker_build
from shipyard.image.context import (
    LOCK,
    NO_COMMIT_EPOCH,
    dockerfile,
    locked_requirements,
    runtime_context,
    server_wheel,
    wheelhouse,
)
from shipyard.image.normalize import normalize_image, read_member
from shipyard.image.packages import DebianPackage, base_packages

REPOSITORY = "shipyard/runtime"


@dataclass(frozen=True)
class Runtime:
    reference: str
    """`shipyard/runtime:<key>`, a name in the local engine only."""
    image_id: str
    config: dict[str, Any]
    """Its image config as loaded: a release image's config extends it."""
    packages: list[DebianPackage]
    """The base's Debian packages (for the SBOM)."""


def runtime_key(base: str, requirements: str) -> str:
    return hashlib.sha256((dockerfile(base) + "\0" + requirements).encode()).hexdigest()[:16]


def _recorded(client: docker.DockerClient, record: Path, reference: str) -> Runtime | None:
    """The runtime recorded on this host, if the engine still has that very image."""
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    try:
        present = str(client.images.get(reference).id)
    except ImageNotFound:
        return None
    if present != saved["image_id"] or "packages" not in saved:
        return None
    return Runtime(
        reference, present, saved["config"], [DebianPackage(*p) for p in saved["packages"]]
    )


def ensure_runtime(
    client: docker.DockerClient,
    base: str,
    wheelhouse_dir: Path,
    say: Callable[[str], None] | None = None,
    nocache: bool = False,
) -> Runtime:
    """The runtime image for `base` and the lock: reused if this engine has it, else built and
    normalized (about 40 s, once per base and lock). `nocache`: without the builder's cache."""
    server = server_wheel(wheelhouse_dir)
    requirements = locked_requirements(LOCK, server)
    key = runtime_key(base, requirements)
    reference = f"{REPOSITORY}:{key}"
    record = wheelhouse_dir.parent / "runtime" / f"{key}.json"
    found = _recorded(client, record, reference)
    if found is not None:
        return found
    try:
        image_id = str(client.images.get(reference).id)
        config = _config_of(client, reference)
    except ImageNotFound:
        if say:
            say(f"runtime image: building {reference} (once per base and lock)")
        context = runtime_context(
            dockerfile(base),
            requirements,
            wheelhouse(wheelhouse_dir),
            server,
            wheelhouse_dir.parent / "runtime" / key,
        )
        built = docker_build(client, context, nocache)
        image_id, config = normalize_image(client, built, NO_COMMIT_EPOCH, reference)
        with contextlib.suppress(APIError):
            client.images.remove(built, noprune=False)
    runtime = Runtime(reference, image_id, config, base_packages(client, reference))
    _record(record, runtime)
    return runtime


def _config_of(client: docker.DockerClient, reference: str) -> dict[str, Any]:
    """A pulled image's config, read from `docker save` (once per host: then it is recorded)."""
    with tempfile.TemporaryFile() as saved:
        for chunk in client.images.get(reference).save(named=False):
            saved.write(chunk)
        saved.seek(0)
        with tarfile.open(fileobj=saved) as archive:
            manifest = json.loads(read_member(archive, "manifest.json"))[0]
            config: dict[str, Any] = json.loads(read_member(archive, manifest["Config"]))
            return config


def _record(record: Path, runtime: Runtime) -> None:
    """Atomically: two releases building the same runtime write the same record."""
    record.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=record.parent, delete=False) as tmp:
        json.dump(
            {
                "image_id": runtime.image_id,
                "config": runtime.config,
                "packages": [list(p) for p in runtime.packages],
            },
            tmp,
        )
    os.replace(tmp.name, record)
