"""`shipyard stack up --backend postgres`, as a team runs it: Prefect's and MLflow's servers on
the stack's own Postgres, MLflow serving the artifacts over HTTP; a pushed commit releases
through the worker, the nightly rebuild reads the registered model back over HTTP, and the
Postgres databases hold what the release wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from shipyard import engine
from shipyard.deploy import containers
from shipyard.settings import Settings
from shipyard.stack import credentials, postgres
from tests.support.projects import commit_all
from tests.support.webhooks import allowed_env, signed_push

pytestmark = pytest.mark.e2e

SHIPYARD = str(Path(sys.executable).parent / "shipyard")
PREFECT = str(Path(sys.executable).parent / "prefect")
MODEL = "digits-sklearn"
SECRET = "postgres-webhook-secret"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class PostgresStack:
    """A stack of its own (directories, ports, cluster) on the engine and registry that
    `make test` brought up."""

    def __init__(self, root: Path, base_image: str) -> None:
        ports = {
            n: containers.free_port("127.0.0.1")
            for n in ("prefect", "mlflow", "webhook", "postgres")
        }
        self.settings = Settings(
            stack_dir=root / "stack",
            state_dir=root / "state",
            prefect_port=ports["prefect"],
            mlflow_port=ports["mlflow"],
            postgres_port=ports["postgres"],
        )
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING"))
            },
            "SHIPYARD_STACK_DIR": str(self.settings.stack_dir),
            "SHIPYARD_STATE_DIR": str(self.settings.state_dir),
            "SHIPYARD_PREFECT_PORT": str(ports["prefect"]),
            "SHIPYARD_MLFLOW_PORT": str(ports["mlflow"]),
            "SHIPYARD_WEBHOOK_PORT": str(ports["webhook"]),
            "SHIPYARD_POSTGRES_PORT": str(ports["postgres"]),
            "SHIPYARD_WEBHOOK_SECRET": SECRET,
            "SHIPYARD_REGISTRY_PASSWORD": engine.registry_login(Settings()).password,
            "SHIPYARD_BASE_IMAGE": base_image,
            "SHIPYARD_LATENCY_RUNS": "50",
            **allowed_env(root / "digits-sklearn-repo"),
        }
        self.api = f"http://127.0.0.1:{ports['prefect']}/api"
        self.webhook = f"http://127.0.0.1:{ports['webhook']}"
        self.mlflow = f"http://127.0.0.1:{ports['mlflow']}"

    def cli(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [SHIPYARD, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    def query(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """The stack's Prefect API with its credentials (and a CSRF token for a POST)."""
        client = credentials.http_client(self.settings)
        try:
            answer = (
                client.post(self.api + path, json=body) if body else client.get(self.api + path)
            )
            answer.raise_for_status()
            return answer.json()
        finally:
            client.close()

    def flow_runs(self, flow: str) -> list[dict[str, Any]]:
        return list(self.query("/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}}))

    def finished(self, run_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.query(f"/flow_runs/{run_id}")
            if run["state"]["type"] in FINAL:
                return dict(run)
            time.sleep(1)
        pytest.fail(f"flow run {run_id} did not finish within {timeout_s} s")

    def sql(self, database: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """A query on one of the stack's databases, as its role (the generated password)."""
        with psycopg.connect(**postgres.connect_args(self.settings, database)) as connection:  # type: ignore[arg-type]
            return connection.execute(query, params).fetchall()  # type: ignore[arg-type]

    def mlflow_api(self, method: str, **params: str) -> Any:
        answer = httpx.get(f"{self.mlflow}/api/2.0/mlflow/{method}", params=params, timeout=10)
        assert answer.status_code == 200, answer.text[-500:]
        return answer.json()


@pytest.fixture
def stack(tmp_path: Path, docker_stack: dict[str, str]) -> Iterator[PostgresStack]:
    the_stack = PostgresStack(tmp_path, docker_stack["base_image"])
    try:
        yield the_stack
    finally:
        for args in (["undeploy", MODEL], ["stack", "down"]):
            subprocess.run([SHIPYARD, *args], env=the_stack.env, capture_output=True, timeout=120)
        # The cluster lives outside tmp_path when the stack runs as root (Postgres refuses root).
        shutil.rmtree(postgres.cluster_dir(the_stack.settings), ignore_errors=True)


def test_on_postgres_a_pushed_commit_releases_and_the_nightly_reads_it_back_over_http(
    stack: PostgresStack, sklearn_repo: Path
) -> None:
    port = containers.free_port("127.0.0.1")
    with (sklearn_repo / "shipyard.yaml").open("a") as manifest:
        manifest.write(f"deploy: {{port: {port}, keep_blue_seconds: 1}}\n")
    sha = commit_all(sklearn_repo, "Serve on a test port")

    up = json.loads(stack.cli("stack", "up", "--backend", "postgres", "--json").splitlines()[-1])
    assert up["backend"] == "postgres"
    status = json.loads(stack.cli("stack", "status"))
    assert status["backend"].startswith(f"postgres: 127.0.0.1:{stack.settings.postgres_port}")
    assert status["postgres"].startswith("healthy") and "started by shipyard" in status["postgres"]
    # The password is the stack's alone, and no status line or URL carries it.
    secret = postgres.password_file(stack.settings)
    assert secret.stat().st_mode & 0o077 == 0
    assert secret.read_text().strip() not in json.dumps([up, status])
    # Only the stack's role gets in, with its password.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**{**postgres.connect_args(stack.settings), "password": "guess"})  # type: ignore[arg-type]

    # A signed push: the receiver emits the event, the server's trigger starts the release on
    # the worker, which registers through MLflow's server (the registry is in Postgres).
    answer = signed_push(stack.webhook, sklearn_repo, sha, str(uuid.uuid4()), SECRET)
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 60
    while not (releases := stack.flow_runs("release")):
        assert time.monotonic() < deadline, "the accepted push started no release run"
        time.sleep(0.5)
    release = stack.finished(releases[0]["id"], 420)
    assert release["state"]["type"] == "COMPLETED", release["state"]
    assert release["parameters"]["ref"] == sha

    # MLflow's REST API: the champion's run keeps its artifacts on the server, served over HTTP.
    model = stack.mlflow_api("registered-models/get", name=MODEL)["registered_model"]
    champion = next(a["version"] for a in model["aliases"] if a["alias"] == "champion")
    version = stack.mlflow_api("model-versions/get", name=MODEL, version=champion)
    run = stack.mlflow_api("runs/get", run_id=version["model_version"]["run_id"])["run"]
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")
    listed = stack.mlflow_api("artifacts/list", run_id=run["info"]["run_id"], path="model")
    onnx = next(f["path"] for f in listed["files"] if f["path"].endswith(".onnx"))
    served = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/")
    download = httpx.get(
        f"{stack.mlflow}/api/2.0/mlflow-artifacts/artifacts/{served}/{onnx}", timeout=30
    )
    assert download.status_code == 200 and len(download.content) > 1000
    assert (
        download.content
        == next((stack.settings.stack_dir / "mlflow-artifacts").rglob(Path(onnx).name)).read_bytes()
    )

    # The stores are Postgres: MLflow's run and version, Prefect's flow run; no SQLite store.
    assert stack.sql(
        "mlflow", "SELECT status FROM runs WHERE run_uuid = %s", run["info"]["run_id"]
    ) == [("FINISHED",)]
    assert stack.sql("mlflow", "SELECT version FROM model_versions WHERE name = %s", MODEL) == [
        (int(champion),)
    ]
    assert stack.sql("prefect", "SELECT state_type FROM flow_run WHERE id = %s", release["id"]) == [
        ("COMPLETED",)
    ]
    assert not (stack.settings.state_dir / "mlflow.db").exists()
    assert not (stack.settings.stack_dir / "prefect" / "prefect.db").exists()

    # The nightly rebuild, started on its deployment: it downloads the registered model over
    # HTTP and rebuilds its image on the worker.
    started = subprocess.run(
        [PREFECT, "deployment", "run", "nightly-rebuild/nightly-rebuild"],
        capture_output=True, text=True, timeout=120,
        env={**stack.env, "PREFECT_API_URL": stack.api,
             "PREFECT_API_AUTH_STRING": credentials.prefect_auth(stack.settings)},
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)
    nightly = stack.finished(run_id, 300)
    assert nightly["state"]["type"] == "COMPLETED", nightly["state"]
    report = stack.query("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    assert any(f"| {MODEL} | v{champion} |" in str(a.get("data")) for a in report), report

    # The CLI finds the registry through the stack's MLflow server by itself.
    shown = json.loads(stack.cli("status", MODEL, "--json").splitlines()[-1])
    assert str(shown["aliases"]["champion"]["version"]) == champion
    assert shown["deployment"]["endpoint"] == f"http://127.0.0.1:{port}"
