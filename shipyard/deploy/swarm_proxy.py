"""The endpoint's HAProxy on the Swarm target: a Swarm service on the endpoint's overlay network
that finds each version's replicas through Swarm's DNS, and moves traffic by weight.

Each slot (`blue`, `green`) is a `server-template` of `SLOTS` servers on `tasks.<service>`,
resolved through Docker's embedded DNS (127.0.0.11) every second: a replica added by `scale`,
rescheduled from a dead node or removed fills or frees a server without a reload, and the
config never changes across rollouts (a slot's service always has the same name). Weights are
set per server through the runtime API, as on the Docker target.
https://docs.haproxy.org/2.6/configuration.html#server-template
https://docs.haproxy.org/2.6/configuration.html#5.3.2

Gates talk to one slot only: a frontend per slot on a unix socket in the endpoint's directory
(`gate-<color>.sock`, mode 600: no port, no network), whose backend picks a replica by the
header `X-Shipyard-Server` (`green3`), or balances when there is none.

The service runs on a manager (this machine) and bind-mounts the endpoint's directory, so its
config, runtime socket and gate sockets are where the Docker target has them. How clients reach
it depends on the deploy host:
- any address but loopback (`SHIPYARD_DEPLOY_HOST=0.0.0.0`): the service publishes the endpoint
  port in host mode (Swarm's routing mesh needs IPVS, which this kernel lacks), which binds it
  on every address of the node, IPv4 and IPv6;
- loopback (the default): the service publishes nothing. Its endpoint frontend listens on a unix
  socket in the endpoint's directory (`endpoint.sock`, mode 600), and a front HAProxy, a
  container on the host's network as on the Docker target, binds exactly the deploy host's
  address and passes each connection through (TCP, with the PROXY protocol so the client's
  address is still logged). A port published in host mode would be bound on every address,
  and over IPv6 Docker's userland proxy would connect from the same gateway address as this
  machine's own connections: no source rule in HAProxy can tell a remote IPv6 client apart.
"""

from __future__ import annotations

import contextlib
import csv
import io
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError, NotFound
from docker.models.containers import Container
from docker.types import EndpointSpec, Mount, RestartPolicy, ServiceMode

from shipyard.deploy.containers import LABEL
from shipyard.deploy.proxy import (
    BACKEND,
    COLORS,
    LOG_FRONTEND,
    LOG_GLOBAL,
    PROXY_IMAGE,
    TLS_GLOBAL,
    Proxy,
    Slot,
    listening,
)
from shipyard.deploy.swarm_specs import PORT, find_service, remove_service, tasks
from shipyard.errors import DeployError
from shipyard.manifest import Tls
from shipyard.processes import private_parent, short_socket_path
from shipyard.waiting import TimedOut, wait_until

SLOTS = 16
"""Servers per slot: the most replicas a version can have behind the endpoint."""
SERVER_HEADER = "X-Shipyard-Server"
FRONT_ROLE = "proxy-front"
"""The role label of a local endpoint's front HAProxy container."""


@dataclass(frozen=True)
class Server:
    name: str
    """`blue1` … `green16`."""
    color: str
    status: str
    """UP, DOWN, MAINT (also: no address yet), …"""
    weight: int
    current_sessions: int
    address: str


