"""Running a stage task the same way in every flow: its state and duration reported for the CLI,
and kept for the flow's report."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from prefect import Task
from prefect.context import FlowRunContext
from prefect.runtime import deployment

from shipyard.contracts import StageTiming
from shipyard.errors import ShipyardError
from shipyard.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

progress = logging.getLogger("shipyard.progress")
"""Stage progress for the CLI: one record per finished stage with `stage`, `state`, `seconds`."""

_timings: ContextVar[list[StageTiming] | None] = ContextVar("shipyard_timings", default=None)


@contextmanager
def timed() -> Iterator[list[StageTiming]]:
    """The timing of every stage `run_stage` runs inside this block, in order (the list fills
    as they finish)."""
    timings: list[StageTiming] = []
    token = _timings.set(timings)
    try:
        yield timings
    finally:
        _timings.reset(token)


def run_stage(stage: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a stage task, report its state and duration, and return its result (or raise)."""
    progress.info("started", extra={"stage": stage.name, "state": "Running", "seconds": 0.0})
    start = time.perf_counter()
    state = stage(*args, return_state=True, **kwargs)
    seconds = round(time.perf_counter() - start, 2)
    name = state.name or state.type.value
    progress.info("finished", extra={"stage": stage.name, "state": name, "seconds": seconds})
    timings = _timings.get()
    if timings is not None:
        timings.append(
            StageTiming(stage=stage.name, state=name, seconds=seconds, cached=name == "Cached")
        )
    return state.result()


def run_settings(settings: Settings | None) -> Settings:
    """The settings a flow runs with: the caller's for a direct call (the CLI, tests), the
    worker's own for a deployment run (UI, API, trigger, schedule).

    A deployment run's parameters are data only: one that carries `settings` is refused, so
    whoever can start a run cannot point it at another registry, turn the sandbox off or
    widen the allowed sources.
    """
    if settings is not None and _deployment_id() is not None:
        raise ShipyardError(
            "`settings` was given as a parameter of a deployment run: deployment runs use the "
            "worker's settings (SHIPYARD_* in its environment, shipyard.toml). Start the run "
            "without `settings`."
        )
    return settings or Settings()


def _deployment_id() -> Any:
    """The running flow's deployment, read from the run the engine already holds.

    Not `prefect.runtime.deployment.id` first: it looks for the id on the run's context rather
    than on its flow run, finds none, and reads the flow run from the API again (a round trip
    per release)."""
    context = FlowRunContext.get()
    if context is not None and context.flow_run is not None:
        return context.flow_run.deployment_id
    return deployment.id
