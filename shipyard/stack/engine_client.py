"""A flow run's process on the stack's worker, started as `python -I -S engine_client.py SOCKET`:
it asks the engine server (`shipyard.stack.engine_server`, which has Prefect and Shipyard's
flows imported already) to fork the run's engine, hands it this process's stdin, stdout and
stderr, environment and directory, forwards the signals it gets to it, and exits with its code.

Standard library only, with no `site` (`-S`): it starts in milliseconds, where `python -m
prefect.engine` imports for about 2 s. When the server does not answer or asks it to (its code
changed on disk since it started), it becomes `python -m prefect.engine` itself (exec), so a run
never depends on the server being up.
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


def _fallback() -> None:
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *sys.argv[2:]])


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: engine_client.py SOCKET [FLOW_RUN_ID]")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sys.argv[1])
        request = json.dumps(
            {"env": dict(os.environ), "cwd": os.getcwd(), "argv": sys.argv[2:]}
        ).encode()
        socket.send_fds(sock, [struct.pack("!I", len(request)) + request], [0, 1, 2])
        reader = sock.makefile("r")
        first = reader.readline().split()
    except OSError:
        first = []
    if len(first) != 2 or first[0] != "pid":
        sock.close()
        _fallback()
    child = int(first[1])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    try:
        last = reader.readline().split()
    except OSError:
        last = []
    # The server reports the run's exit code; if it went away first, the run's own final state
    # in Prefect's API is what counts, and this process waits for the run to end.
    if len(last) == 2 and last[0] == "exit":
        sys.exit(int(last[1]))
    if len(last) == 2 and last[0] == "signal":
        signal.signal(int(last[1]), signal.SIG_DFL)
        os.kill(os.getpid(), int(last[1]))
        sys.exit(128 + int(last[1]))
    while True:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            sys.exit(0)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
