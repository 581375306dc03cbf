"""Build and normalize images on the Docker engine; smoke-test a release image."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import numpy as np
from docker.errors import APIError, BuildError, DockerException

from shipyard.errors import ImageError
from shipyard.image.normalize import normalize
from shipyard.waiting import TimedOut, wait_until


@dataclass(frozen=True)
class BuiltImage:
    reference: str
    """repository:tag, pointing at the normalized image."""
    image_id: str
    size_bytes: int


def docker_build(client: docker.DockerClient, context: Path, nocache: bool = False) -> str:
    """`docker build` the context; return the (not yet normalized) image id."""
    try:
        image, _ = client.images.build(
            path=str(context), rm=True, forcerm=True, pull=False, nocache=nocache
        )
    except BuildError as e:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in e.build_log)[
            -1500:
        ]
        hint = (
            " The engine's disk is full: free space (docker system prune) and retry."
            if "no space left on device" in log + str(e)
            else ""
        )
        raise ImageError(f"docker build failed: {e.msg}.{hint}\n{log}") from e
    except APIError as e:
        raise ImageError(f"The Docker engine refused the build: {e.explanation}") from e
    return str(image.id)


def build(client: docker.DockerClient, context: Path, reference: str, epoch: int) -> BuiltImage:
    """`docker build` the context, then normalize the result into `reference`."""
    built = docker_build(client, context)
    image_id = normalize(client, built, epoch, reference)
    with contextlib.suppress(APIError):  # shares layers with the normalized one, or already gone
        client.images.remove(built, noprune=False)
    size = int(client.images.get(image_id).attrs["Size"])
    return BuiltImage(reference, image_id, size)


def ready(url: str) -> bool:
    """Whether the server at `url` answers its readiness route."""
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


PARITY = 1e-5
"""How far a served probability may be from the validated model's."""


def differences(
    predictions: dict[str, list[Any]], labels: np.ndarray, probabilities: np.ndarray
) -> tuple[int, float]:
    """How many labels differ from the expected ones, and the largest |Δprob|."""
    mismatched = int((np.asarray(predictions["label"]) != labels).sum())
    delta = float(np.abs(np.asarray(predictions["probabilities"]) - probabilities).max())
    return mismatched, delta


def smoke_test(
    client: docker.DockerClient,
    image: str,
    x: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    timeout_s: float = 60,
) -> None:
    """Run the image on 127.0.0.1, wait for readiness, and require the validated predictions.

    The container is removed whatever happens.
    """
    port = free_port()
    container = None
    try:
        container = client.containers.run(
            image,
            detach=True,
            ports={"8080/tcp": ("127.0.0.1", port)},
            environment={"SHIPYARD_SERVE_WORKERS": "1"},
            labels={"ai.shipyard.role": "smoke-test"},
        )
        url = f"http://127.0.0.1:{port}"

        def exited() -> bool:
            container.reload()
            return bool(container.status == "exited")

        try:
            wait_until(lambda: ready(url), timeout_s, 0.3, give_up=exited)
        except TimedOut:
            logs = container.logs(tail=30).decode(errors="replace")
            raise ImageError(
                f"Smoke test: the container did not become ready within {timeout_s:.0f} s "
                f"(status {container.status}). Last log lines:\n{logs}"
            ) from None
        answer = httpx.post(f"{url}/invocations", json={"inputs": x.tolist()}, timeout=30)
        if answer.status_code != 200:
            raise ImageError(
                f"Smoke test: /invocations answered {answer.status_code}: {answer.text[:300]}"
            )
        mismatched, delta = differences(answer.json()["predictions"], labels, probabilities)
        if mismatched or delta > PARITY:
            raise ImageError(
                f"Smoke test: the image's predictions differ from the validated model: "
                f"{mismatched} of {len(labels)} labels, max |Δprob| {delta:.2e} (limit {PARITY:.0e})"
            )
    except DockerException as e:
        raise ImageError(f"Smoke test: the engine could not run {image}: {e}") from e
    finally:
        if container is not None:
            container.remove(force=True)
