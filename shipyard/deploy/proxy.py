"""HAProxy (Debian's package) holds a model's stable endpoint and splits traffic by weight.

The backend has two fixed server slots, `blue` and `green`; a rollout points the idle slot at
the new container and moves weights through HAProxy's runtime API (a unix socket), so traffic
moves without a reload and without dropping a connection. The config file is rewritten on every
change, so a restarted HAProxy comes back with the same routing; it runs in a container under
the engine's restart policy, so it does restart, by itself.
https://docs.haproxy.org/2.6/management.html#9.3

With `deploy.tls`, HAProxy terminates TLS: certificate chain and key are copied into one PEM
in the endpoint's directory (mode 600: the container sees only that directory), TLS 1.2 at
least, forward-secret AEAD ciphers only (Mozilla's "intermediate" profile), no session tickets.
https://docs.haproxy.org/2.6/configuration.html#5.1-crt
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from shipyard.deploy.containers import LABEL, LOGS
from shipyard.errors import DeployError
from shipyard.manifest import Tls
from shipyard.processes import Started, private_parent, short_socket_path
from shipyard.waiting import TimedOut, wait_until

COLORS = ("blue", "green")
BACKEND = "model"
_PLACEHOLDER = ("127.0.0.1", 1)  # an empty slot: kept in maintenance, never sent traffic
# https://ssl-config.mozilla.org/#server=haproxy&version=2.6&config=intermediate
TLS_GLOBAL = (
    "    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-CHACHA20-POLY1305",
    "    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
    "TLS_CHACHA20_POLY1305_SHA256",
    "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
)

LOG_GLOBAL = ("    log stdout format raw local0",)
"""HAProxy logs requests to its container's output (`docker logs`, `docker service logs`)."""

LOG_FRONTEND = ("    log global", "    option httplog", "    option dontlog-normal")
"""In the endpoint's frontend only: the requests that did not end normally (an error, a retry,
a timeout, a closed connection), with their timers and termination state. Backends have no
logger, so servers going up or down are written once, as HAProxy's warnings on stderr."""


@dataclass(frozen=True)
class Slot:
    color: str
    host: str
    port: int
    weight: int
    enabled: bool


@dataclass(frozen=True)
class ServerStat:
    color: str
    status: str
    """UP, DOWN, MAINT, NOLB or `no check`."""
    weight: int
    current_sessions: int
    total_sessions: int
    address: str


def render(bind: str, slots: dict[str, Slot], socket_path: Path, pem: Path | None = None) -> str:
    """The HAProxy config of one endpoint; with `pem` (certificate chain and key), it answers
    HTTPS only.

    Inference is a pure function of its input, so a request that met a dead connection or a
    stopping server is retried (L7 retries) on the other slot instead of failing the client.
    """
    servers = []
    for color in COLORS:
        slot = slots.get(color) or Slot(color, *_PLACEHOLDER, 0, False)
        flags = "" if slot.enabled else " disabled"
        servers.append(
            f"    server {color} {slot.host}:{slot.port} weight {slot.weight} check{flags}"
        )
    return "\n".join(
        [
            "global",
            f"    stats socket {socket_path} mode 600 level admin",
            "    maxconn 4096",
            *(TLS_GLOBAL if pem else ()),
            *LOG_GLOBAL,
            "",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout http-request 15s",
            "    retries 3",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response response-timeout 502 503",
            "    option http-buffer-request",
            "",
            "frontend endpoint",
            f"    bind {bind}" + (f" ssl crt {pem} alpn h2,http/1.1" if pem else ""),
            *LOG_FRONTEND,
            f"    default_backend {BACKEND}",
            "",
            f"backend {BACKEND}",
            "    balance roundrobin",
            "    option httpchk GET /v2/health/ready",
            "    http-check expect status 200",
            "    default-server inter 500ms fall 2 rise 1",
            *servers,
            "",
        ]
    )


