"""Deployed endpoints for tests: a model released and served behind its own HAProxy, a steady
load on it (`tests/support/load.py`), images that fail in chosen ways, and a second model
served from the first one's registered images.

A test states what it needs (`Endpoint.previous()` releases a version when there is none,
`Endpoint.settle()` leaves one version serving), so any test runs alone or in any order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
from prefect.settings import PREFECT_API_URL

from shipyard import engine, registry
from shipyard.contracts import ReleaseSummary
from shipyard.deploy import containers, state
from shipyard.flows.release import release
from shipyard.flows.rollout import rollout, target_of_version
from shipyard.manifest import DeployPolicy, Resources
from shipyard.settings import Settings
from tests.support.projects import ROOT, edit_manifest

MODEL = "digits-sklearn"
SHIPYARD = str(Path(sys.executable).parent / "shipyard")


@dataclass
class Endpoint:
    settings: Settings
    project: Path
    url: str
    first: ReleaseSummary
    """The release that deployed the endpoint."""
    first_aliases: dict[str, str]
    """The aliases right after that first release."""
    seed: int = 0
    """The training seed of the last release: each release takes a new one (a new version)."""

    def aliases(self) -> dict[str, str]:
        return aliases(self.settings, MODEL)

    def deployment(self) -> state.Deployment:
        deployed = state.load(self.settings.deploy_dir, MODEL)
        assert deployed is not None
        return deployed

    def release(self, **parameters: Any) -> ReleaseSummary:
        """A new version (the next training seed, never released before), released and
        deployed."""
        text = (self.project / "shipyard.yaml").read_text()
        old = next(line for line in text.splitlines() if line.startswith("seed:"))
        self.seed += 1
        edit_manifest(self.project, old, f"seed: {self.seed}")
        return release(source=str(self.project), settings=self.settings, **parameters)

    def previous(self) -> str:
        """The `previous` version, released first (blue-green) when there is none yet."""
        if "previous" not in self.aliases():
            summary = self.release(strategy="blue-green")
            assert summary.status == "deployed", summary
        return self.aliases()["previous"]

    def settle(self) -> None:
        """One version (`champion`) serving with all the traffic, nothing else running: when
        a test left anything else, the champion is rolled out again, which removes it."""
        d = self.deployment()
        champion = self.aliases()["champion"]
        if (
            d.candidate is None
            and d.weights == {d.live: 100}
            and serving_containers(self.settings) == [champion]
        ):
            return
        mlflow = registry.client(self.settings)
        version = registry.version_by_alias(mlflow, MODEL, registry.CHAMPION)
        assert version is not None
        target = target_of_version(self.settings, MODEL, version)
        rollout(
            target,
            "blue-green",
            d.policy.model_copy(update={"keep_blue_seconds": 0}),
            self.settings,
        )
        assert serving_containers(self.settings) == [champion]

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`shipyard ARGS` on this endpoint's state and the test Prefect server."""
        return cli(self.settings, *args, **env)


def aliases(settings: Settings, model: str) -> dict[str, str]:
    mlflow = registry.client(settings)
    return {a.alias: a.version for a in registry.aliases(mlflow, model)}


def cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The `shipyard` command in a subprocess, on `settings`' state directory and the session's
    Prefect server (so its locks are the tests' locks)."""
    return subprocess.run(
        [SHIPYARD, *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "SHIPYARD_STATE_DIR": str(settings.state_dir),
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            **env,
        },
        timeout=180,
    )


def served_version(url: str, key: str | None = None) -> str:
    """The version the endpoint's V2 metadata names."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = httpx.get(f"{url}/v2/models/{MODEL}", headers=headers, timeout=5)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["versions"][0])


@contextmanager
def steady_load(
    url: str, seconds: float = 240, key: str | None = None, rate: float = 0
) -> Iterator[dict[str, Any]]:
    """Two clients sending one-row requests (at `rate` requests/s in all, if given) until the
    block ends; then their counts."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.load", url, MODEL, "--seconds", str(seconds)]
        + (["--key", key] if key else [])
        + (["--rate", str(rate)] if rate else []),
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
    context.mkdir(exist_ok=True)
    (context / "model.onnx").write_bytes(onnx)
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY model.onnx /model/model.onnx\n")
    repository = base.partition("@")[0]
    client.images.build(
        path=str(context), tag=f"{repository}:{tag}", pull=False, rm=True, forcerm=True
    )
    digest = engine.push(client, repository, tag, engine.registry_login(settings))
    return f"{repository}@{digest}"


def serving_containers(settings: Settings, model: str = MODEL) -> list[str]:
    """The versions of `model`'s containers on its recorded endpoint, sorted."""
    client: docker.DockerClient = engine.engine(settings)
    deployed = state.load(settings.deploy_dir, model)
    assert deployed is not None, f"{model} is not deployed"
    return sorted(
        str(c.labels[f"{containers.LABEL}.version"])
        for c in containers.of_model(client, model)
        if c.labels[f"{containers.LABEL}.endpoint"].endswith(f":{deployed.port}")
    )


def register_copy(
    settings: Settings, model: str, name: str, alias: str, tags: dict[str, str] | None = None
) -> str:
    """A version of a second model `name`, registered from `model`'s `alias` version (its run,
    pushed image and golden data; its tags, but for `tags`): served like any release, without
    training one."""
    mlflow = registry.client(settings)
    original = registry.version_by_alias(mlflow, model, alias)
    assert original is not None, f"{model} has no {alias!r} version"
    if not mlflow.search_registered_models(filter_string=f"name = '{name}'"):
        mlflow.create_registered_model(name)
    copy = mlflow.create_model_version(
        name, str(original.source), run_id=original.run_id, tags={**original.tags, **(tags or {})}
    )
    return str(copy.version)


def deploy_copy(
    settings: Settings, name: str, version: str, port: int, resources: Resources | None = None
) -> str:
    """Roll out version `version` of the copied model `name` on `port` (blue-green once one
    serves), its containers limited to `resources` (default: the manifest's defaults); return
    its endpoint URL."""
    mlflow = registry.client(settings)
    target = target_of_version(settings, name, mlflow.get_model_version(name, version))
    policy = DeployPolicy(
        port=port, keep_blue_seconds=1, ready_seconds=30, resources=resources or Resources()
    )
    return rollout(target, "blue-green", policy, settings, record_policy=True).endpoint
