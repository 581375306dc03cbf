"""HAProxy (Debian's package) holds a model's stable endpoint and splits traffic by weight.

The backend has two fixed server slots, `blue` and `green`; a rollout points the idle slot at
the new container and moves weights through HAProxy's runtime API (a unix socket), so traffic
moves without a reload and without dropping a connection. The config file is rewritten on every
change, so a restarted HAProxy comes back with the same routing.
https://docs.haproxy.org/2.6/management.html#9.3
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import shutil
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shipyard.errors import DeployError
from shipyard.processes import Started, background
from shipyard.waiting import TimedOut, wait_until

COLORS = ("blue", "green")
BACKEND = "model"
_PLACEHOLDER = ("127.0.0.1", 1)  # an empty slot: kept in maintenance, never sent traffic


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


def render(bind: str, slots: dict[str, Slot], socket_path: Path) -> str:
    """The HAProxy config of one endpoint.

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
            f"    bind {bind}",
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


def _socket_path(directory: Path) -> Path:
    """Beside the config when short enough; a unix socket path holds at most ~100 bytes.

    Otherwise a fixed per-user directory (mode 700), named by the state directory's hash, so
    every process (CLI, worker, cron) finds the same socket whatever its environment.
    """
    beside = directory.resolve() / "haproxy.sock"
    if len(str(beside)) <= 96:
        return beside
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return Path(f"/tmp/shipyard-{os.getuid()}") / f"haproxy-{digest}.sock"


def _private_parent(socket_path: Path) -> None:
    """The per-user socket directory exists and is private (mode 700, ours) before HAProxy
    creates its admin socket in it."""
    runtime = socket_path.parent
    if runtime.name != f"shipyard-{os.getuid()}":
        return  # beside the config, in the state directory
    runtime.mkdir(mode=0o700, exist_ok=True)
    if runtime.stat().st_uid != os.getuid() or runtime.stat().st_mode & 0o077:
        raise DeployError(f"{runtime} is not private to this user: remove it and retry.")


class Proxy:
    """One endpoint's HAProxy: its files live in `directory`."""

    def __init__(self, directory: Path, host: str, port: int) -> None:
        self.directory = directory
        self.host, self.port = host, port
        self.config = directory / "haproxy.cfg"
        self.socket = _socket_path(directory)
        self.pid_file = directory / "haproxy.pid"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pid(self) -> int | None:
        """The running HAProxy's pid: the process recorded at start (pid and start time), if it
        still runs; a stale pid file, or a pid the kernel gave to another process, is None."""
        try:
            started = Started(*map(int, self.pid_file.read_text().split()))
        except (OSError, ValueError, TypeError):
            return None
        return started.pid if started.alive() else None

    def ensure(self, slots: dict[str, Slot], say: Callable[[str], None]) -> None:
        """Write the config and start HAProxy if it is not running."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(render(f"{self.host}:{self.port}", slots, self.socket))
        if self.pid() is not None:
            return
        if shutil.which("haproxy") is None:
            raise DeployError(
                "HAProxy is not installed, and the Docker target's endpoints run on it: "
                "`shipyard stack up` installs Debian's haproxy (or apt-get install haproxy)."
            )
        with socket.socket() as probe:
            if probe.connect_ex((self.host, self.port)) == 0:
                raise DeployError(
                    f"Endpoint port {self.host}:{self.port} is taken by another process: choose "
                    "another with `deploy.port` in shipyard.yaml, or stop what listens there."
                )
        _private_parent(self.socket)
        self.socket.unlink(missing_ok=True)
        started = background(["haproxy", "-f", str(self.config)], self.directory / "haproxy.log")
        self.pid_file.write_text(f"{started.pid} {started.start_time}")
        try:
            wait_until(self.socket.exists, 10, 0.05, give_up=lambda: not started.alive())
        except TimedOut:
            log = (self.directory / "haproxy.log").read_text()[-800:]
            raise DeployError(f"HAProxy did not start on {self.host}:{self.port}: {log}") from None
        say(f"proxy: started HAProxy on {self.url} (pid {started.pid})")

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
        for color, weight in weights.items():
            self.command(f"set server {BACKEND}/{color} weight {weight}")

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

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
