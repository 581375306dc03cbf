"""One deadline-poll loop for everything that waits on something outside the process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class TimedOut(Exception):
    """`wait_until` ran out of time; callers turn it into an error of their own."""


def wait_until(
    condition: Callable[[], T | None],
    timeout_s: float,
    interval_s: float = 0.2,
    give_up: Callable[[], bool] = lambda: False,
) -> T:
    """Call `condition` until it returns something truthy (returned), `give_up` says so, or
    `timeout_s` passes; the last two raise `TimedOut`. `condition` runs at least once."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if give_up() or time.monotonic() > deadline:
            raise TimedOut
        time.sleep(interval_s)
