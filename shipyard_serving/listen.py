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
and gives each worker, as it starts, a socket of its own in place of the parent's. The parent's
socket stays bound and never listens: it holds the port, so a port in use fails at once, and it
takes no connections (only listening sockets are in the group). A worker listens only after its
lifespan startup, so no connection waits on a worker still loading its model. The cost: a
connection waiting in a worker's queue when that worker dies is reset, where a shared queue would
have let another worker take it.
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


def bind(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A TCP socket bound to `host:port` (with SO_REUSEPORT unless told not), not listening; a
    bind error (the port in use, an unknown address) is logged and exits with uvicorn's startup
    failure code. SO_REUSEADDR, as uvicorn sets it: connections of a previous server still in
    TIME_WAIT do not hold the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        log.error("cannot listen on %s port %d: %s", host, port, e)
        sys.exit(STARTUP_FAILURE)
    return sock


_started = uvicorn._subprocess.subprocess_started


def _worker_started(
    config: uvicorn.Config, target: Any, sockets: list[socket.socket], stdin_fileno: int | None
) -> None:
    """uvicorn's worker entry point, with each inherited socket replaced by one of its own."""
    own = []
    for inherited in sockets:
        host, port = inherited.getsockname()[:2]
        own.append(bind(host, port))
        inherited.close()
    _started(config, target, own, stdin_fileno)


def run(config: uvicorn.Config) -> None:
    """`uvicorn.run` for `config.workers` > 1, each worker on its own socket."""
    # First without SO_REUSEPORT: a port that another server listens on, even one of this user
    # with SO_REUSEPORT (a second `shipyard serve` on the same port), is refused rather than
    # shared with it.
    probe = bind(config.host, config.port, reuse_port=False)
    port = probe.getsockname()[1]  # the port chosen, when config.port is 0
    probe.close()
    sock = bind(config.host, port)
    # The supervisor creates each worker with this module-level function (uvicorn is pinned in
    # requirements.lock; tests/serving/test_operations.py checks the connections spread).
    uvicorn._subprocess.subprocess_started = _worker_started
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:  # as uvicorn.run: Ctrl-C in a terminal stops it quietly
        pass
    finally:
        sock.close()
