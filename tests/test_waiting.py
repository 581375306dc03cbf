"""`wait_until`: the one deadline-poll loop."""

from __future__ import annotations

import time

import pytest

from shipyard.waiting import TimedOut, wait_until

pytestmark = pytest.mark.unit


def test_it_returns_the_first_truthy_answer() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(answers), timeout_s=5, interval_s=0) == "ready"


def test_it_times_out_after_the_deadline_having_tried_at_least_once() -> None:
    calls = []
    start = time.monotonic()
    with pytest.raises(TimedOut):
        wait_until(lambda: calls.append(1), timeout_s=0.2, interval_s=0.05)
    assert 0.2 <= time.monotonic() - start < 2 and len(calls) >= 2


def test_giving_up_ends_the_wait_before_the_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(TimedOut):
        wait_until(lambda: False, timeout_s=30, interval_s=0.01, give_up=lambda: True)
    assert time.monotonic() - start < 1
