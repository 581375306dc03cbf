"""What the Swarm target asks Swarm for: an endpoint's overlay network, the API keys as a
Docker secret, and one service per version (slot), as docker-py arguments.

A version's service runs `replicas` tasks of the release image (by digest), spread over the
nodes (`spread` on node.id), restarted on failure, each locked down like a container of the
Docker target: read-only root with a tmpfs /tmp, every capability dropped, the memory and CPU
limits of `deploy.resources`. It keeps the image's HEALTHCHECK (its command) and checks it
every 2 s, so a new task counts as running (and enters Swarm's DNS) seconds after it is ready.
Its endpoint mode is `dnsrr`: no virtual IP, which needs IPVS; HAProxy finds the tasks through
`tasks.<service>` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.models.services import Service
from docker.types import (
    EndpointSpec,
    Healthcheck,
    Mount,
    PlacementPreference,
    Resources,
    RestartPolicy,
    SecretReference,
    ServiceMode,
    UpdateConfig,
)

from shipyard.deploy.containers import IMAGE_USER, LABEL, ROLE, TMP_MB, lines
from shipyard.errors import DeployError
from shipyard.manifest import Resources as Limits

PORT = 8080
"""Where the serving image listens, inside each task."""
KEYS_SECRET_FILE = "shipyard-api-keys"
"""The secret's file name under /run/secrets in each task (SHIPYARD_SERVE_API_KEYS_FILE)."""
HEALTH_INTERVAL_S = 2


def service_name(model: str, endpoint_port: int, color: str) -> str:
    return f"shipyard-{model}-{endpoint_port}-{color}"


def network_name(model: str, endpoint_port: int) -> str:
    return f"shipyard-{model}-{endpoint_port}"


def ensure_network(client: docker.DockerClient, name: str) -> str:
    """The endpoint's overlay network (attachable), created once; its id."""
    with contextlib.suppress(NotFound):
        return str(client.networks.get(name).id)
    try:
        network = client.networks.create(
            name, driver="overlay", attachable=True, labels={f"{LABEL}.role": "swarm-network"}
        )
    except APIError as e:
        raise DeployError(
            f"The overlay network {name} could not be created ({e.explanation}): is this engine "
            "a swarm manager? `shipyard stack up --nodes N` makes it one."
        ) from e
    return str(network.id)


def ensure_keys_secret(client: docker.DockerClient, model: str, keys: list[str]) -> tuple[str, str]:
    """The API keys (one a line) as a Docker secret named by a digest of its content (secrets
    are immutable: new keys are a new secret); its id and name. Never logged."""
    data = "".join(f"{key}\n" for key in keys)
    name = f"shipyard-{model}-keys-{hashlib.sha256(data.encode()).hexdigest()[:12]}"
    existing = client.secrets.list(filters={"name": name})
    for secret in existing:
        if secret.name == name:
            return str(secret.id), name
    secret = client.secrets.create(name=name, data=data, labels={f"{LABEL}.model": model})
    return str(secret.id), name


def remove_unused_secrets(client: docker.DockerClient, model: str, keep: set[str]) -> None:
    for secret in client.secrets.list(filters={"label": f"{LABEL}.model={model}"}):
        if secret.name not in keep:
            with contextlib.suppress(APIError):  # still used by a service: the next time
                secret.remove()


def version_service(
    *,
    image: str,
    model: str,
    version: str,
    color: str,
    endpoint_port: int,
    replicas: int,
    network: str,
    environment: dict[str, str],
    resources: Limits,
    secret: tuple[str, str] | None,
) -> dict[str, Any]:
    """docker-py `services.create` arguments of one version's service."""
    labels = {
        f"{LABEL}.role": ROLE,
        f"{LABEL}.model": model,
        f"{LABEL}.version": version,
        f"{LABEL}.color": color,
        f"{LABEL}.endpoint": f"127.0.0.1:{endpoint_port}",
    }
    env = dict(environment)
    secrets = []
    if secret is not None:
        secret_id, secret_name = secret
        secrets.append(
            SecretReference(
                secret_id,
                secret_name,
                filename=KEYS_SECRET_FILE,
                uid=str(IMAGE_USER),
                gid=str(IMAGE_USER),
                mode=0o400,
            )
        )
        env["SHIPYARD_SERVE_API_KEYS_FILE"] = f"/run/secrets/{KEYS_SECRET_FILE}"
    return {
        "image": image,
        "name": service_name(model, endpoint_port, color),
        "labels": labels,
        "container_labels": labels,
        "env": [f"{k}={v}" for k, v in sorted(env.items())],
        "mode": ServiceMode("replicated", replicas=replicas),
        "networks": [network],
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
        "preferences": [PlacementPreference("spread", "node.id")],
        "restart_policy": RestartPolicy(condition="any", delay=1_000_000_000, max_attempts=0),
        "update_config": UpdateConfig(parallelism=1, order="start-first", failure_action="pause"),
        "resources": Resources(
            cpu_limit=int(resources.cpus * 1e9), mem_limit=resources.memory_mb * 1024 * 1024
        ),
        # The image's HEALTHCHECK command (an empty test keeps it), checked more often.
        "healthcheck": Healthcheck(
            interval=HEALTH_INTERVAL_S * 1_000_000_000,
            timeout=3_000_000_000,
            retries=3,
            start_period=30_000_000_000,
        ),
        "read_only": True,
        "mounts": [
            Mount("/tmp", "", type="tmpfs", tmpfs_size=TMP_MB * 1024 * 1024, tmpfs_mode=0o1777)
        ],
        "cap_drop": ["ALL"],
        "secrets": secrets,
        "stop_signal": "SIGTERM",
        "stop_grace_period": 10_000_000_000,
        "log_driver": "json-file",
        "log_driver_options": {"max-size": "10m", "max-file": "3"},
    }


