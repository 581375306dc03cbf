"""What `shipyard status` and `shipyard logs` read: the state, the engine and the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from docker.errors import NotFound

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
    deployment = state.load(settings.deploy_dir, model)
    if deployment is None or not deployment.instances:
        raise DeployError(f"Nothing of {model} is deployed: `shipyard release SOURCE` deploys it.")
    client = engine.engine(settings)
    instances = [
        i
        for i in sorted(deployment.instances.values(), key=lambda i: i.color)
        if color in (None, i.color)
    ]
    if not instances:
        raise DeployError(f"No {color} container of {model}: `shipyard status {model}` lists them.")
    if follow and len(instances) > 1:
        raise DeployError("--follow follows one container: add --color blue or --color green.")
    for instance in instances:
        prefix = f"[{instance.color} v{instance.version}] ".encode()
        container = client.containers.get(instance.container_id)
        stream = container.logs(tail=tail, stream=True, follow=follow)
        pending = b""
        for chunk in stream:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield prefix + line + b"\n"
        if pending:
            yield prefix + pending + b"\n"
