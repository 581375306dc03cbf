"""The stack's worker takes a run when it is scheduled, not at its next poll: its pool's
`prefect.flow-run.Scheduled` events wake it (`shipyard.stack.prompt_worker`), another pool's do
not, and Prefect's own poll still runs beside it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate

from tests.support.workers import stop_worker

POLL_S = 120
"""The worker's polling interval here: longer than the test, so only an event explains a pickup
after the first poll."""


def _deployment(pool: str) -> uuid.UUID:
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
        flow_id = client.create_flow_from_name(f"noop-{pool}")
        return client.create_deployment(
            flow_id, "noop", entrypoint="nowhere.py:noop", work_pool_name=pool
        )


def _run(deployment: uuid.UUID) -> tuple[uuid.UUID, str]:
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment)
        return run.id, run.name


def _state(run: uuid.UUID) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run).state_type.value  # type: ignore[union-attr]


def _start_worker(prefect_server: str, pool: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """The stack's worker on `pool`, polling every POLL_S; returns once it has started."""
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_WORKER_QUERY_SECONDS": str(POLL_S),
    }
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "shipyard.stack.prompt_worker", "--pool", pool, "--type", "process", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while "started!" not in log.read_text():
        if worker.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker, log)
            pytest.fail(f"the worker did not start: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    time.sleep(2)  # past the worker's first poll: from here, only an event wakes it
    return worker


@pytest.mark.services
def test_a_scheduled_run_wakes_the_worker_of_its_pool_only(
    prefect_server: str, tmp_path: Path
) -> None:
    ours, other = f"prompt-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    ours_deployment, other_deployment = _deployment(ours), _deployment(other)
    log = tmp_path / "worker.log"
    worker = _start_worker(prefect_server, ours, log)
    try:
        elsewhere, elsewhere_name = _run(other_deployment)
        run, name = _run(ours_deployment)
        started = time.monotonic()
        while _state(run) == "SCHEDULED":
            assert time.monotonic() - started < POLL_S / 2, log.read_text()[-3000:]
            time.sleep(0.1)
        text = log.read_text()
        assert f"{name} scheduled: polling now" in text
        assert elsewhere_name not in text  # another pool's run neither woke nor went to it
        assert _state(elsewhere) == "SCHEDULED"
    finally:
        stop_worker(worker, log)
    # SIGTERM stops it cleanly, a run just submitted or not (supervisor's `stop` sends SIGTERM).
    assert "Received SIGTERM: stopping the process worker" in log.read_text()
    assert worker.returncode == 0, log.read_text()[-3000:]


@pytest.mark.services
def test_a_run_scheduled_while_every_slot_is_taken_starts_when_one_frees(
    prefect_server: str, tmp_path: Path
) -> None:
    """`--limit 1` (each docker-pool worker's): two runs scheduled at once, the second waits for
    the first's slot, and is taken when that frees, not at the next poll (POLL_S away). The
    runs here end at once (their entrypoint does not exist), which frees the slot."""
    pool = f"limited-{uuid.uuid4().hex[:8]}"
    deployment = _deployment(pool)
    log = tmp_path / "worker.log"
    worker = _start_worker(prefect_server, pool, log, "--limit", "1")
    try:
        first, _ = _run(deployment)
        second, _ = _run(deployment)
        started = time.monotonic()
        while "SCHEDULED" in (_state(first), _state(second)):
            assert time.monotonic() - started < POLL_S / 2, log.read_text()[-3000:]
            time.sleep(0.2)
        print(f"both runs taken {time.monotonic() - started:.1f} s after they were scheduled")
        assert "a slot is free: polling now" in log.read_text()
    finally:
        stop_worker(worker, log)
