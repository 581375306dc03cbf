"""Serving containers on the Docker engine: run by digest, labelled, found, logged, removed."""

from __future__ import annotations

import contextlib

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.models.containers import Container
from docker.types import LogConfig

from shipyard.errors import DeployError
from shipyard.image.build import free_port, ready
from shipyard.waiting import TimedOut, wait_until

ROLE = "serving"
LABEL = "ai.shipyard"
LOGS = LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"})
"""Every container Shipyard runs keeps at most 30 MB of logs (the engine rotates them)."""


def name(model: str, endpoint_port: int, color: str) -> str:
    return f"shipyard-{model}-{endpoint_port}-{color}"


def run(
    client: docker.DockerClient,
    image: str,
    *,
    model: str,
    version: str,
    color: str,
    host: str,
    endpoint_port: int,
    environment: dict[str, str],
) -> tuple[Container, int]:
    """Start a serving container of `image` (pulled by digest) on a free port of `host`.

    A leftover container of the same slot (from an interrupted rollout) is removed first. The
    restart policy brings it back with the engine; its port is fixed, so HAProxy still finds it.
    """
    remove(client, name(model, endpoint_port, color))
    port = free_port(host)
    try:
        container = client.containers.run(
            image,
            detach=True,
            name=name(model, endpoint_port, color),
            ports={"8080/tcp": (host, port)},
            environment=environment,
            labels={
                f"{LABEL}.role": ROLE,
                f"{LABEL}.model": model,
                f"{LABEL}.version": version,
                f"{LABEL}.color": color,
                f"{LABEL}.endpoint": f"{host}:{endpoint_port}",
            },
            restart_policy={"Name": "unless-stopped"},
            log_config=LOGS,
            stop_signal="SIGTERM",
        )
    except DockerException as e:
        raise DeployError(f"The engine could not start {image} for {model} v{version}: {e}") from e
    return container, port


def _crashed(container: Container, restarts: int) -> bool:
    container.reload()
    return container.status in ("exited", "dead") or container.attrs["RestartCount"] > restarts


def wait_ready(container: Container, url: str, timeout_s: float) -> None:
    """Poll readiness; fail early if the container exits or restarts (from now on), with its
    last log lines."""
    container.reload()
    restarts = int(container.attrs["RestartCount"])
    try:
        wait_until(
            lambda: ready(url), timeout_s, 0.2, give_up=lambda: _crashed(container, restarts)
        )
        return
    except TimedOut:
        pass
    crashed = _crashed(container, restarts)
    logs = container.logs(tail=20).decode(errors="replace")
    raise DeployError(
        f"Gate 'readiness' failed: {container.name} "
        + (
            f"crashed before it was ready ({container.attrs['RestartCount']} restart(s), "
            f"status {container.status}). "
            if crashed
            else f"was not ready within {timeout_s:.0f} s (limit deploy.ready_seconds). "
        )
        + f"Last log lines:\n{logs}",
        ["readiness"],
    )


def running(client: docker.DockerClient, container_id: str) -> bool:
    try:
        return bool(client.containers.get(container_id).status == "running")
    except (NotFound, APIError):
        return False


def remove(client: docker.DockerClient, container_id: str, grace_s: int = 10) -> None:
    """Stop (SIGTERM: requests under way finish) and remove; a missing container is fine."""
    try:
        container = client.containers.get(container_id)
    except NotFound:
        return
    with contextlib.suppress(NotFound, APIError):
        container.stop(timeout=grace_s)
    with contextlib.suppress(NotFound):
        container.remove(force=True)


def of_model(client: docker.DockerClient, model: str) -> list[Container]:
    """Every serving container of `model`, on any endpoint."""
    return list(
        client.containers.list(
            all=True, filters={"label": [f"{LABEL}.role={ROLE}", f"{LABEL}.model={model}"]}
        )
    )


def health(container: Container) -> str:
    """The engine's view: `running (healthy)`, `exited (…)`, …"""
    state = container.attrs.get("State", {})
    checked = state.get("Health", {}).get("Status")
    return f"{container.status}{f' ({checked})' if checked else ''}"
