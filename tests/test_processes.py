"""A recorded process is Shipyard's only while its pid and its start time both match."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from shipyard.processes import Started, background, identify
from shipyard.waiting import wait_until

pytestmark = pytest.mark.unit


def test_a_started_process_is_ours_until_it_exits(tmp_path: Path) -> None:
    started = background(["sleep", "30"], tmp_path / "sleep.log")
    try:
        assert started.alive() and identify(started.pid) == started
        assert Started.from_json(started.to_json()) == started
    finally:
        os.kill(started.pid, signal.SIGKILL)
    wait_until(lambda: not started.alive(), timeout_s=5, interval_s=0.01)


def test_a_reused_pid_with_another_start_time_is_not_ours() -> None:
    me = identify(os.getpid())
    assert me is not None and me.alive()
    assert not Started(me.pid, me.start_time + 1).alive()  # the kernel gave the pid to another


def test_records_of_an_older_format_are_not_trusted() -> None:
    assert Started.from_json(12345) is None  # a bare pid, as earlier versions recorded
    assert Started.from_json({"pid": 1}) is None


def test_a_process_that_exits_at_once_is_recorded_but_not_alive(tmp_path: Path) -> None:
    started = background(["true"], tmp_path / "true.log")
    # Exited, then a zombie or reaped: either way no longer a running process of ours.
    wait_until(lambda: not started.alive(), timeout_s=5, interval_s=0.01)