def render(
    port: int,
    services: dict[str, str],
    weights: dict[str, int],
    socket_path: Path,
    gates: dict[str, Path],
    pem: Path | None = None,
    front: Path | None = None,
) -> str:
    """The HAProxy config of one Swarm endpoint; `services`: color → service name. With `pem`
    (certificate chain and key, `deploy.tls`), the endpoint answers HTTPS only, as on the Docker
    target; the gate sockets stay plain HTTP (no network: a file of mode 600). With `front`, the
    endpoint listens on that unix socket (mode 600, the PROXY protocol: `render_front`'s HAProxy
    is its only client) instead of the published port."""

    def templates(backend_weights: dict[str, int]) -> list[str]:
        return [
            f"    server-template {color} 1-{SLOTS} tasks.{services[color]}:{PORT} "
            f"weight {backend_weights.get(color, 0)}"
            for color in COLORS
        ]

    lines = [
        "global",
        f"    stats socket {socket_path} mode 600 level admin",
        "    maxconn 4096",
        *(TLS_GLOBAL if pem else ()),
        *LOG_GLOBAL,
        "",
        "resolvers docker",
        "    nameserver swarm 127.0.0.11:53",
        "    accepted_payload_size 8192",
        "    resolve_retries 3",
        "    timeout resolve 1s",
        "    timeout retry 1s",
        # A task that leaves answers no more after 1 s (obsolete); Docker's DNS failing for a
        # moment (a busy engine) keeps the last addresses instead of emptying the slot.
        "    hold valid 1s",
        "    hold obsolete 1s",
        "    hold nx 1s",
        "    hold other 30s",
        "    hold refused 30s",
        "    hold timeout 30s",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        # A replica on a node that died never answers: its request is retried on another after
        # 5 s (retry-on response-timeout), before a client's own timeout. Inference requests
        # take milliseconds; the Docker target, with no node to lose, keeps 60 s.
        "    timeout server 5s",
        "    timeout http-request 15s",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout 502 503",
        "    option http-buffer-request",
        "    option httpchk GET /v2/health/ready",
        "    http-check expect status 200",
        # A server filled by DNS starts UP, before its first check: a new replica still starting
        # gets a tiny share at first (slowstart), and the first connection it refuses marks it
        # DOWN (observe layer4) while the request is retried on another.
        "    default-server inter 500ms fall 2 rise 1 slowstart 3s observe layer4 error-limit 1 "
        "on-error mark-down check resolvers docker init-addr none resolve-prefer ipv4",
        "",
        "frontend endpoint",
        (f"    bind unix@{front} mode 600 accept-proxy" if front else f"    bind :{port}")
        + (f" ssl crt {pem} alpn h2,http/1.1" if pem else ""),
        *LOG_FRONTEND,
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
        *templates(weights),
        "",
    ]
    for color in COLORS:
        lines += [
            f"frontend gate-{color}",
            f"    bind unix@{gates[color]} mode 600",
            f"    default_backend gate-{color}",
            "",
            f"backend gate-{color}",
            "    balance roundrobin",
            *(
                f"    use-server {color}{i} if {{ req.hdr({SERVER_HEADER}) -m str {color}{i} }}"
                for i in range(1, SLOTS + 1)
            ),
            f"    server-template {color} 1-{SLOTS} tasks.{services[color]}:{PORT} weight 1",
            "",
        ]
    return "\n".join(lines)


def render_front(bind: str, socket_path: Path) -> str:
    """The front HAProxy of a loopback endpoint: it binds `bind` (the deploy host's address and
    the port) and hands every connection, bytes as they are (TLS included), to the endpoint's
    unix socket, announcing the client's address with the PROXY protocol. Its timeouts are
    longer than the endpoint's, so that the endpoint decides when an idle connection ends."""
    return "\n".join(
        [
            "global",
            "    maxconn 4096",
            "",
            "defaults",
            "    mode tcp",
            "    timeout connect 2s",
            "    timeout client 75s",
            "    timeout server 75s",
            "",
            "frontend endpoint",
            f"    bind {bind}",
            "    default_backend endpoint",
            "",
            "backend endpoint",
            f"    server endpoint unix@{socket_path} send-proxy-v2",
            "",
        ]
    )


def split(weights: dict[str, int], replicas: dict[str, int]) -> dict[str, int]:
    """Per-server HAProxy weights (0-256) giving each slot its share (in %) of the traffic,
    whatever the slots' replica counts."""
    live = {c: w for c, w in weights.items() if w > 0}
    if len(live) < 2:
        return {c: (100 if w > 0 else 0) for c, w in weights.items()}
    raw = {c: w / max(1, replicas.get(c, 1)) for c, w in weights.items()}
    top = max(raw.values())
    return {c: (max(1, round(v * 256 / top)) if v > 0 else 0) for c, v in raw.items()}


def weigh_commands(weights: dict[str, int]) -> list[str]:
    """The runtime API commands that set each slot's servers to its weight, the heaviest slot
    first: traffic moving from blue to green never meets a moment where every server weighs 0
    (HAProxy would answer 503). They are sent as one line, so the mixed state lasts one pass."""
    ordered = sorted(weights.items(), key=lambda item: -item[1])
    return [
        f"set server {BACKEND}/{color}{i} weight {weight}"
        for color, weight in ordered
        for i in range(1, SLOTS + 1)
    ]


