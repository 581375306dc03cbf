"""`python -m shipyard.stack.launch GROUP_FILE -- COMMAND...`: end what is left of a program's
previous run, then become COMMAND (same pid, so supervisord supervises COMMAND itself).

supervisord starts every program as the leader of a process group of its own and restarts it
when it dies, but when the leader is killed (`kill -9`, the OOM killer) its children live on:
the MLflow server's uvicorn child keeps the port, and every restart then fails to bind. Before
the new run starts, this kills the processes still in the previous run's group (recorded in
GROUP_FILE), and records the new group. Not for the Prefect worker: its children are flow runs
that finish on their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path


def _members(group: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:  # field 5, pgrp
            pids.append(int(stat.parent.name))
    return pids


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m shipyard.stack.launch GROUP_FILE -- COMMAND...")
    group_file, command = Path(argv[0]), argv[2:]
    own = os.getpgid(0)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    try:
        recorded_boot, recorded = group_file.read_text().split()
        previous: int | None = int(recorded) if recorded_boot == boot else None
    except (OSError, ValueError):
        previous = None
    # A group whose leader still lives is not the dead run's: its number was given out again.
    if previous is not None and previous != own and not Path(f"/proc/{previous}").exists():
        for pid in _members(previous):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    group_file.write_text(f"{boot} {own}\n")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
