"""Serving containers on the Docker engine: run by digest, labelled, found, logged, removed.

Every serving container is locked down: a read-only root filesystem with a small tmpfs at
/tmp (the server's only writable place: Prometheus' multiprocess files), every capability
dropped, no privilege escalation, and the memory, CPU and process limits of the manifest's
`deploy.resources`. API keys never enter its environment: they are a read-only file
(`keys_file`), bind-mounted at `KEYS_FILE`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.models.containers import Container
from docker.types import LogConfig

from shipyard.errors import DeployError
from shipyard.image.build import free_port, ready
from shipyard.manifest import Resources
from shipyard.waiting import TimedOut, wait_until

ROLE = "serving"
LABEL = "ai.shipyard"
LOGS = LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"})
"""Every container Shipyard runs keeps at most 30 MB of logs (the engine rotates them)."""
IMAGE_USER = 10001
"""The uid (and gid) release images run as (`USER` in shipyard/image/Dockerfile.template)."""
KEYS_FILE = "/run/secrets/shipyard/api-keys"
"""Where a serving container reads its API keys (SHIPYARD_SERVE_API_KEYS_FILE)."""
TMP_MB = 64
TMPFS = {"/tmp": f"rw,size={TMP_MB}m,mode=1777,noexec,nosuid,nodev"}
"""The only writable place of a serving container: the server's multiprocess metrics files."""


def name(model: str, endpoint_port: int, color: str) -> str:
    return f"shipyard-{model}-{endpoint_port}-{color}"


def workers(resources: Resources) -> int:
    """Server processes for a container limited to `resources.cpus` cores: one per core (at
    least one, at most 8). The server's own default counts the host's CPUs, not the limit."""
    return max(1, min(8, math.ceil(resources.cpus)))


def write_keys(directory: Path, keys: list[str]) -> Path:
    """Write `keys` (one a line) to `directory`/api-keys, readable by the image's user only.

    As root: mode 0400, owned by the image's user (`IMAGE_USER`). Otherwise the file cannot be
    given away: mode 0444, in a directory only this user can enter (0700); the bind mount makes
    it readable inside the container without that directory. Replaced atomically: a running
    container keeps reading the file it was started with.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    file = directory / "api-keys"
    staged = directory / f".api-keys.{os.getpid()}"
    staged.unlink(missing_ok=True)
    root = os.geteuid() == 0
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400 if root else 0o444)
    with os.fdopen(descriptor, "w") as out:
        out.write("".join(f"{key}\n" for key in keys))
    if root:
        os.chown(staged, IMAGE_USER, IMAGE_USER)
    staged.replace(file)
    return file


def lockdown(resources: Resources, keys_file: Path | None) -> dict[str, Any]:
    """docker-py `containers.run` arguments of a locked-down serving container."""
    memory = f"{resources.memory_mb}m"
    return {
        "read_only": True,
        "tmpfs": TMPFS,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap: the limit is the memory the server may use
        "nano_cpus": int(resources.cpus * 1e9),
        "pids_limit": resources.pids,
        "volumes": (
            {str(keys_file): {"bind": KEYS_FILE, "mode": "ro"}} if keys_file is not None else {}
        ),
    }


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
    resources: Resources,
    keys_file: Path | None = None,
) -> tuple[Container, int]:
    """Start a locked-down serving container of `image` (pulled by digest) on a free port of
    `host`, limited to `resources`; with `keys_file`, it requires the keys it holds.

    A leftover container of the same slot (from an interrupted rollout) is removed first. The
    restart policy brings it back with the engine; its port is fixed, so HAProxy still finds it.
    """
    if keys_file is not None:
        environment = {**environment, "SHIPYARD_SERVE_API_KEYS_FILE": KEYS_FILE}
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
            **lockdown(resources, keys_file),
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


def lines(stream: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of an engine log stream, whose chunks may split or join lines; without their
    newline, the last one even if unterminated."""
    pending = b""
    for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending
