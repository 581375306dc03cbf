"""A model deployed behind its own endpoint, shared by the deploy tests of a run; each test
starts from one version serving (`Endpoint.settle`) and asks for what else it needs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.deploy import containers
from shipyard.deploy.endpoint import undeploy
from shipyard.flows.release import release
from shipyard.settings import Settings
from tests.support.endpoints import MODEL, Endpoint, aliases
from tests.support.projects import EXAMPLES


@pytest.fixture(scope="package")
def _deployed(
    tmp_path_factory: pytest.TempPathFactory,
    _mlflow_template: Path,
    docker_stack: dict[str, str],
    prefect_server: str,
) -> Iterator[Endpoint]:
    """digits-sklearn released and deployed (a first deploy) on a free port of 127.0.0.1, once
    for the tests/deploy package (a release costs most of a minute), and undeployed when the
    package is done: later tests (the image tests) remove this model's local images."""
    root = tmp_path_factory.mktemp("deploy")
    (root / "state").mkdir()
    shutil.copy(_mlflow_template, root / "state" / "mlflow.db")
    settings = Settings(state_dir=root / "state", latency_runs=50)
    project = root / "project"
    shutil.copytree(EXAMPLES / MODEL, project, ignore=shutil.ignore_patterns("__pycache__"))
    port = containers.free_port("127.0.0.1")
    with (project / "shipyard.yaml").open("a") as manifest:
        manifest.write(
            f"deploy: {{port: {port}, step_seconds: 1.5, keep_blue_seconds: 1, ready_seconds: 30}}\n"
        )
    summary = release(source=str(project), settings=settings)
    assert summary.status == "deployed", summary
    assert summary.endpoint is not None
    yield Endpoint(settings, project, summary.endpoint, summary, aliases(settings, MODEL))
    undeploy(settings, MODEL)


@pytest.fixture
def endpoint(_deployed: Endpoint) -> Endpoint:
    """The shared endpoint with one version, `champion`, serving all traffic."""
    _deployed.settle()
    return _deployed
