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


@pytest.mark.services
def test_a_scheduled_run_wakes_the_worker_of_its_pool_only(
    prefect_server: str, tmp_path: Path
) -> None:
    ours, other = f"prompt-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    ours_deployment, other_deployment = _deployment(ours), _deployment(other)
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_WORKER_QUERY_SECONDS": str(POLL_S),
    }
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "shipyard.stack.prompt_worker", "--pool", ours, "--type", "process"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "started!" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2)  # past the worker's first poll: from here, only an event wakes it

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
