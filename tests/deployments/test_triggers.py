"""End to end on the real Prefect server: `prefect deploy --all` from prefect.yaml, a process
worker, the webhook receiver over HTTP, a new commit in a real git repository → a triggered
release that deploys the new version. Replays and forgeries start nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from shipyard import audit, registry
from shipyard.deploy import containers
from shipyard.deploy.endpoint import undeploy
from shipyard.settings import Settings
from shipyard.stack import services
from tests.support.projects import ROOT, commit_all
from tests.support.webhooks import allowed_env, signed_push
from tests.support.workers import stop_worker

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_server")]

BIN = Path(sys.executable).parent
SECRET = "e2e-webhook-secret"
MODEL = "digits-sklearn"


def prefect(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(BIN / "prefect"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def env(settings: Settings, prefect_server: str, sklearn_repo: Path) -> dict[str, str]:
    return {
        **os.environ,
        **allowed_env(sklearn_repo),
        "PREFECT_API_URL": prefect_server,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "SHIPYARD_STATE_DIR": str(settings.state_dir),
        "SHIPYARD_LATENCY_RUNS": "50",
    }


@pytest.fixture
def deployed(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The deployments of prefect.yaml, registered the way a user does it."""
    prefect("work-pool", "create", "shipyard", "--type", "process", "--overwrite", env=env)
    out = prefect("--no-prompt", "deploy", "--all", env=env)
    with get_client(sync_client=True) as client:
        found = {
            name: str(client.read_deployment_by_name(f"{name}/{name}").id)
            for name in ("release", "nightly-rebuild", "rollback", "promote")
        }
    assert "release" in out
    yield found
    # The session's server outlives this test: what it registered goes, with the deployments'
    # triggers (automations they own), which would otherwise start a release on every push
    # later tests send to the server.
    with get_client(sync_client=True) as client:
        for deployment_id in found.values():
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
            client.delete_deployment(uuid.UUID(deployment_id))
        assert not [
            automation.name
            for automation in client.read_automations()
            if "shipyard.model.pushed" in str(automation.trigger)
        ]


@pytest.fixture
def worker(env: dict[str, str], deployed: dict[str, str], tmp_path: Path) -> Iterator[None]:
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            # The stack's worker: the push's run is taken when it is scheduled, not at a poll.
            [*services.PROMPT_WORKER, "--pool", "shipyard", "--type", "process"],
            cwd=ROOT,
            env={**env, "PREFECT_WORKER_QUERY_SECONDS": services.WORKER_POLL_SECONDS},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield
    stop_worker(process, log)


@pytest.fixture
def receiver(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = containers.free_port("127.0.0.1")
    process = subprocess.Popen(
        [str(BIN / "shipyard"), "webhook", "serve", "--port", str(port)],
        cwd=ROOT,
        env={
            **env,
            "SHIPYARD_WEBHOOK_SECRET": SECRET,
            "SHIPYARD_WEBHOOK_DELIVERIES_FILE": str(tmp_path / "deliveries"),
        },
        stdout=(tmp_path / "receiver.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1)
            break
        except httpx.HTTPError:
            assert process.poll() is None and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=30)


def runs_of(deployment_id: str, sha: str) -> list[Any]:
    """The deployment's flow runs of commit `sha`."""
    with get_client(sync_client=True) as client:
        runs = list(
            client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[uuid.UUID(deployment_id)])
                )
            )
        )
    return [r for r in runs if r.parameters.get("ref") == sha]


def test_a_signed_push_releases_and_deploys_the_new_commit_and_a_replay_does_not(
    sklearn_repo: Path,
    settings: Settings,
    deployed: dict[str, str],
    worker: None,
    receiver: str,
) -> None:
    port = containers.free_port("127.0.0.1")
    with (sklearn_repo / "shipyard.yaml").open("a") as manifest:
        manifest.write(f"deploy: {{port: {port}, keep_blue_seconds: 1}}\n")
    sha = commit_all(sklearn_repo, "Serve on a test port")
    delivery = str(uuid.uuid4())
    try:
        sent = time.monotonic()
        answer = signed_push(receiver, sklearn_repo, sha, delivery, SECRET)
        answered = time.monotonic() - sent
        assert answer.status_code == 202, answer.text

        run = None
        deadline = time.monotonic() + 420
        started_after = None
        while time.monotonic() < deadline:
            runs = runs_of(deployed["release"], sha)
            if runs:
                [run] = runs
                if (
                    started_after is None
                    and run.state
                    and not run.state.is_scheduled()
                    and not run.state.is_pending()
                ):
                    started_after = time.monotonic() - sent
                if run.state and run.state.is_final():
                    break
            time.sleep(0.5)
        serving_after = time.monotonic() - sent
        assert run is not None, "no flow run was triggered"
        assert run.state is not None and run.state.is_completed(), run.state
        assert run.parameters["ref"] == sha and run.parameters["source"] == sklearn_repo.as_uri()
        assert run.parameters["branch"] == "main"

        version = registry.client(settings).get_model_version_by_alias(MODEL, "champion")
        assert version.tags["git_sha"] == sha
        served = httpx.get(f"http://127.0.0.1:{port}/v2/models/{MODEL}", timeout=5).json()
        assert served["versions"] == [str(version.version)]
        print(
            f"webhook answered in {answered * 1000:.0f} ms; run started after {started_after:.1f} s; "
            f"new version serving after {serving_after:.1f} s"
        )

        # The audit trail names the push that started it, and what it changed.
        [entry] = [e for e in audit.read(settings, MODEL) if e["action"] == "release"]
        assert entry["who"]["webhook_delivery"] == delivery and entry["who"]["pusher"] == "alice"
        assert entry["who"]["started_by"].startswith("AUTOMATION")
        assert entry["outcome"] == "deployed" and entry["commit"] == sha
        assert entry["champion_after"] == str(version.version)

        replay = signed_push(receiver, sklearn_repo, sha, delivery, SECRET)
        forged = signed_push(receiver, sklearn_repo, sha, str(uuid.uuid4()), secret="guess")
        assert replay.status_code == 409 and forged.status_code == 401
        time.sleep(5)  # what a trigger would need to create a run
        assert len(runs_of(deployed["release"], sha)) == 1
    finally:
        undeploy(settings, MODEL)
