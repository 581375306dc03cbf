"""Run an awaitable at once, up to the point where it would have to wait.

Most request bodies arrive with the request's head: uvicorn's `receive()` then returns without
ever waiting, and a timeout armed around it (`asyncio.timeout`: an event-loop timer set and
cancelled, ~4 µs under uvloop) bounds nothing. `eager(receive())` runs the awaitable until it
first waits: it returns the result if it never did, else a `Pending` that finishes the same
awaitable when awaited, the one case worth a timeout. Python 3.12's eager tasks apply the same
idea to whole tasks. https://docs.python.org/3/library/asyncio-task.html#eager-task-factory
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Pending(Generic[T]):
    """An awaitable stopped at its first wait on `waiting_on`; `await` it to finish it."""

    def __init__(self, steps: Generator[Any, Any, T], waiting_on: Any) -> None:
        self._steps, self._waiting_on = steps, waiting_on

    def __await__(self) -> Generator[Any, Any, T]:
        # What `await` does, from where `eager` stopped: hand each future waited on to the task
        # and pass what the task sends or throws (a cancellation above all) back in.
        steps, waiting_on = self._steps, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as e:
                try:
                    waiting_on = steps.throw(e)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    waiting_on = steps.send(sent)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


def eager(awaitable: Awaitable[T]) -> T | Pending[T]:
    """`awaitable`'s result if it completes without waiting, else a `Pending` to await."""
    steps = awaitable.__await__()
    try:
        waiting_on = steps.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    return Pending(steps, waiting_on)
