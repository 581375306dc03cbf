"""Background processes Shipyard starts, and how it recognises them later.

A pid alone is not an identity: after the process exits the kernel may hand the pid to another
one. A process is recorded as its pid plus its start time (field 22 of `/proc/<pid>/stat`, in
clock ticks since boot), and is "still ours" only while both match.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shipyard.errors import ShipyardError


@dataclass(frozen=True)
class Started:
    """A process Shipyard started: what `stop` and `status` check before touching it."""

    pid: int
    start_time: int

    def alive(self) -> bool:
        """Whether this very process still runs (not a zombie, not a reused pid)."""
        return _stat(self.pid) == (self.start_time, True)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: object) -> Started | None:
        """A recorded process, or None for a record of an older format or none at all."""
        if isinstance(data, dict) and {"pid", "start_time"} <= data.keys():
            return cls(int(data["pid"]), int(data["start_time"]))
        return None


def _stat(pid: int) -> tuple[int, bool] | None:
    """(start time, running) of `pid`, or None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state); the start time is field 22.
    return int(fields[19]), fields[0] not in ("Z", "X")


def identify(pid: int) -> Started | None:
    """The running process `pid` as a `Started`, or None if it does not run."""
    stat = _stat(pid)
    return Started(pid, stat[0]) if stat and stat[1] else None


def background(args: list[str], log: Path, **popen: object) -> Started:
    """Start `args` in its own session (it outlives this command), output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(  # type: ignore[call-overload]
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
    started = identify(process.pid)
    # It may already have exited (a bad config): record it anyway, `alive()` then says no.
    return started or Started(process.pid, -1)


def short_socket_path(directory: Path, name: str) -> Path:
    """`directory/name` when short enough for a unix socket (at most ~100 bytes), else a fixed
    per-user directory (mode 700) named by the directory's hash, so every process (CLI, worker,
    a container with both bind-mounted) finds the same socket whatever its environment."""
    beside = directory.resolve() / name
    if len(str(beside)) <= 96:
        return beside
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    stem, dot, suffix = name.partition(".")
    return RUNTIME_DIR / f"{stem}-{digest}{dot}{suffix}"


RUNTIME_DIR = Path(f"/tmp/shipyard-{os.getuid()}")


def private_parent(socket_path: Path) -> None:
    """The per-user socket directory exists and is private (mode 700, ours) before a socket is
    created in it. A directory the engine created for a bind mount after a reboot (root, 755)
    is made private when it is ours; one of another user is refused."""
    runtime = socket_path.parent
    if runtime != RUNTIME_DIR:
        return  # beside its config, in a directory of ours
    runtime.mkdir(mode=0o700, exist_ok=True)
    if runtime.stat().st_uid != os.getuid():
        raise ShipyardError(f"{runtime} belongs to another user: remove it and retry.")
    if runtime.stat().st_mode & 0o077:
        runtime.chmod(0o700)
