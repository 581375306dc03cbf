"""`stack.json`: what the stack started (each process as pid plus start time) and built."""

from __future__ import annotations

import json
import os
from typing import Any

from shipyard.settings import Settings


def private_dir(settings: Settings) -> None:
    """The stack directory, created readable by its owner only (it holds secrets)."""
    settings.stack_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def read(settings: Settings) -> dict[str, Any]:
    path = settings.stack_file
    state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    state.setdefault("started", {})
    state.setdefault("services", {})
    return state


def write(settings: Settings, state: dict[str, Any]) -> None:
    private_dir(settings)
    staged = settings.stack_file.with_suffix(".tmp")
    staged.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(staged, settings.stack_file)  # a reader never sees half a file
