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


def _read(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    if member is None:
        raise ValueError(f"{name} is not a file in the saved image")
    return member.read()


def normalize(client: docker.DockerClient, image_id: str, epoch: int, tag: str) -> str:
    """Rewrite `image_id` deterministically, load it as `tag`, and return the new image id."""
    with tempfile.TemporaryFile() as saved:
        for chunk in client.images.get(image_id).save(named=False):
            saved.write(chunk)
        saved.seek(0)
        with tarfile.open(fileobj=saved) as archive:
            manifest = json.loads(_read(archive, "manifest.json"))[0]
            config = json.loads(_read(archive, manifest["Config"]))
            layers = [_layer(_read(archive, name), epoch) for name in manifest["Layers"]]
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config_bytes = json.dumps(
        _config(config, diff_ids, epoch), sort_keys=True, separators=(",", ":")
    ).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), epoch
            archive.addfile(info, io.BytesIO(data))

        add(f"{config_id}.json", config_bytes)
        paths = []
        for diff_id, layer in zip(diff_ids, layers, strict=True):
            path = f"{diff_id.removeprefix('sha256:')}/layer.tar"
            add(path, layer)
            paths.append(path)
        add(
            "manifest.json",
            json.dumps(
                [{"Config": f"{config_id}.json", "RepoTags": [tag], "Layers": paths}]
            ).encode(),
        )
    client.images.load(out.getvalue())
    return f"sha256:{config_id}"
