"""The runtime side of Docker: the engine client, the image registry's login, pushes, and the
base image builds use. Builds, pushes and deploys call this; bringing an engine or a registry
up is provisioning (`shipyard.stack`), which this module never does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import docker
from docker.errors import APIError, DockerException, ImageNotFound

from shipyard.errors import StackError
from shipyard.settings import Settings


@dataclass(frozen=True)
class RegistryLogin:
    """Where release images go, and the credentials to push and pull them."""

    address: str
    username: str
    password: str

    def auth(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}

    def __repr__(self) -> str:  # never print the password
        return f"RegistryLogin(address={self.address!r}, username={self.username!r})"


def engine(settings: Settings | None = None) -> docker.DockerClient:
    """A client of the engine at DOCKER_HOST (or the default socket), or a `StackError`."""
    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except DockerException as e:
        raise StackError(
            f"No Docker engine answers at {os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')} "
            f"({e}). Start one, or run `shipyard stack up` to start Debian's dockerd."
        ) from e


def registry_login(settings: Settings) -> RegistryLogin:
    """The configured credentials, a Prefect Secret block's, or the local stack's generated ones."""
    if settings.registry_password is not None:
        return RegistryLogin(
            settings.registry,
            settings.registry_username,
            settings.registry_password.get_secret_value(),
        )
    if settings.registry_password_block:
        from prefect.blocks.system import Secret

        return RegistryLogin(
            settings.registry,
            settings.registry_username,
            str(Secret.load(settings.registry_password_block).get()),  # type: ignore[union-attr]
        )
    stored = settings.registry_password_file
    if stored.is_file():
        return RegistryLogin(
            settings.registry, settings.registry_username, stored.read_text().strip()
        )
    raise StackError(
        f"No password for registry {settings.registry}: set SHIPYARD_REGISTRY_PASSWORD, "
        "SHIPYARD_REGISTRY_PASSWORD_BLOCK, or run `shipyard stack up` for a local registry."
    )


def push(client: docker.DockerClient, repository: str, tag: str, login: RegistryLogin) -> str:
    """Push `repository:tag`; return the manifest digest the registry stored."""
    digest = None
    for line in client.images.push(
        repository, tag, auth_config=login.auth(), stream=True, decode=True
    ):
        if "error" in line:
            raise StackError(f"push of {repository}:{tag} failed: {line['error']}")
        digest = line.get("aux", {}).get("Digest", digest)
    if digest is None:
        raise StackError(f"push of {repository}:{tag} reported no digest")
    return str(digest)


def recorded_base(settings: Settings) -> str | None:
    """The base image `shipyard stack up` built and recorded, if it did."""
    path = settings.stack_file
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text()).get("base_image")
    return str(recorded) if recorded else None


def base_image(settings: Settings) -> str:
    """The base a build uses: the configured image if the engine has it, else the stack's."""
    recorded = recorded_base(settings)
    if recorded:
        try:
            engine(settings).images.get(settings.base_image)
        except (ImageNotFound, APIError, StackError):
            return recorded
    return settings.base_image
