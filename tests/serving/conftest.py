"""Serving fixtures: a release bundle of the reference scikit-learn model, and real servers
(`python -m serving`, uvicorn on 127.0.0.1) started with given settings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from shipyard.manifest import load_manifest
from shipyard.project import Dataset, load_dataset
from tasks.export import export_onnx
from tasks.train import train_model
from tests.conftest import EXAMPLES

KEY = "test-key-0123456789"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.onnx + shipyard.json for digits-sklearn (fp32), as a release writes them."""
    project = EXAMPLES / "digits-sklearn"
    manifest = load_manifest(project)
    data = load_dataset(project, manifest)
    out = tmp_path_factory.mktemp("bundle")
    trained = train_model(project, manifest, data, out / "train")
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process, self.url = process, url

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=30)


def start_server(bundle: Path, **settings: object) -> Server:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SHIPYARD_SERVE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        {
            "SHIPYARD_SERVE_MODEL_DIR": str(bundle),
            "SHIPYARD_SERVE_PORT": str(port),
            "SHIPYARD_SERVE_WORKERS": "1",
        }
    )
    env.update({f"SHIPYARD_SERVE_{k.upper()}": str(v) for k, v in settings.items()})
    log = tempfile.NamedTemporaryFile(prefix="shipyard-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "serving"], env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {Path(log.name).read_text()}")
        try:
            # 401: up, with health behind a key
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code in (200, 401):
                return Server(process, url)
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server not ready within 60 s")


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
def server(bundle: Path) -> Iterator[Server]:
    """One server with an API key, shared by a module's tests."""
    running = start_server(bundle, api_keys=KEY, max_batch_rows=64, max_body_bytes=65536)
    yield running
    running.stop()


def rows(data: Dataset, n: int) -> list[list[float]]:
    return np.asarray(data.x_test[:n]).tolist()
