"""What `shipyard status` and `shipyard logs` read: the state, the engine and the proxy; and
what an image says it holds (`verify_image`), read before a registered version is deployed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound, NotFound

from shipyard import engine
from shipyard.deploy import containers, state
from shipyard.deploy.proxy import Proxy
from shipyard.errors import DeployError, ShipyardError
from shipyard.settings import Settings


def describe(settings: Settings, model: str) -> dict[str, Any] | None:
    """The endpoint, each slot's version, container health, weight and proxy check; or None."""
    deployment = state.load(settings.deploy_dir, model)
    if deployment is None:
        return None
    try:
        client = engine.engine(settings)
    except ShipyardError:
        client = None
    proxy = (
        Proxy(settings.deploy_dir / model, deployment.host, deployment.port, client)
        if client
        else None
    )
    try:
        checks = proxy.stats() if proxy and proxy.pid() else {}
    except DeployError:
        checks = {}
    slots = []
    for color, instance in sorted(deployment.instances.items()):
        if client is None:
            health = "engine down"
        else:
            try:
                container = client.containers.get(instance.container_id)
                restarts = int(container.attrs["RestartCount"])
                health = f"{containers.health(container)}, {restarts} restart" + (
                    "s" if restarts != 1 else ""
                )
            except NotFound:
                health = "missing"
        slots.append(
            {
                "color": color,
                "role": "serving" if color == deployment.live else "candidate",
                "version": instance.version,
                "image": instance.image,
                "container": instance.container_id[:12],
                "container_port": instance.port,
                "health": health,
                "weight": deployment.weights.get(color, 0),
                "proxy_check": checks[color].status if color in checks else "-",
            }
        )
    return {
        "endpoint": deployment.url,
        "proxy": proxy.describe() if proxy else "engine down",
        "strategy": deployment.policy.strategy,
        "slots": slots,
    }


def logs(
    settings: Settings, model: str, tail: int, follow: bool, color: str | None = None
) -> Iterator[bytes]:
    """The serving containers' log lines, each prefixed with its color and version."""
    instances = chosen(state.load(settings.deploy_dir, model), model, follow, color)
    client = engine.engine(settings)
    for instance in instances:
        prefix = f"[{instance.color} v{instance.version}] ".encode()
        container = client.containers.get(instance.container_id)
        stream = container.logs(tail=tail, stream=True, follow=follow)
        for line in containers.lines(stream):
            yield prefix + line + b"\n"


def chosen(
    deployment: state.Deployment | None, model: str, follow: bool, color: str | None
) -> list[state.Instance]:
    """The slots whose logs `shipyard logs` reads: both, or the one `--color` names."""
    if deployment is None or not deployment.instances:
        raise DeployError(f"Nothing of {model} is deployed: `shipyard release SOURCE` deploys it.")
    instances = [
        i
        for i in sorted(deployment.instances.values(), key=lambda i: i.color)
        if color in (None, i.color)
    ]
    if not instances:
        raise DeployError(f"No {color} slot of {model}: `shipyard status {model}` lists them.")
    if follow and len(instances) > 1:
        raise DeployError("--follow follows one slot: add --color blue or --color green.")
    return instances


ONNX_LABEL = "ai.shipyard.onnx.sha256"
"""The image label naming the sha256 of the model.onnx it serves (shipyard/image/context.py)."""


def registry_of(image: str) -> str:
    """The registry host of an image reference (Docker's rule: a first path component with a
    dot, a colon or `localhost` is a host; otherwise Docker Hub)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def provenance_failures(
    registry: str, image: str, label: str | None, expected: str | None
) -> list[str]:
    """Why `image` may not be deployed as a version tagged `onnx_sha256` = `expected`: it is
    not in `registry`, or its `ONNX_LABEL` (`label`) is not that tag. Empty: it may."""
    if registry_of(image) != registry:
        return [
            f"it is in registry {registry_of(image)!r}, not the configured {registry!r} "
            f"(SHIPYARD_REGISTRY), so its {ONNX_LABEL} label was not read (the version's MLflow "
            f"tag onnx_sha256 is {expected})"
        ]
    if expected is None:
        return [
            f"the version has no MLflow tag onnx_sha256 to check its {ONNX_LABEL} label against"
        ]
    if label != expected:
        found = f"label {ONNX_LABEL}={label}" if label else f"no {ONNX_LABEL} label"
        return [f"it has {found}, but the version's MLflow tag onnx_sha256 is {expected}"]
    return []


def image_labels(client: docker.DockerClient, image: str, settings: Settings) -> dict[str, str]:
    """The labels of `image` (by digest), as the engine reads them; pulled first if absent."""
    try:
        found = client.images.get(image)
    except ImageNotFound:
        try:
            found = client.images.pull(image, auth_config=engine.registry_login(settings).auth())
        except (DockerException, ShipyardError) as e:
            raise DeployError(
                f"Image {image} cannot be pulled to read its labels ({e}): check that the "
                f"registry {settings.registry} is up and holds it, or re-release the version."
            ) from e
    return dict(found.labels or {})


def verify_image(
    settings: Settings, model: str, version: str, image: str, onnx_sha256: str | None
) -> None:
    """Refuse (`DeployError`) to deploy `image` as `model` v`version` unless it comes from the
    configured registry and its `ONNX_LABEL` equals the version's tag `onnx_sha256`: what
    serves is then the registered model, whatever was pushed or tagged since."""
    label = None
    if registry_of(image) == settings.registry:  # never pull from a registry not configured
        label = image_labels(engine.engine(settings), image, settings).get(ONNX_LABEL)
    failures = provenance_failures(settings.registry, image, label, onnx_sha256)
    if failures:
        raise DeployError(
            f"Refusing to deploy {model} v{version} from image {image}: "
            + "; ".join(failures)
            + ". Nothing was changed. Re-release the version (`shipyard release SOURCE`) or "
            "rebuild its image from the registered ONNX file (the `nightly-rebuild` flow) so "
            "that its image is pushed to the configured registry with the matching label.",
            [f"Gate 'provenance' failed: {f}" for f in failures],
        )
