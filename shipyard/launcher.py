"""The `shipyard` command's entry point. `shipyard release …` runs as a fork of the stack's
engine server when one answers for this very install (`shipyard.stack.engine_server`: Prefect,
MLflow, the flows and their stages imported already, which a fresh process spends about 2.5 s
importing here); with no server, or another install's, or any other command, `shipyard.cli`
runs in this process, as before.

The fork is the command as this process would have run it: the same arguments, standard
streams, environment, directory and umask; the signals this process gets (Ctrl-C) reach it,
and this process exits with its code. `SHIPYARD_NO_FORK=1` turns it off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FORKED = frozenset({"release"})


def engine_socket() -> Path | None:
    """The engine server's socket of the stack this environment names, if there is one."""
    from shipyard.processes import short_socket_path

    configured = os.environ.get("SHIPYARD_STACK_DIR")
    stack = Path(configured) if configured else Path.home() / ".local/share/shipyard/stack"
    path = short_socket_path(stack, "engine.sock")
    return path if path.is_socket() else None


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command in FORKED and os.environ.get("SHIPYARD_NO_FORK") != "1":
        path = engine_socket()
        if path is not None:
            from shipyard.stack.engine_client import forward

            code = forward(str(path), "shipyard.launcher", sys.argv[1:])
            if code is not None:
                sys.exit(code)
    run_here()


def run_here() -> None:
    """The command in this process, named as its script is (`shipyard`)."""
    from shipyard.cli import app

    app(prog_name=Path(sys.argv[0]).name)


if __name__ == "__main__":  # in a fork of the engine server, which set sys.argv
    run_here()