PROXY_IMAGE = "shipyard/haproxy:bookworm"
"""Debian's haproxy on the stack's base image; `shipyard stack up` builds it."""


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on `host` (a name, IPv4 or IPv6) and `port`."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Proxy:
    """One endpoint's HAProxy, as a container under the engine's restart policy: it comes back
    by itself when its process dies and when the engine (or the machine) restarts.

    It shares the host's network (it binds the endpoint's address and reaches the slots'
    published ports on it) and nothing else: its own user, no capabilities, a read-only root,
    its config and runtime socket bind-mounted from `directory` at the same paths."""

    def __init__(
        self,
        directory: Path,
        host: str,
        port: int,
        client: docker.DockerClient,
        tls: Tls | None = None,
    ) -> None:
        self.directory = directory.resolve()
        self.host, self.port = host, port
        self.client = client
        self.tls = tls
        self.config = self.directory / "haproxy.cfg"
        self.pem = self.directory / "endpoint.pem"
        self.socket = short_socket_path(self.directory, "haproxy.sock")
        self.legacy_pid_file = self.directory / "haproxy.pid"
        self.name = f"shipyard-{self.directory.name}-{port}-proxy"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def _write_pem(self) -> str:
        """The PEM HAProxy reads (chain, then key; mode 600), or none without TLS; returns
        what identifies it (a digest of its content, `off` without TLS)."""
        if self.tls is None:
            self.pem.unlink(missing_ok=True)
            return "off"
        parts = []
        for field, path in (("cert", self.tls.cert), ("key", self.tls.key)):
            if not path.is_absolute():
                # The policy is recorded and read again by `stack up` and the worker, from
                # other directories: a relative path would name another file there.
                raise DeployError(
                    f"deploy.tls.{field} {str(path)!r} is a relative path: give the absolute "
                    "path of the PEM file on the deploy host in shipyard.yaml."
                )
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise DeployError(
                    f"deploy.tls.{field} {str(path)!r} cannot be read ({e}): give a readable PEM "
                    "file in shipyard.yaml (`shipyard stack cert` makes a local one)."
                ) from None
            marker = "PRIVATE KEY-----" if field == "key" else "BEGIN CERTIFICATE-----"
            if marker not in text:
                raise DeployError(
                    f"deploy.tls.{field} {str(path)!r} holds no PEM "
                    f"{'private key' if field == 'key' else 'certificate'}: expected a "
                    f"'-----{marker}' block; point deploy.tls.{field} at the PEM file."
                )
            parts.append(text.strip() + "\n")
        pem = "".join(parts)
        staged = self.pem.with_name(f".{self.pem.name}.tmp")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(pem)
        os.chmod(staged, 0o600)
        os.replace(staged, self.pem)
        return hashlib.sha256(pem.encode()).hexdigest()[:16]

    def container(self) -> Container | None:
        try:
            return self.client.containers.get(self.name)
        except NotFound:
            return None

    def pid(self) -> int | None:
        """The running HAProxy's pid on this host, or None when it does not run."""
        container = self.container()
        if container is None or container.status != "running":
            return None
        return int(container.attrs["State"]["Pid"]) or None

    def describe(self) -> str:
        """`running (pid 123, 0 restarts)`, as `shipyard status` prints it."""
        container = self.container()
        if container is None:
            return "down (no proxy container)"
        n = int(container.attrs["RestartCount"])
        pid = f"pid {container.attrs['State']['Pid']}, " if container.status == "running" else ""
        return f"{container.status} ({pid}{n} restart{'s' if n != 1 else ''})"

    def answers(self) -> bool:
        try:
            self.command("show info")
        except DeployError:
            return False
        return True

    def ensure(self, slots: dict[str, Slot], say: Callable[[str], None]) -> None:
        """Write the config (what a restarted HAProxy reads) and start HAProxy if it is not
        running."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tls = self._write_pem()
        self.config.write_text(
            render(f"{self.host}:{self.port}", slots, self.socket, self.pem if self.tls else None)
        )
        container = self.container()
        if container is not None and container.labels.get(f"{LABEL}.tls", "off") != tls:
            # TLS turned on or off, or another certificate: HAProxy binds anew (a gap of about
            # a second on this endpoint).
            say(f"proxy: TLS of {self.url} changed ({tls}); starting HAProxy again")
            self._remove(container)
            container = None
        if container is not None and container.status in ("running", "restarting"):
            self._wait(container)
            return
        private_parent(self.socket)
        self.socket.unlink(missing_ok=True)
        if container is not None:  # stopped (by hand, or the engine was stopped with it)
            container.start()
            self._wait(container)
            say(f"proxy: started HAProxy on {self.url} again")
            return
        self._stop_legacy(say)
        self.refuse_taken_port()
        container = self.run_haproxy(
            self.name, self.config, {self.directory, self.socket.parent}, "proxy", {"tls": tls}
        )
        self._wait(container)
        say(f"proxy: started HAProxy on {self.url} (container {self.name}, restart unless-stopped)")

    def refuse_taken_port(self) -> None:
        """A `DeployError` if something already listens on the endpoint's address."""
        if listening(self.host, self.port):
            raise DeployError(
                f"Endpoint port {self.host}:{self.port} is taken by another process: choose "
                "another with `deploy.port` in shipyard.yaml, or stop what listens there."
            )

    def run_haproxy(
        self, name: str, config: Path, directories: set[Path], role: str, labels: dict[str, str]
    ) -> Container:
        """HAProxy with `config` as a container on the host's network: its own user, no
        capabilities, a read-only root, `directories` bind-mounted at the same paths, restarted
        unless stopped; `labels` under `ai.shipyard.` beside its role, model and endpoint."""
        try:
            return self.client.containers.run(
                PROXY_IMAGE,
                ["haproxy", "-db", "-f", str(config)],
                detach=True,
                name=name,
                network_mode="host",
                user=f"{os.getuid()}:{os.getgid()}",
                volumes={str(d): {"bind": str(d), "mode": "rw"} for d in sorted(directories)},
                read_only=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                restart_policy={"Name": "unless-stopped"},
                # HAProxy as pid 1 ignores SIGTERM; SIGUSR1 is its soft stop (the official
                # image's STOPSIGNAL): without it every stop, an engine restart's too, waits
                # the engine's 10 s before SIGKILL.
                stop_signal="SIGUSR1",
                log_config=LOGS,
                labels={
                    f"{LABEL}.role": role,
                    f"{LABEL}.model": self.directory.name,
                    f"{LABEL}.endpoint": f"{self.host}:{self.port}",
                    **{f"{LABEL}.{key}": value for key, value in labels.items()},
                },
            )
        except ImageNotFound:
            raise DeployError(
                f"The endpoint proxy's image {PROXY_IMAGE} is missing from the engine: "
                "`shipyard stack up` builds it (Debian's haproxy on the stack's base image)."
            ) from None
        except DockerException as e:
            raise DeployError(f"The engine could not start HAProxy for {self.url}: {e}") from e

    def _wait(self, container: Container) -> None:
        try:
            wait_until(self.answers, 10, 0.05)
        except TimedOut:
            container.reload()
            logs = container.logs(tail=15).decode(errors="replace")
            raise DeployError(
                f"HAProxy did not answer on {self.url} (container {self.name}, {container.status}"
                f", {container.attrs['RestartCount']} restarts): {logs}"
            ) from None

    def _stop_legacy(self, say: Callable[[str], None]) -> None:
        """An endpoint of Shipyard 0.1 ran HAProxy as a bare host process (pid file): stop it,
        so its container can take the port."""
        try:
            legacy = Started(*map(int, self.legacy_pid_file.read_text().split()))
        except (OSError, ValueError, TypeError):
            return
        self.legacy_pid_file.unlink()
        if legacy.alive():
            os.kill(legacy.pid, signal.SIGTERM)
            with contextlib.suppress(TimedOut):
                wait_until(lambda: not legacy.alive(), 10, 0.05)
            say(f"proxy: stopped the unsupervised HAProxy of {self.url} (pid {legacy.pid})")

    def command(self, line: str) -> str:
        """One runtime API command; its answer (an error answer raises)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self.socket))
                s.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
        except OSError as e:
            raise DeployError(
                f"HAProxy's runtime API at {self.socket} did not answer ({e}): is the proxy of "
                f"{self.url} running? `shipyard status MODEL` shows it."
            ) from e
        answer = b"".join(chunks).decode().strip()
        if (
            answer
            and not answer.startswith("#")
            and any(word in answer.lower() for word in ("unknown", "require", "invalid", "no such"))
        ):
            raise DeployError(f"HAProxy refused {line!r}: {answer}")
        return answer

    def point(self, color: str, host: str, port: int) -> None:
        """Aim an idle slot at a container: weight 0, enabled, health-checked."""
        self.command(f"set server {BACKEND}/{color} weight 0")
        self.command(f"set server {BACKEND}/{color} addr {host} port {port}")
        self.command(f"set server {BACKEND}/{color} state ready")

    def weigh(self, weights: dict[str, int]) -> None:
        """Heaviest slot first, in one line: no moment where every slot weighs 0 (a 503)."""
        ordered = sorted(weights.items(), key=lambda item: -item[1])
        if ordered:
            self.command("; ".join(f"set server {BACKEND}/{c} weight {w}" for c, w in ordered))

    def disable(self, color: str) -> None:
        """Send the slot no new request; requests under way finish."""
        self.command(f"set server {BACKEND}/{color} weight 0")
        self.command(f"set server {BACKEND}/{color} state maint")

    def stats(self) -> dict[str, ServerStat]:
        rows = csv.DictReader(io.StringIO(self.command("show stat").lstrip("# ")))
        out = {}
        for row in rows:
            if row["pxname"] == BACKEND and row["svname"] in COLORS:
                out[row["svname"]] = ServerStat(
                    row["svname"],
                    row["status"],
                    int(row["weight"] or 0),
                    int(row["scur"] or 0),
                    int(row["stot"] or 0),
                    row.get("addr", ""),
                )
        return out

    def wait_up(self, color: str, timeout_s: float) -> None:
        """Wait until HAProxy's own health check sees the slot UP."""
        try:
            wait_until(lambda: self.stats()[color].status == "UP", timeout_s, 0.1)
        except TimedOut:
            raise DeployError(
                f"HAProxy's health check never saw {color} UP within {timeout_s:.0f} s "
                f"(status {self.stats()[color].status})"
            ) from None

    def drain(self, color: str, timeout_s: float = 30) -> None:
        """Disable the slot and wait until its requests under way have finished."""
        self.disable(color)
        with contextlib.suppress(TimedOut):  # past the timeout, what is left is cut off
            wait_until(lambda: not self.stats()[color].current_sessions, timeout_s, 0.05)

    def _remove(self, container: Container) -> None:
        with contextlib.suppress(NotFound, APIError):
            container.stop(timeout=5)
        with contextlib.suppress(NotFound):
            container.remove(force=True)

    def stop(self) -> None:
        """Remove the proxy container (and an unsupervised HAProxy of an older Shipyard)."""
        container = self.container()
        if container is not None:
            self._remove(container)
        self._stop_legacy(lambda _: None)