def is_local(host: str) -> bool:
    """Whether deploy host `host` means "this machine only": `localhost` or a loopback address
    (`SHIPYARD_DEPLOY_HOST`'s default, 127.0.0.1, is one)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SwarmProxy(Proxy):
    """One Swarm endpoint's HAProxy, a service of one task on a manager (this machine).

    Swarm publishes a host-mode port on every address of the node, whatever the deploy host. With
    a loopback deploy host (the default), the service runs on this engine's node and publishes
    nothing: a front HAProxy container binds the deploy host's address only and passes
    connections to the service's unix socket (`render_front`). With any other, the endpoint
    answers every address of the manager that runs it."""

    def __init__(
        self,
        directory: Path,
        host: str,
        port: int,
        client: docker.DockerClient,
        services: dict[str, str],
        network: str,
        tls: Tls | None = None,
    ) -> None:
        super().__init__(directory, host, port, client, tls)
        self.services, self.network = services, network
        self.name = f"shipyard-{self.directory.name}-{port}-proxy"
        self.gates = {c: short_socket_path(self.directory, f"gate-{c}.sock") for c in COLORS}
        self.local = is_local(host)
        self.front_socket = short_socket_path(self.directory, "endpoint.sock")
        self.front_config = self.directory / "front.cfg"
        self.front_name = f"shipyard-{self.directory.name}-{port}-front"

    def ensure(self, slots: dict[str, Slot], say: Callable[[str], None]) -> None:
        """Not on Swarm: `ensure_service` (a service, not a container; weights, not slots)."""
        raise NotImplementedError("SwarmProxy.ensure_service runs the Swarm endpoint's HAProxy")

    def write_config(self, weights: dict[str, int]) -> None:
        """The config a restarted HAProxy reads (recorded weights)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        pem = self.pem if self.tls else None
        front = self.front_socket if self.local else None
        self.config.write_text(
            render(self.port, self.services, weights, self.socket, self.gates, pem, front)
        )

    def access(self) -> str:
        """Who may connect, as the service's label records it."""
        return (
            f"this machine ({self.host}, through {self.front_name})"
            if self.local
            else ("all addresses")
        )

    def ensure_service(self, weights: dict[str, int], say: Callable[[str], None]) -> None:
        """Write the PEM and the config; create the HAProxy service if it does not exist (or
        again when TLS or who it admits changed: HAProxy binds anew, a gap of a few seconds);
        wait until its runtime API answers; then, for a local endpoint, start its front HAProxy
        if it does not run."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tls = self._write_pem()
        self.write_config(weights)
        access = self.access()
        service = find_service(self.client, self.name)
        if service is not None:
            labels = service.attrs["Spec"].get("Labels", {})
            # A service from before access was recorded admitted all addresses.
            was = {
                "TLS": labels.get(f"{LABEL}.tls", "off"),
                "access": labels.get(f"{LABEL}.access", "all addresses"),
            }
            now = {"TLS": tls, "access": access}
            changed = [f"{k} {now[k]}" for k in now if was[k] != now[k]]
            if not changed:
                self._wait()
                self._ensure_front(say)
                return
            say(f"proxy: {', '.join(changed)} on {self.url}; starting HAProxy's service again")
            self.stop()
        private_parent(self.socket)
        self.socket.unlink(missing_ok=True)
        sockets = (self.socket, *self.gates.values(), self.front_socket)
        mounts = {self.directory} | {p.parent for p in sockets}
        try:
            self.client.services.create(
                PROXY_IMAGE,
                ["haproxy", "-db", "-f", str(self.config)],
                name=self.name,
                user=f"{os.getuid()}:{os.getgid()}",
                mounts=[Mount(str(m), str(m), type="bind") for m in sorted(mounts)],
                networks=[self.network],
                mode=ServiceMode("replicated", replicas=1),
                # A local endpoint's unix socket is in this machine's endpoint directory.
                constraints=[
                    f"node.id=={self.client.info()['Swarm']['NodeID']}"
                    if self.local
                    else "node.role==manager"
                ],
                endpoint_spec=EndpointSpec(
                    mode="dnsrr",
                    ports=None if self.local else {self.port: (self.port, "tcp", "host")},
                ),
                restart_policy=RestartPolicy(condition="any", delay=500_000_000),
                read_only=True,
                cap_drop=["ALL"],
                stop_signal="SIGUSR1",  # HAProxy's soft stop (see proxy.Proxy)
                labels={
                    f"{LABEL}.role": "proxy",
                    f"{LABEL}.model": self.directory.name,
                    f"{LABEL}.endpoint": f"{self.host}:{self.port}",
                    f"{LABEL}.tls": tls,
                    f"{LABEL}.access": access,
                },
                log_driver="json-file",
                log_driver_options={"max-size": "10m", "max-file": "3"},
            )
        except APIError as e:
            raise DeployError(
                f"Swarm refused the HAProxy service {self.name}: {e.explanation}"
            ) from e
        self._wait()
        how = "through the front HAProxy" if self.local else "host mode"
        say(
            f"proxy: HAProxy runs as the Swarm service {self.name} on {self.url} ({how}; "
            f"it admits {access})"
        )
        self._ensure_front(say)

    def front(self) -> Container | None:
        try:
            return self.client.containers.get(self.front_name)
        except NotFound:
            return None

    def _ensure_front(self, say: Callable[[str], None]) -> None:
        """A local endpoint's front HAProxy (`render_front`), started if it does not run; an
        endpoint for all addresses has none (one left from a local deploy is removed)."""
        container = self.front()
        if not self.local:
            if container is not None:
                self._remove(container)
            return
        self.front_config.write_text(render_front(f"{self.host}:{self.port}", self.front_socket))
        if container is not None and container.status in ("running", "restarting"):
            self._wait_front(container)
            return
        if container is not None:  # stopped (by hand, or with the engine)
            container.start()
            self._wait_front(container)
            say(f"proxy: started the front HAProxy of {self.url} again")
            return
        self.refuse_taken_port()
        container = self.run_haproxy(
            self.front_name,
            self.front_config,
            {self.directory, self.front_socket.parent},
            FRONT_ROLE,
            {},
        )
        self._wait_front(container)
        say(
            f"proxy: the front HAProxy {self.front_name} binds {self.host}:{self.port} only "
            "(restart unless-stopped)"
        )

    def _wait_front(self, container: Container) -> None:
        try:
            wait_until(lambda: listening(self.host, self.port), 10, 0.05)
        except TimedOut:
            container.reload()
            logs = container.logs(tail=15).decode(errors="replace")
            raise DeployError(
                f"The front HAProxy {self.front_name} did not listen on {self.host}:{self.port} "
                f"({container.status}, {container.attrs['RestartCount']} restarts): {logs}"
            ) from None

    def _wait(self) -> None:  # type: ignore[override]
        try:
            wait_until(self.answers, 60, 0.1)
        except TimedOut:
            service = find_service(self.client, self.name)
            states = [t["Status"] for t in service.tasks()][-3:] if service else "no service"
            raise DeployError(
                f"HAProxy's service {self.name} did not answer on {self.socket} within 60 s "
                f"(tasks: {states})"
            ) from None

    def pid(self) -> int | None:
        service = find_service(self.client, self.name)
        return 1 if service is not None and tasks(service) and self.answers() else None

    def describe(self) -> str:
        service = find_service(self.client, self.name)
        if service is None:
            return "down (no proxy service)"
        running = len(tasks(service))
        admits = service.attrs["Spec"].get("Labels", {}).get(f"{LABEL}.access", "all addresses")
        described = f"service {self.name}, {running} task(s) running, admits {admits}"
        if self.local:
            front = self.front()
            described += f"; front {front.status if front else 'missing'}"
        return described

    def servers(self, backend: str = BACKEND) -> list[Server]:
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        out = []
        for row in rows:
            name = row["svname"]
            color = name.rstrip("0123456789")
            if row["pxname"] == backend and color in COLORS and name != color:
                out.append(
                    Server(
                        name,
                        color,
                        row["status"],
                        int(row["weight"] or 0),
                        int(row["scur"] or 0),
                        row.get("addr", ""),
                    )
                )
        return out

    def up(self, color: str, backend: str = BACKEND) -> list[Server]:
        return [s for s in self.servers(backend) if s.color == color and s.status == "UP"]

    def point(self, color: str, host: str = "", port: int = 0) -> None:
        """Make the slot's servers routable again (weight 0 until `weigh`)."""
        for i in range(1, SLOTS + 1):
            self.command(f"set server {BACKEND}/{color}{i} weight 0")
            self.command(f"set server {BACKEND}/{color}{i} state ready")

    def weigh(self, weights: dict[str, int]) -> None:
        if weights:
            self.command("; ".join(weigh_commands(weights)))

    def disable(self, color: str) -> None:
        for i in range(1, SLOTS + 1):
            self.command(f"set server {BACKEND}/{color}{i} weight 0")
            self.command(f"set server {BACKEND}/{color}{i} state maint")

    def wait_up(self, color: str, timeout_s: float, count: int = 1, backend: str = BACKEND) -> None:
        """Wait until HAProxy's health checks see `count` servers of the slot UP in `backend`
        (the endpoint's; the slot's gate backend checks the same replicas on its own)."""
        try:
            wait_until(lambda: len(self.up(color, backend)) >= count, timeout_s, 0.2)
        except TimedOut:
            raise DeployError(
                f"HAProxy saw {len(self.up(color, backend))} of {count} replicas of {color} UP "
                f"in {backend} within {timeout_s:.0f} s (their addresses come from "
                f"tasks.{self.services[color]})"
            ) from None

    def drain(self, color: str, timeout_s: float = 30) -> None:
        self.disable(color)
        with contextlib.suppress(TimedOut):
            wait_until(
                lambda: not any(s.current_sessions for s in self.servers() if s.color == color),
                timeout_s,
                0.05,
            )

    def stop(self) -> None:
        front = self.front()
        if front is not None:
            self._remove(front)
        remove_service(self.client, self.name)
        with contextlib.suppress(TimedOut):
            wait_until(lambda: not self.answers(), 15, 0.2)
        # A published port is freed when the task's container is gone, which can come later.
        with contextlib.suppress(TimedOut):
            wait_until(lambda: not listening(self.host, self.port), 15, 0.2)
