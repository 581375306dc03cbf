"""Make a built image depend on its content only.

Docker 20.10's classic builder stamps build times into the image config and history, names the
build containers in it, and writes file times into the layers. Rewriting the saved image —
every layer entry's times set to the commit time, owner names dropped, config and history
times set to the commit time, container ids removed — and loading it back gives an image id
(and, pushed, a manifest digest) that the same commit always reproduces.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from datetime import UTC, datetime
from typing import Any

import docker

_TIME_KEYS = ("mtime", "atime", "ctime", "LIBARCHIVE.creationtime", "SCHILY.fflags")


def _layer(data: bytes, epoch: int) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data)) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src:
            member.mtime = epoch
            member.uname = member.gname = ""
            member.pax_headers = {
                k: v for k, v in member.pax_headers.items() if k not in _TIME_KEYS
            }
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def _config(config: dict[str, Any], diff_ids: list[str], epoch: int) -> dict[str, Any]:
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {k: v for k, v in config.items() if k not in ("container", "container_config")}
    config["created"] = created
    config["config"] = {**config.get("config", {}), "Image": "", "Hostname": ""}
    config["history"] = [{**h, "created": created} for h in config.get("history", [])]
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    return config


def read_member(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    if member is None:
        raise ValueError(f"{name} is not a file in the saved image")
    return member.read()


def canonical(config: dict[str, Any]) -> bytes:
    """An image config's bytes as Shipyard writes them (their sha256 is the image id)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def load(
    client: docker.DockerClient,
    config: dict[str, Any],
    layers: dict[str, bytes],
    tag: str,
    epoch: int,
) -> str:
    """`docker load` an image made of `config` and return its id.

    `layers` maps diff ids to layer tars; a layer of `config` not in it must already be in the
    engine (the engine skips reading layers it has, so a release's image is loaded with its own
    layer only)."""
    config_bytes = canonical(config)
    config_id = hashlib.sha256(config_bytes).hexdigest()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), epoch
            archive.addfile(info, io.BytesIO(data))

        add(f"{config_id}.json", config_bytes)
        paths = []
        for diff_id in config["rootfs"]["diff_ids"]:
            path = f"{diff_id.removeprefix('sha256:')}/layer.tar"
            if diff_id in layers:
                add(path, layers[diff_id])
            paths.append(path)
        add(
            "manifest.json",
            json.dumps(
                [{"Config": f"{config_id}.json", "RepoTags": [tag], "Layers": paths}]
            ).encode(),
        )
    client.images.load(out.getvalue())
    return f"sha256:{config_id}"


def normalize_image(
    client: docker.DockerClient, image_id: str, epoch: int, tag: str
) -> tuple[str, dict[str, Any]]:
    """Rewrite `image_id` deterministically, load it as `tag`; return its id and config."""
    with tempfile.TemporaryFile() as saved:
        for chunk in client.images.get(image_id).save(named=False):
            saved.write(chunk)
        saved.seek(0)
        with tarfile.open(fileobj=saved) as archive:
            manifest = json.loads(read_member(archive, "manifest.json"))[0]
            config = json.loads(read_member(archive, manifest["Config"]))
            layers = [_layer(read_member(archive, name), epoch) for name in manifest["Layers"]]
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config = _config(config, diff_ids, epoch)
    return load(client, config, dict(zip(diff_ids, layers, strict=True)), tag, epoch), config


def normalize(client: docker.DockerClient, image_id: str, epoch: int, tag: str) -> str:
    """Rewrite `image_id` deterministically, load it as `tag`, and return the new image id."""
    return normalize_image(client, image_id, epoch, tag)[0]
