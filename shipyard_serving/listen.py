"""Several worker processes, each accepting connections on a listening socket of its own.

uvicorn's supervisor binds one socket and every worker accepts from it. Connections that arrive
together (a load balancer's pool, a client's keep-alive connections) then mostly go to the worker
the kernel wakes first, which accepts all that are queued: measured with 2 workers and wrk's 16
keep-alive connections, one worker held all 16 in most one-second runs and the server answered
at the rate of one core (BENCHMARKS.md, `make bench-floor`). With SO_REUSEPORT each worker binds
its own socket to the same address and Linux assigns each new connection to one of them by a hash
of its addresses, as nginx's `listen … reuseport` does.
https://man7.org/linux/man-pages/man7/socket.7.html (SO_REUSEPORT)

uvicorn has no option for it (https://github.com/Kludex/uvicorn/pull/2472 is open). `run` keeps
uvicorn's supervisor (`Multiprocess`: it restarts a dead worker and stops on a startup failure)
and gives each worker, as it starts, a socket of its own in place of the parent's. A worker
listens only after its lifespan startup, so no connection waits on a worker still loading its
model.

A port that another server uses is refused, not shared. The parent first binds without
SO_REUSEPORT, which fails if any socket listens on the port (another server's SO_REUSEPORT
workers too). It then holds the port with a socket that never listens (it takes no connections:
only listening sockets are in the group) and has SO_REUSEPORT but not SO_REUSEADDR, so a second
server's first bind fails even while this one's workers are still loading their model. After a
server without SO_REUSEPORT, its connections in TIME_WAIT refuse that holder for up to a minute;
the parent then holds the port with SO_REUSEADDR too, as uvicorn does, and says so.

The cost: connections waiting in a worker's queue when its socket closes (the worker dies, or
is replaced on SIGHUP) are reset, where a shared queue would have let another worker take them;
Linux's `net.ipv4.tcp_migrate_req=1` moves them to another socket of the group instead.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import uvicorn
import uvicorn._subprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("uvicorn.error")


def available() -> bool:
    """Whether the kernel spreads connections over sockets that share a port (Linux does; other
    systems accept the option but give every connection to one socket)."""
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def bind(address: tuple[Any, ...], family: int, *, reuse_port: bool = True) -> socket.socket:
    """A TCP socket bound to `address`, not listening; an error (the port in use, an unknown
    address) is logged and exits with uvicorn's startup failure code. SO_REUSEADDR, as uvicorn
    sets it, lets it bind past connections of a previous server still in TIME_WAIT."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        log.error("cannot listen on %s port %d: %s", address[0], address[1], e)
        sys.exit(STARTUP_FAILURE)
    return sock


def _hold(host: str, port: int) -> socket.socket:
    """The parent's socket: the port checked free, then held (see the module's docstring)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = bind((host, port), family, reuse_port=False)
    address = probe.getsockname()  # the port chosen, when `port` is 0
    probe.close()
    held = socket.socket(family, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind(address)
    except OSError as e:
        held.close()
        log.warning(
            "port %d: %s (a previous server's connections in TIME_WAIT?); holding it with "
            "SO_REUSEADDR: a second server started while this one's workers load their model "
            "could share the port",
            address[1],
            e,
        )
        return bind(address, family)
    return held


_started = uvicorn._subprocess.subprocess_started


def _worker_started(
    config: uvicorn.Config, target: Any, sockets: list[socket.socket], stdin_fileno: int | None
) -> None:
    """uvicorn's worker entry point, with each inherited socket replaced by one of its own."""
    own = []
    for inherited in sockets:
        own.append(bind(inherited.getsockname(), inherited.family))
        inherited.close()
    _started(config, target, own, stdin_fileno)


def run(app: str, *, reuse_port: bool = True, **options: Any) -> None:
    """`uvicorn.run(app, **options)`, with each worker on its own socket when there are several
    and `reuse_port` holds on Linux; then it exits with uvicorn's startup failure code if a
    worker failed to start (uvicorn's own exits 0 then)."""
    if (options.get("workers") or 1) < 2 or not reuse_port or not available():
        uvicorn.run(app, **options)
        return
    config = uvicorn.Config(app, **options)
    sock = _hold(config.host, config.port)
    # The supervisor creates each worker with this module-level function (uvicorn is pinned in
    # requirements.lock; tests/serving/test_operations.py checks the connections spread).
    uvicorn._subprocess.subprocess_started = _worker_started
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    except KeyboardInterrupt:  # as uvicorn.run: Ctrl-C in a terminal stops it quietly
        pass
    finally:
        uvicorn._subprocess.subprocess_started = _started
        sock.close()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        sys.exit(STARTUP_FAILURE)
