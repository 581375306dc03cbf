"""Stopping a Prefect worker a test started, as the stack does (SIGTERM, then a bounded wait)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def stop_worker(process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """SIGTERM the worker and wait for it; past `timeout`, kill it (with what it started) and fail
    with the end of its log and the processes it was still waiting for."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        children = subprocess.run(
            ["ps", "-o", "pid,stat,etime,args", "--ppid", str(process.pid)],
            capture_output=True,
            text=True,
        ).stdout
        subprocess.run(["pkill", "-KILL", "-P", str(process.pid)], check=False)
        process.kill()
        process.wait(timeout=10)
    pytest.fail(
        f"the worker did not exit within {timeout:.0f} s of SIGTERM; its children:\n{children}\n"
        f"the end of its log:\n{log.read_text()[-4000:]}"
    )
