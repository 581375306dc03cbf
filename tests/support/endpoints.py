"""Deployed endpoints for tests: a model released and served behind its own HAProxy, a steady
load on it (`tests/support/load.py`), and images that fail in chosen ways."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from shipyard import engine, registry
from shipyard.contracts import ReleaseSummary
from shipyard.deploy import containers, state
from shipyard.flows.release import release
from shipyard.settings import Settings
from tests.support.projects import ROOT, edit_manifest

MODEL = "digits-sklearn"


@dataclass
class Endpoint:
    settings: Settings
    project: Path
    url: str

    def aliases(self) -> dict[str, str]:
        mlflow = registry.client(self.settings)
        return {a.alias: a.version for a in registry.aliases(mlflow, MODEL)}

    def deployment(self) -> state.Deployment:
        deployed = state.load(self.settings.deploy_dir, MODEL)
        assert deployed is not None
        return deployed

    def release(self, seed: int, **parameters: Any) -> ReleaseSummary:
        """A new version (another training seed), released and deployed."""
        text = (self.project / "shipyard.yaml").read_text()
        old = next(line for line in text.splitlines() if line.startswith("seed:"))
        edit_manifest(self.project, old, f"seed: {seed}")
        return release(source=str(self.project), settings=self.settings, **parameters)


@contextmanager
def steady_load(url: str, seconds: float = 240) -> Iterator[dict[str, Any]]:
    """Two clients sending one-row requests until the block ends; then their counts."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.load", url, MODEL, "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"started"
    counts: dict[str, Any] = {}
    try:
        yield counts
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
        counts.update(json.loads(out.splitlines()[-1]))
        print(f"load on {url}: {counts}")


def derived_image(settings: Settings, base: str, onnx: bytes, tag: str) -> str:
    """`base` with another model.onnx, pushed; returns it pinned by digest."""
    client = engine.engine(settings)
    context = settings.state_dir / f"derived-{tag}"
    context.mkdir()
    (context / "model.onnx").write_bytes(onnx)
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY model.onnx /model/model.onnx\n")
    repository = base.partition("@")[0]
    client.images.build(
        path=str(context), tag=f"{repository}:{tag}", pull=False, rm=True, forcerm=True
    )
    digest = engine.push(client, repository, tag, engine.registry_login(settings))
    return f"{repository}@{digest}"


def serving_containers(settings: Settings) -> list[str]:
    client: docker.DockerClient = engine.engine(settings)
    return sorted(
        str(c.labels[f"{containers.LABEL}.version"])
        for c in containers.of_model(client, MODEL)
        if c.labels[f"{containers.LABEL}.endpoint"].endswith(
            f":{state.load(settings.deploy_dir, MODEL).port}"  # type: ignore[union-attr]
        )
    )
