"""A release started through the Prefect API (as the UI does) on the served deployment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from shipyard import registry
from shipyard.settings import Settings
from tests.support.projects import ROOT, git

NAME = "release/release"

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]


def test_served_deployment_runs_a_release_triggered_through_the_api(
    sklearn_repo: Path, settings: Settings, prefect_server: str, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "SHIPYARD_STATE_DIR": str(settings.state_dir),
        "SHIPYARD_LATENCY_RUNS": "50",
    }
    out = log.open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "shipyard.deployments.serve"],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        with get_client(sync_client=True) as client:
            deployment = None
            deadline = time.monotonic() + 120
            while deployment is None and time.monotonic() < deadline:
                assert server.poll() is None, "the serving process exited"
                try:
                    deployment = client.read_deployment_by_name("release/release")
                except Exception:
                    time.sleep(1)
            assert deployment is not None, "the deployment was not registered within 120 s"
            run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"source": sklearn_repo.as_uri(), "ref": "main", "until": "register"},
            )
            while time.monotonic() < deadline + 240:
                run = client.read_flow_run(run.id)
                if run.state and run.state.is_final():
                    break
                time.sleep(1)
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        assert run.state is not None and run.state.is_completed(), (
            f"{run.state}; the run's logs:\n"
            + "\n".join(f"{entry.level} {entry.message}" for entry in logs)[-6000:]
            + "\nthe served process's output ends with:\n"
            + log.read_text(errors="replace")[-6000:]
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        out.close()
    version = registry.client(settings).get_model_version_by_alias("digits-sklearn", "candidate")
    assert version.tags["prefect_flow_run_id"] == str(run.id)
    assert version.tags["git_sha"] == git(sklearn_repo, "rev-parse", "HEAD")


def test_serving_refuses_a_server_whose_release_deployment_belongs_to_a_work_pool(
    prefect_server: str,
) -> None:
    """Serving upserts `release/release` by name: over a worker's deployment it would drop the
    pull steps, and the worker's runs would crash loading the flow. It refuses instead."""
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name="serve-refusal", type="process"), overwrite=True
        )
        flow_id = client.create_flow_from_name("release")
        deployment_id = client.create_deployment(
            flow_id,
            "release",
            work_pool_name="serve-refusal",
            entrypoint="flows/release.py:release",
        )
        try:
            done = subprocess.run(
                [sys.executable, "-m", "shipyard.deployments.serve"],
                cwd=ROOT,
                env={**os.environ, "PREFECT_API_URL": prefect_server},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 1, done.stdout + done.stderr
            assert "already has release/release for the work pool 'serve-refusal'" in done.stderr
            assert "prefect deployment delete release/release" in done.stderr
            kept = client.read_deployment(deployment_id)
            assert (kept.work_pool_name, kept.entrypoint) == (
                "serve-refusal",
                "flows/release.py:release",
            )
        finally:
            client.delete_deployment(deployment_id)
            client.delete_work_pool("serve-refusal")
