"""A release image: the runtime image plus one layer, `/model`, and the release's labels.

The layer is written here, not by `docker build`: a tar of the model's files with every time
set to the commit's, root-owned, in name order, so it depends on their bytes only. The image is
loaded with that one layer (the engine already has the runtime's), which takes a fraction of a
second where a build, a save of the whole image and its normalization took many. The result is
what `FROM runtime` + `COPY model/ /model/` + `LABEL …` would give, byte-reproducibly.
"""

from __future__ import annotations

import copy
import hashlib
import io
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker

from shipyard.image.build import BuiltImage
from shipyard.image.normalize import load
from shipyard.image.runtime import Runtime

MODEL_DIR = "model"
"""Where the files go in the image (`/model`, the server's SHIPYARD_SERVE_MODEL_DIR)."""


def model_layer(files: list[Path], epoch: int) -> bytes:
    """The `/model` layer's tar: the files, by name, root-owned, read-only for others."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directory = tarfile.TarInfo(MODEL_DIR)
        directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, epoch
        archive.addfile(directory)
        for path in sorted(files, key=lambda p: p.name):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{MODEL_DIR}/{path.name}")
            info.size, info.mode, info.mtime = len(data), 0o644, epoch
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def release_config(
    runtime: dict[str, Any], layer_diff_id: str, labels: dict[str, str], epoch: int
) -> dict[str, Any]:
    """The runtime's config with the model layer on top, the labels, and the commit's time."""
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = copy.deepcopy(runtime)
    config["created"] = created
    config["config"]["Labels"] = {**(config["config"].get("Labels") or {}), **labels}
    config["rootfs"]["diff_ids"] = [*config["rootfs"]["diff_ids"], layer_diff_id]
    config["history"] = [
        *config.get("history", []),
        {"created": created, "created_by": f"COPY {MODEL_DIR}/ /{MODEL_DIR}/ (shipyard)"},
    ]
    return config


def compose(
    client: docker.DockerClient,
    runtime: Runtime,
    files: list[Path],
    labels: dict[str, str],
    epoch: int,
    reference: str,
) -> BuiltImage:
    """Load the release image as `reference` in the engine (which must have `runtime`)."""
    layer = model_layer(files, epoch)
    diff_id = f"sha256:{hashlib.sha256(layer).hexdigest()}"
    config = release_config(runtime.config, diff_id, labels, epoch)
    image_id = load(client, config, {diff_id: layer}, reference, epoch)
    size = int(client.images.get(image_id).attrs["Size"])
    return BuiltImage(reference, image_id, size)
