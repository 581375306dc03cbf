"""A flow run's process on the stack's worker, started as `python -I -S engine_client.py SOCKET`:
it asks the engine server (`shipyard.stack.engine_server`, which has Prefect and Shipyard's
flows imported already) to fork the run's engine, hands it this process's stdin, stdout and
stderr, environment and directory, forwards the signals it gets to it, and exits with its code.

Standard library only, with no `site` (`-S`): it starts in milliseconds, where `python -m
prefect.engine` imports for about 2 s. When the server does not answer or asks it to (its code
changed on disk since it started), it becomes `python -m prefect.engine` itself (exec), so a run
never depends on the server being up. `forward` is also how the `shipyard` command hands a
`release` to the server (`shipyard.launcher`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time

PACKAGE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
"""This install's `shipyard` package directory: a server of another install does not fork for it."""


def _fallback() -> None:
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *sys.argv[2:]])


def forward(path: str, module: str, argv: list[str]) -> int | None:
    """Run `python -m MODULE ARGV` as a fork of the engine server at `path`, with this process's
    stdin, stdout, stderr, environment, directory and umask, forwarding the signals it gets;
    returns its exit code (or dies of its signal). None when the server does not take it (not
    there, its code changed on disk, another install's): the caller then runs it itself."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        sock.connect(path)
        request = json.dumps(
            {
                "module": module,
                "argv0": sys.argv[0],
                "argv": argv,
                "env": dict(os.environ),
                "cwd": os.getcwd(),
                "umask": umask,
                "package": PACKAGE,
            }
        ).encode()
        socket.send_fds(sock, [struct.pack("!I", len(request)) + request], [0, 1, 2])
        reader = sock.makefile("r")
        first = reader.readline().split()
    except OSError:
        first = []
    if len(first) != 2 or first[0] != "pid":
        sock.close()
        return None
    child = int(first[1])

    def relay(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, relay)
    try:
        last = reader.readline().split()
    except OSError:
        last = []
    # The server reports the exit code; if it went away first, this process waits for the
    # child to end (a flow run's own final state in Prefect's API is what counts).
    if len(last) == 2 and last[0] == "exit":
        return int(last[1])
    if len(last) == 2 and last[0] == "signal":
        signal.signal(int(last[1]), signal.SIG_DFL)
        os.kill(os.getpid(), int(last[1]))
        return 128 + int(last[1])
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return 0
        time.sleep(0.5)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: engine_client.py SOCKET [FLOW_RUN_ID]")
    code = forward(sys.argv[1], "prefect.engine", sys.argv[2:])
    if code is None:
        _fallback()
    sys.exit(code)


if __name__ == "__main__":
    main()
