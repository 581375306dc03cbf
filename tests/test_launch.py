"""The launcher that supervisord runs the MLflow server through: a restart after the server
was killed ends the children it left behind (which would keep its port), and nothing else."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from shipyard.processes import identify

pytestmark = pytest.mark.unit

LAUNCH = [sys.executable, "-m", "shipyard.stack.launch"]


def _orphaning_server(group_file: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A 'server' (through the launcher, in a group of its own) that starts a child writing its
    pid; returns the server and the child's pid."""
    child_pid = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time;"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        f"open({str(child_pid)!r}, 'w').write(str(c.pid)); time.sleep(600)"
    )
    server = subprocess.Popen(
        [*LAUNCH, str(group_file), "--", sys.executable, "-c", script], start_new_session=True
    )
    deadline = time.monotonic() + 20
    while not child_pid.is_file() or not child_pid.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return server, int(child_pid.read_text())


def test_a_restart_ends_what_the_killed_run_left_and_spares_other_groups(tmp_path: Path) -> None:
    group_file = tmp_path / "server.group"
    server, orphan = _orphaning_server(group_file, tmp_path)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        server.kill()  # kill -9 of the leader: its child lives on, as uvicorn's would
        server.wait()
        time.sleep(0.2)
        assert identify(orphan) is not None

        (tmp_path / "child.pid").unlink()
        again, child = _orphaning_server(group_file, tmp_path)
        try:
            deadline = time.monotonic() + 5
            while identify(orphan) is not None:
                assert time.monotonic() < deadline, "the orphan of the killed run still runs"
                time.sleep(0.05)
            assert identify(child) is not None and again.poll() is None
            assert bystander.poll() is None  # another process group is untouched
        finally:
            again.kill()
            subprocess.run(["kill", "-9", str(child)], check=False)
    finally:
        bystander.kill()
        subprocess.run(["kill", "-9", str(orphan)], check=False)
