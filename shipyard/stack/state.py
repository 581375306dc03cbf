"""`stack.json`: what the stack started (each process as pid plus start time) and built; and
the modes of what the stack keeps: its directory and the state directory hold secrets (the
registry's and Prefect's credentials, the webhook secret, TLS keys), databases and logs, so
directories are 0700 and files 0600, owner only."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from shipyard.settings import Settings

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# Large trees whose directory alone (0700) keeps others out: not walked file by file.
_NOT_WALKED = ("registry", "wheelhouse", "rootfs")
STATE_FILES = ("audit.jsonl", "mlflow.db", "mlflow.db-journal", "mlflow.db-wal", "mlflow.db-shm")
"""What the state directory holds that is not for others to read: the audit trail and the
MLflow store."""


def private_dir(settings: Settings) -> None:
    """The stack directory, created readable by its owner only (it holds secrets)."""
    make_private_dir(settings.stack_dir)


def make_private_dir(path: Path) -> Path:
    """`path` (and missing parents) created 0700; an existing one is tightened to 0700."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def write_private(path: Path, text: str) -> None:
    """`path` holds `text`, mode 600 from the first byte (never readable by others, not even
    for a moment), replaced at once (a reader never sees half a file)."""
    staged = path.with_name(f".{path.name}.tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(staged, PRIVATE_FILE)  # a stale staged file of another mode
    os.replace(staged, path)


def create_private(path: Path, text: str) -> bool:
    """`path` created with `text`, mode 600, unless it exists; returns whether it created it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


def _tighten(path: Path) -> None:
    """Remove the group and other bits of `path` (the owner's stay: an executable stays one)."""
    mode = path.lstat()
    if stat.S_ISLNK(mode.st_mode) or mode.st_uid != os.geteuid():
        return
    if stat.S_IMODE(mode.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(mode.st_mode) & ~0o077)


def tighten(settings: Settings) -> list[Path]:
    """The stack directory and the state directory, and what they hold, readable by their owner
    only (what an older Shipyard, or a supervisord rotating a log, created 0644 is tightened);
    returns the directories."""
    stack = make_private_dir(settings.stack_dir)
    for root, dirs, files in os.walk(stack):
        here = Path(root)
        if here == stack:
            dirs[:] = [d for d in dirs if d not in _NOT_WALKED]
        for name in [*dirs, *files]:
            _tighten(here / name)
    for name in _NOT_WALKED:
        if (stack / name).is_dir():
            _tighten(stack / name)
    state = make_private_dir(settings.state_dir.resolve())
    for name in STATE_FILES:
        if (state / name).exists():
            _tighten(state / name)
    return [stack, state]


def read(settings: Settings) -> dict[str, Any]:
    path = settings.stack_file
    state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    state.setdefault("started", {})
    state.setdefault("services", {})
    return state


def write(settings: Settings, state: dict[str, Any]) -> None:
    private_dir(settings)
    write_private(settings.stack_file, json.dumps(state, indent=2, sort_keys=True))
