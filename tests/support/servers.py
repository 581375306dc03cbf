"""Inference servers for tests: the app in this process (protocol tests: no socket, no second
process), or a real `python -m shipyard_serving` on 127.0.0.1 (what must be a process:
workers, signals, timeouts, sockets)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import numpy as np
from starlette.testclient import TestClient

from shipyard.image.build import free_port
from shipyard.project import Dataset
from shipyard_serving.app import create_app
from shipyard_serving.config import ServeSettings

__all__ = ["KEY", "InProcessServer", "Server", "free_port", "rows", "start_server"]

KEY = "test-key-0123456789"


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout=30)
        self.log.unlink(missing_ok=True)
        return code


def start_server(bundle: Path, env: Mapping[str, str] | None = None, **settings: object) -> Server:
    """`python -m shipyard_serving` on a free port with `settings` as SHIPYARD_SERVE_* variables
    and `env` added to a copy of this environment (without its SHIPYARD_SERVE_* and
    PROMETHEUS_MULTIPROC_DIR)."""
    port = free_port()
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SHIPYARD_SERVE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    environment.update(env or {})
    environment.update(
        {
            "SHIPYARD_SERVE_MODEL_DIR": str(bundle),
            "SHIPYARD_SERVE_PORT": str(port),
            "SHIPYARD_SERVE_WORKERS": "1",
        }
    )
    environment.update({f"SHIPYARD_SERVE_{k.upper()}": str(v) for k, v in settings.items()})
    with tempfile.NamedTemporaryFile(prefix="shipyard-serve-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "shipyard_serving"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    server = Server(process, f"http://127.0.0.1:{port}", Path(log.name))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = server.log.read_text()
            server.stop()
            raise RuntimeError(f"server exited: {said}")
        try:
            # 401: up, with health behind a key
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code in (200, 401):
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    server.stop()
    raise RuntimeError("server not ready within 60 s")


def rows(data: Dataset, n: int) -> list[list[float]]:
    return np.asarray(data.x_test[:n]).tolist()


class InProcessServer:
    """The server's ASGI app in this process, its lifespan run by Starlette's test client.

    Exceptions come back as the 500 a client would see, not raised into the test.
    """

    def __init__(self, bundle: Path, **settings: object) -> None:
        app = create_app(ServeSettings(model_dir=bundle, workers=1, **settings))  # type: ignore[arg-type]
        self._client = TestClient(app, raise_server_exceptions=False)
        self.client = self._client

    def __enter__(self) -> InProcessServer:
        self.client = self._client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.__exit__(*exc)