def create_service(client: docker.DockerClient, spec: dict[str, Any]) -> Service:
    """Create the service (a leftover of the same name, from a cut-off rollout, goes first);
    the registry credentials the client logged in with go with it (`--with-registry-auth`)."""
    remove_service(client, spec["name"])
    try:
        return client.services.create(**spec)
    except APIError as e:
        raise DeployError(
            f"Swarm refused the service {spec['name']} of {spec['image']}: {e.explanation}"
        ) from e


def find_service(client: docker.DockerClient, name: str) -> Service | None:
    try:
        return client.services.get(name)
    except NotFound:
        return None


def remove_service(client: docker.DockerClient, name: str) -> None:
    """Remove the service (its tasks get SIGTERM and the grace period); a missing one is fine."""
    service = find_service(client, name)
    if service is not None:
        with contextlib.suppress(NotFound):
            service.remove()


def tasks(service: Service, state: str = "running") -> list[dict[str, Any]]:
    """The service's tasks whose desired and current states are `state`."""
    return [
        t for t in service.tasks(filters={"desired-state": state}) if t["Status"]["State"] == state
    ]


def scale(client: docker.DockerClient, service: Service, count: int) -> None:
    """Set the service's replica count, and nothing else. (docker-py's `Service.scale` sends
    the task template back with an empty DNS config where there was none: Swarm sees a new
    template and replaces every task, one by one.)"""
    _update(client, service, f"scale {service.name} to {count}", Replicated={"Replicas": count})


def restart_tasks(client: docker.DockerClient, service: Service) -> None:
    """Replace every task of the service with the same spec, as `docker service update --force`
    does: one at a time, the new task started (and healthy) before the old one stops (the
    service's start-first update config), so the scheduler places each new task on the node
    with the fewest of them now."""
    template = dict(service.attrs["Spec"]["TaskTemplate"])
    template["ForceUpdate"] = int(template.get("ForceUpdate", 0)) + 1
    _update(client, service, f"restart the tasks of {service.name}", template)


def _update(
    client: docker.DockerClient,
    service: Service,
    what: str,
    task_template: dict[str, Any] | None = None,
    **mode: Any,
) -> None:
    """Send the service's spec back with only `task_template` or `mode` changed."""
    spec = service.attrs["Spec"]
    try:
        client.api.update_service(
            service.id,
            service.version,
            task_template=task_template or spec["TaskTemplate"],
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=mode or spec["Mode"],
            update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
        )
    except APIError as e:
        raise DeployError(f"Swarm refused to {what}: {e.explanation}") from e


def update_state(service: Service) -> str | None:
    """The state of the service's last update (`updating`, `completed`, `paused`, …), if any."""
    status = service.attrs.get("UpdateStatus") or {}
    return status.get("State")


def replicas(service: Service) -> int:
    return int(service.attrs["Spec"]["Mode"]["Replicated"]["Replicas"])


def node_names(client: docker.DockerClient) -> dict[str, str]:
    """The swarm's node ids to hostnames."""
    return {node.id: node.attrs["Description"]["Hostname"] for node in client.nodes.list()}


def per_node(client: docker.DockerClient, service: Service) -> dict[str, int]:
    """Running tasks of the service by node hostname."""
    names = node_names(client)
    out: dict[str, int] = {}
    for task in tasks(service):
        node = names.get(task.get("NodeID", ""), task.get("NodeID", "?"))
        out[node] = out.get(node, 0) + 1
    return dict(sorted(out.items()))


def logs(
    client: docker.DockerClient, service_id: str, tail: int, follow: bool
) -> Iterator[tuple[str, bytes]]:
    """The log lines of every task of a service, on whichever node it runs (the manager gathers
    them, as `docker service logs` does), each with the hostname of its node. `tail` is per task.
    """
    names = node_names(client)
    stream = client.api.service_logs(
        service_id, details=True, stdout=True, stderr=True, tail=tail, follow=follow
    )
    for line in lines(stream):
        yield _with_node(line, names)


def _with_node(line: bytes, names: dict[str, str]) -> tuple[str, bytes]:
    """With `details`, the engine starts each line with its task's attributes
    (`com.docker.swarm.node.id=…,com.docker.swarm.service.id=…,… message`)."""
    details, _, message = line.partition(b" ")
    attributes = dict(item.split(b"=", 1) for item in details.split(b",") if b"=" in item)
    node = attributes.get(b"com.docker.swarm.node.id")
    if node is None:  # not the details the engine documents: the line as it came
        return "?", line
    return names.get(node.decode(), node.decode()[:12]), message
