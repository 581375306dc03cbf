"""Push with retries: transient failures back off and retry, refused credentials fail at once."""

from __future__ import annotations

import time

import docker
from docker.errors import APIError, DockerException

from shipyard.errors import ImageError, StackError
from shipyard.stack import Registry, push

_REFUSED = ("unauthorized", "authentication required", "denied", "no basic auth credentials")


def push_with_retries(
    client: docker.DockerClient,
    reference: str,
    registry: Registry,
    attempts: int,
    backoff_s: float = 1.0,
) -> str:
    """Push `repository:tag` and return the registry's manifest digest."""
    repository, _, tag = reference.rpartition(":")
    for attempt in range(1, attempts + 1):
        try:
            return push(client, repository, tag, registry)
        except (StackError, APIError, DockerException) as e:
            message = str(e)
            if any(word in message.lower() for word in _REFUSED):
                raise ImageError(
                    f"Registry {registry.address} refused the credentials of user {registry.username!r}: "
                    "check SHIPYARD_REGISTRY_USERNAME / SHIPYARD_REGISTRY_PASSWORD (or the Secret block)."
                ) from e
            if attempt == attempts:
                raise ImageError(
                    f"Push of {reference} failed after {attempts} attempts: {message}"
                ) from e
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
