"""Serving fixtures: a release bundle of the reference scikit-learn model; the app in-process
for protocol tests, and real servers (`python -m shipyard_serving`, uvicorn on 127.0.0.1) for
what needs a process."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shipyard.export import export_onnx
from shipyard.manifest import Manifest, load_manifest
from shipyard.project import Dataset, load_dataset
from shipyard.training import TrainedModel
from tests.support.projects import EXAMPLES
from tests.support.servers import KEY, InProcessServer, Server, start_server


@pytest.fixture(scope="session")
def bundle(
    tmp_path_factory: pytest.TempPathFactory,
    sklearn_trained: tuple[Manifest, Dataset, TrainedModel],
) -> Path:
    """model.onnx + shipyard.json for digits-sklearn (fp32), as a release writes them."""
    manifest, _, trained = sklearn_trained
    out = tmp_path_factory.mktemp("bundle")
    export_onnx(trained, manifest, out).rename(out / "model.onnx")
    (out / "shipyard.json").write_text(
        json.dumps(
            {
                "name": manifest.name,
                "version": "7",
                "labels": manifest.labels,
                "git_sha": "a" * 40,
                "fingerprint": "f" * 64,
                "variant": "fp32",
            }
        )
    )
    return out


@pytest.fixture(scope="session")
def digits() -> Dataset:
    project = EXAMPLES / "digits-sklearn"
    return load_dataset(project, load_manifest(project))


@pytest.fixture
def serve(bundle: Path) -> Iterator[Callable[..., Server]]:
    """Start servers with given settings; every one is stopped at the end of the test."""
    servers: list[Server] = []

    def start(**settings: object) -> Server:
        servers.append(start_server(bundle, **settings))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[InProcessServer]:
    """The app with an API key, in this process, shared by a module's protocol tests."""
    with InProcessServer(
        bundle, api_keys=[KEY], max_batch_rows=64, max_body_bytes=65536
    ) as running:
        yield running
