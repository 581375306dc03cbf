"""Running a stage task the same way in every flow: its state and duration reported for the CLI."""

from __future__ import annotations

import logging
import time
from typing import ParamSpec, TypeVar

from prefect import Task

P = ParamSpec("P")
R = TypeVar("R")

progress = logging.getLogger("shipyard.progress")
"""Stage progress for the CLI: one record per finished stage with `stage`, `state`, `seconds`."""


def run_stage(stage: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a stage task, report its state and duration, and return its result (or raise)."""
    progress.info("started", extra={"stage": stage.name, "state": "Running", "seconds": 0.0})
    start = time.perf_counter()
    state = stage(*args, return_state=True, **kwargs)
    seconds = round(time.perf_counter() - start, 2)
    progress.info("finished", extra={"stage": stage.name, "state": state.name, "seconds": seconds})
    return state.result()
