"""A Swarm of several nodes on one machine: the host's engine is the manager, each worker is
a Docker engine in its own container (Debian's docker.io on the stack's base image).

`up(settings, n)` makes the host's engine a swarm manager (advertised on the engine's default
bridge, 172.17.0.1 here) and runs n-1 worker nodes joined over that bridge; each keeps its
`/var/lib/docker` on a host directory under the stack directory (`nodes/NAME/`). It adds what
is missing and keeps what runs. `down(settings)` removes the nodes, and leaves the swarm when
`up` made it.

Images: a service names its image as the manager pulls it, `127.0.0.1:5000/…@sha256:…`. On a
node, 127.0.0.1 is the node's own loopback, so each node forwards its 127.0.0.1:PORT to the
registry's port on the bridge, and one forwarder on the host (a container of the node image on
the host's network) exposes the registry (which listens on 127.0.0.1 only) on the bridge
address. The reference is the same on every engine, and a loopback registry is one every engine
trusts without TLS (`insecure-registries` covers 127.0.0.0/8 by default); the credentials go
with each service (`--with-registry-auth`).

Node containers cannot be `--privileged` here (the engine's capability set lacks
CAP_SYS_RESOURCE): they get the capabilities dockerd needs, unconfined seccomp and AppArmor, and
access to every device (`--device-cgroup-rule 'a *:* rwm'`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from shipyard.deploy.containers import LABEL, LOGS
from shipyard.deploy.swarm_proxy import FRONT_ROLE
from shipyard.errors import StackError
from shipyard.settings import Settings
from shipyard.stack import state as stack_state
from shipyard.waiting import TimedOut, wait_until

Say = Callable[[str], None]
PREFIX = "shipyard-node"
ROLE = "swarm-node"
BRIDGE_NAME = "shipyard-registry-bridge"
IMAGE = "shipyard/node"
PACKAGES = ("docker.io", "socat", "iptables", "ca-certificates")
CAPABILITIES = ["SYS_ADMIN", "NET_ADMIN", "MKNOD", "SYS_PTRACE", "IPC_LOCK", "SYS_NICE"]
"""What dockerd in a container needs (mounts, networks, devices, namespaces), short of
`--privileged`, which this engine refuses."""
MAX_NODES = 9
STATE_KEY = "swarm"


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    """`manager` (the host's engine) or `worker`."""
    state: str
    """Swarm's view: ready, down, unknown."""
    address: str


def bridge_address(client: docker.DockerClient) -> str:
    """The host's address on the engine's default bridge (where containers reach the host)."""
    try:
        config = client.networks.get("bridge").attrs["IPAM"]["Config"][0]
        if config.get("Gateway"):
            return str(config["Gateway"])
        return str(next(ipaddress.ip_network(config["Subnet"]).hosts()))  # the engine's default
    except (NotFound, KeyError, IndexError, ValueError) as e:
        raise StackError(
            f"The engine's default bridge network has no gateway address ({e}): a swarm of "
            "node containers joins over it; start dockerd with its default bridge."
        ) from e


def node_image(client: docker.DockerClient, base: str, say: Say) -> str:
    """Debian's docker.io and socat on the stack's base: built once per base (its tag is a
    digest of its inputs)."""
    inputs = "\n".join([base, *PACKAGES])
    tag = f"{IMAGE}:{hashlib.sha256(inputs.encode()).hexdigest()[:16]}"
    with contextlib.suppress(ImageNotFound):
        client.images.get(tag)
        return tag
    say(f"nodes: installing Debian's {', '.join(PACKAGES)} on {base} ({tag})")
    dockerfile = "\n".join(
        [
            f"FROM {base}",
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            f"--no-install-recommends {' '.join(PACKAGES)} >/dev/null "
            "&& rm -rf /var/lib/apt/lists/* /var/cache/apt",
            f'LABEL {LABEL}.role="{ROLE}" {LABEL}.base="{base}"',
            "",
        ]
    )
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    except (APIError, DockerException) as e:
        raise StackError(f"Building the swarm node image {tag} failed: {e}") from e
    return tag


def _registry_port(settings: Settings) -> int:
    host, _, port = settings.registry.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        raise StackError(
            f"Registry {settings.registry!r}: swarm nodes reach the stack's local registry "
            "(127.0.0.1:PORT) through the bridge; set SHIPYARD_REGISTRY to it."
        )
    return int(port)


def ensure_swarm(client: docker.DockerClient, address: str, settings: Settings, say: Say) -> None:
    """The host's engine as a swarm manager advertised on `address`; a swarm it is already
    part of is kept (and not recorded as ours, so `down` leaves it)."""
    info = client.info()["Swarm"]
    if info.get("LocalNodeState") == "active":
        if not info.get("ControlAvailable"):
            raise StackError(
                "This engine is a swarm worker, not a manager: run `shipyard stack up --nodes` "
                "on a manager, or `docker swarm leave` first."
            )
        return
    try:
        client.swarm.init(advertise_addr=address, listen_addr=f"{address}:2377")
    except APIError as e:
        raise StackError(f"docker swarm init on {address} failed: {e.explanation}") from e
    state = stack_state.read(settings)
    state[STATE_KEY] = {"initialised": True, "address": address}
    stack_state.write(settings, state)
    say(f"swarm: this engine is the manager, advertised on {address}:2377")


def _container(client: docker.DockerClient, name: str) -> Container | None:
    try:
        return client.containers.get(name)
    except NotFound:
        return None


def ensure_bridge(client: docker.DockerClient, image: str, address: str, port: int) -> None:
    """The registry (127.0.0.1:port) also on `address`:port, for the nodes."""
    existing = _container(client, BRIDGE_NAME)
    if existing is not None and existing.status == "running":
        return
    if existing is not None:
        existing.remove(force=True)
    client.containers.run(
        image,
        [
            "socat",
            f"TCP-LISTEN:{port},bind={address},reuseaddr,fork",
            f"TCP:127.0.0.1:{port}",
        ],
        detach=True,
        name=BRIDGE_NAME,
        network_mode="host",
        restart_policy={"Name": "unless-stopped"},
        cap_drop=["ALL"],
        read_only=True,
        log_config=LOGS,
        labels={f"{LABEL}.role": f"{ROLE}-bridge"},
    )


def _node_engine(node: Container, *args: str) -> tuple[int, str]:
    code, out = node.exec_run(["docker", *args])
    return int(code), out.decode(errors="replace").strip()


def _run_node(
    client: docker.DockerClient, image: str, name: str, directory: Path, address: str, port: int
) -> Container:
    directory.mkdir(parents=True, exist_ok=True)
    forward = f"socat TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork TCP:{address}:{port}"
    # The engine mounts the node's cgroups (v1) read-only, unprivileged; its dockerd makes a
    # cgroup per task under them: writable again (the node's own subtree only).
    cgroups = 'for d in /sys/fs/cgroup/*; do mount -o remount,bind,rw "$d"; done'
    return client.containers.run(
        image,
        [
            "sh",
            "-c",
            f"{cgroups}; {forward} & exec dockerd --storage-driver overlay2 --log-level warn",
        ],
        detach=True,
        name=name,
        hostname=name,
        cap_add=CAPABILITIES,
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        device_cgroup_rules=["a *:* rwm"],
        volumes={str(directory): {"bind": "/var/lib/docker", "mode": "rw"}},
        tmpfs={"/run": "rw,mode=755"},
        restart_policy={"Name": "unless-stopped"},
        log_config=LOGS,
        labels={f"{LABEL}.role": ROLE},
    )


def _join(client: docker.DockerClient, node: Container, address: str) -> None:
    try:
        wait_until(lambda: _node_engine(node, "info")[0] == 0, 60, 0.5)
    except TimedOut:
        logs = node.logs(tail=10).decode(errors="replace")
        raise StackError(f"The engine of node {node.name} did not answer in 60 s: {logs}") from None
    code, state = _node_engine(node, "info", "--format", "{{.Swarm.LocalNodeState}}")
    if state == "active":
        return
    token = client.swarm.attrs["JoinTokens"]["Worker"]
    code, out = _node_engine(node, "swarm", "join", "--token", token, f"{address}:2377")
    if code:
        raise StackError(f"Node {node.name} could not join the swarm at {address}:2377: {out}")


def up(settings: Settings, count: int, base: str, say: Say, prefix: str = PREFIX) -> list[Node]:
    """A swarm of `count` nodes: this engine (manager) and count-1 node containers named
    `prefix-2`…; what exists is kept. Returns the swarm's nodes."""
    if not 1 <= count <= MAX_NODES:
        raise StackError(
            f"--nodes {count}: expected 1 to {MAX_NODES} (this engine and up to "
            f"{MAX_NODES - 1} node containers)."
        )
    from shipyard.engine import engine

    client = engine(settings)
    port = _registry_port(settings)
    address = bridge_address(client)
    ensure_swarm(client, address, settings, say)
    if count > 1:
        image = node_image(client, base, say)
        ensure_bridge(client, image, address, port)
    for i in range(2, count + 1):
        name = f"{prefix}-{i}"
        node = _container(client, name)
        if node is None:
            node = _run_node(client, image, name, nodes_dir(settings) / name, address, port)
            say(f"nodes: started {name} (its /var/lib/docker in {nodes_dir(settings) / name})")
        elif node.status != "running":
            node.start()
        _join(client, node, address)
    wait_ready(client, count)
    return nodes(client)


def nodes_dir(settings: Settings) -> Path:
    return settings.stack_dir / "nodes"


def nodes(client: docker.DockerClient) -> list[Node]:
    """The swarm's nodes as its manager sees them (none outside a swarm)."""
    if client.info()["Swarm"].get("LocalNodeState") != "active":
        return []
    out = []
    for node in client.nodes.list():
        attrs: dict[str, Any] = node.attrs
        out.append(
            Node(
                attrs["Description"]["Hostname"],
                attrs["Spec"]["Role"],
                attrs["Status"]["State"],
                attrs["Status"].get("Addr", ""),
            )
        )
    return sorted(out, key=lambda n: (n.role != "manager", n.name))


def wait_ready(client: docker.DockerClient, count: int, timeout_s: float = 60) -> None:
    try:
        wait_until(lambda: sum(n.state == "ready" for n in nodes(client)) >= count, timeout_s, 0.5)
    except TimedOut:
        raise StackError(
            f"The swarm has {sum(n.state == 'ready' for n in nodes(client))} ready node(s) after "
            f"{timeout_s:.0f} s, {count} expected: `docker node ls` shows them."
        ) from None


def down(settings: Settings, say: Say, prefix: str = PREFIX) -> None:
    """Remove the node containers named `prefix-*` (and their data), the registry forwarder
    when no node is left, and leave the swarm when `up` made it."""
    from shipyard.engine import engine

    client = engine(settings)
    for node in client.containers.list(all=True, filters={"label": f"{LABEL}.role={ROLE}"}):
        if not node.name.startswith(f"{prefix}-"):
            continue
        name = node.name
        node.remove(force=True)
        with contextlib.suppress(APIError, NotFound):
            client.api.remove_node(name, force=True)
        shutil.rmtree(nodes_dir(settings) / name, ignore_errors=True)
        say(f"nodes: removed {name}")
    if not client.containers.list(all=True, filters={"label": f"{LABEL}.role={ROLE}"}):
        bridge = _container(client, BRIDGE_NAME)
        if bridge is not None:
            bridge.remove(force=True)
        state = stack_state.read(settings)
        if state.get(STATE_KEY, {}).get("initialised"):
            client.swarm.leave(force=True)
            # A local Swarm endpoint's front HAProxy is a plain container: with the swarm gone
            # it would hold the endpoint's port for a proxy service that no longer exists.
            for front in client.containers.list(
                all=True, filters={"label": f"{LABEL}.role={FRONT_ROLE}"}
            ):
                front.remove(force=True)
                say(
                    f"swarm: removed {front.name} (its endpoint's proxy service left with the swarm)"
                )
            # Swarm made it for its tasks' outside traffic, and leaving keeps it.
            with contextlib.suppress(APIError, NotFound):
                gateway = client.networks.get("docker_gwbridge")
                if not gateway.attrs.get("Containers"):
                    gateway.remove()
            state.pop(STATE_KEY)
            stack_state.write(settings, state)
            say("swarm: this engine left the swarm `stack up --nodes` made")


def status(settings: Settings) -> dict[str, str]:
    from shipyard.engine import engine

    try:
        found = nodes(engine(settings))
    except (StackError, DockerException):
        return {}
    return {f"node {n.name}": f"{n.role} {n.state} {n.address}" for n in found}
