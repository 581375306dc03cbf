"""Push with retries: transient failures back off and retry, refused credentials fail at once."""

from __future__ import annotations

import time
from dataclasses import dataclass

import docker
from docker.errors import APIError, DockerException

from shipyard import engine, registry
from shipyard.contracts import pinned
from shipyard.engine import RegistryLogin, push
from shipyard.errors import ImageError, StackError
from shipyard.image.release import ReleaseImage
from shipyard.settings import Settings

_REFUSED = ("unauthorized", "authentication required", "denied", "no basic auth credentials")


def push_with_retries(
    client: docker.DockerClient,
    reference: str,
    registry: RegistryLogin,
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


@dataclass(frozen=True)
class PushedImage:
    reference: str
    digest: str

    @property
    def pinned(self) -> str:
        """repository@digest: what deploys pull."""
        return pinned(self.reference, self.digest)


def push_release(
    image: ReleaseImage, model: str, version: str, run_id: str, settings: Settings
) -> PushedImage:
    """Push with retries; tag the MLflow version with `image` and `image_digest`."""
    client = engine.engine(settings)
    login = engine.registry_login(settings)
    digest = push_with_retries(client, image.reference, login, settings.push_attempts)
    pushed = PushedImage(image.reference, digest)
    mlflow = registry.client(settings)
    registry.tag_image(mlflow, model, version, pushed.reference, digest)
    mlflow.log_artifact(run_id, str(image.sbom), "image")
    mlflow.log_artifact(run_id, str(image.golden), "image")
    mlflow.log_artifact(run_id, str(image.metadata), "image")
    return pushed
