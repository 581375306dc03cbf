"""`python -m serving [--model_dir DIR] [--port P] [--workers N] …`: run the server with uvicorn.

Every `SHIPYARD_SERVE_*` setting is also a command-line flag (pydantic-settings' CLI). With
several workers, each process builds its settings from the environment this sets.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from shipyard_serving.config import ServeSettings


def _export(settings: ServeSettings) -> None:
    """Hand the settings to worker processes through their environment."""
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        text = ",".join(value) if isinstance(value, list) else str(value)
        os.environ[f"SHIPYARD_SERVE_{name.upper()}"] = text


def _fork_workers() -> None:
    """Import the app (NumPy, ONNX Runtime, orjson, the metrics) once, here, and fork the workers
    from this process. uvicorn spawns them: each is a new interpreter importing all of it again,
    side by side on the container's cores, which doubled a 2-worker container's time to ready
    (see BENCHMARKS.md). The model still loads in each worker (lifespan), after the fork, and
    each keeps its own metrics file (named by its pid). uvicorn has no option for this: its
    supervisor takes its process factory from `uvicorn._subprocess.spawn` (uvicorn is pinned in
    requirements.lock; tests/serving/test_operations.py checks the workers are forks)."""
    import multiprocessing

    import uvicorn._subprocess

    import shipyard_serving.app  # noqa: F401

    uvicorn._subprocess.spawn = multiprocessing.get_context("fork")  # type: ignore[assignment]


def run(settings: ServeSettings) -> None:
    # Before anything imports prometheus_client: it picks its storage at import time.
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="shipyard-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    _export(settings)
    if settings.workers > 1:
        _fork_workers()
    from shipyard_serving import listen  # imports uvicorn

    options: dict[str, Any] = dict(
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with each answer's head and body in one write (wire.py)
        http="shipyard_serving.wire:OneWriteProtocol",
        lifespan="on",
        access_log=False,
        # Nothing reads the client's address (no access log): skip the X-Forwarded-* layer.
        proxy_headers=False,
        server_header=False,  # no `server: uvicorn` on every answer
        log_level="warning",
        # On SIGTERM uvicorn stops accepting and lets in-flight requests finish.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    try:  # each worker on its own socket (listen.py)
        listen.run("shipyard_serving.app:create_app", reuse_port=settings.reuse_port, **options)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    run(ServeSettings(_cli_parse_args=True))  # type: ignore[call-arg]
