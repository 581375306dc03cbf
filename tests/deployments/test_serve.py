"""A release started through the Prefect API (as the UI does) on the served deployment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from shipyard import registry
from shipyard.settings import Settings
from tests.support.projects import ROOT, git

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]


def test_served_deployment_runs_a_release_triggered_through_the_api(
    sklearn_repo: Path, settings: Settings, prefect_server: str
) -> None:

    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "SHIPYARD_STATE_DIR": str(settings.state_dir),
        "SHIPYARD_LATENCY_RUNS": "50",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "shipyard.deployments.serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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
        assert run.state is not None and run.state.is_completed(), run.state
    finally:
        server.terminate()
        server.wait(timeout=30)
    version = registry.client(settings).get_model_version_by_alias("digits-sklearn", "candidate")
    assert version.tags["prefect_flow_run_id"] == str(run.id)
    assert version.tags["git_sha"] == git(sklearn_repo, "rev-parse", "HEAD")
