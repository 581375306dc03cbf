"""A second stack for a test, as a user starts one: its own stack and state directories and
ports, on the engine, registry and base image `make test` brought up."""

from __future__ import annotations

import os
from pathlib import Path

from shipyard import engine
from shipyard.image.build import free_port
from shipyard.settings import Settings


def stack_env(root: Path, base_image: str) -> tuple[dict[str, str], dict[str, int]]:
    """The environment of `shipyard stack up` for a stack under `root` (no PREFECT_API_*: the
    stack's own server), and its service ports by name."""
    ports = {name: free_port("127.0.0.1") for name in ("prefect", "mlflow", "webhook")}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")},
        "SHIPYARD_STACK_DIR": str(root / "stack"),
        "SHIPYARD_STATE_DIR": str(root / "state"),
        "SHIPYARD_PREFECT_PORT": str(ports["prefect"]),
        "SHIPYARD_MLFLOW_PORT": str(ports["mlflow"]),
        "SHIPYARD_WEBHOOK_PORT": str(ports["webhook"]),
        "SHIPYARD_REGISTRY_PASSWORD": engine.registry_login(Settings()).password,
        "SHIPYARD_BASE_IMAGE": base_image,
        "SHIPYARD_LATENCY_RUNS": "50",
    }
    return env, ports
