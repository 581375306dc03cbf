"""The `shipyard` command as a user runs it: a subprocess against the test Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.projects import commit_all, edit_manifest, git

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("prefect_server")]

SHIPYARD = str(Path(sys.executable).parent / "shipyard")


def run(args: list[str], state: Path, api_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SHIPYARD_STATE_DIR": str(state),
        "SHIPYARD_LATENCY_RUNS": "50",
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_URL": api_url.removesuffix("/api"),
    }
    return subprocess.run([SHIPYARD, *args], capture_output=True, text=True, env=env, timeout=600)


def test_release_json_summary_and_status(
    sklearn_repo: Path, tmp_path: Path, prefect_server: str
) -> None:
    state = tmp_path / "state"
    done = run(
        ["release", sklearn_repo.as_uri(), "--ref", "main", "--until", "register", "--json"],
        state,
        prefect_server,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert {
        "model",
        "version",
        "fingerprint",
        "onnx_sha256",
        "variant",
        "metrics",
        "mlflow_run_id",
        "status",
    } <= set(summary)
    assert summary["status"] == "registered" and summary["version"] == "1"
    assert summary["git_sha"] == git(sklearn_repo, "rev-parse", "HEAD")
    for stage in ("source", "data", "train", "export", "optimize", "validate", "register"):
        assert f"✓ {stage}" in done.stderr
    assert (
        f"flow run: {prefect_server.removesuffix('/api')}/runs/flow-run/{summary['flow_run_id']}"
        in done.stderr
    )

    status = run(["status", "digits-sklearn", "--json"], state, prefect_server)
    assert status.returncode == 0, status.stderr
    candidate = json.loads(status.stdout)["aliases"]["candidate"]
    assert candidate["version"] == "1"
    assert candidate["tags"]["fingerprint"] == summary["fingerprint"]


def test_a_bad_manifest_exits_non_zero_naming_the_field(
    sklearn_repo: Path, tmp_path: Path, prefect_server: str
) -> None:
    edit_manifest(sklearn_repo, "framework: sklearn", "framework: xgboost")
    commit_all(sklearn_repo, "Unsupported framework")
    done = run(
        ["release", sklearn_repo.as_uri(), "--ref", "main", "--until", "register", "--json"],
        tmp_path / "s",
        prefect_server,
    )
    assert done.returncode == 1
    assert "error:" in done.stderr and "framework" in done.stderr and "xgboost" in done.stderr
    assert "Traceback" not in done.stderr  # one clear message; the Prefect UI keeps the trace
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["status"] == "failed" and "framework" in last["error"]


def test_status_of_an_unknown_model(tmp_path: Path, prefect_server: str) -> None:
    done = run(["status", "no-such-model"], tmp_path / "s", prefect_server)
    assert done.returncode == 1
    assert "No registered model 'no-such-model'" in done.stderr
