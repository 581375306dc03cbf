"""A stack on Postgres, as a team runs it: a SQLite stack moved by `shipyard stack migrate --to
postgres` (its registry, artifacts, Prefect variables, limits and blocks with it), then Prefect's
and MLflow's servers on the stack's own Postgres, MLflow serving the artifacts over HTTP; a
pushed commit releases through the worker, the nightly rebuild reads the registered model back
over HTTP, and the Postgres databases hold what the release wrote."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
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

from shipyard import engine, registry
from shipyard.deploy import containers
from shipyard.errors import StackError
from shipyard.settings import Settings
from shipyard.stack import credentials, postgres
from tests.support.projects import commit_all
from tests.support.webhooks import allowed_env, signed_push

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

    def prefect_env(self) -> dict[str, str]:
        auth = credentials.prefect_auth(self.settings)
        return {**self.env, "PREFECT_API_URL": self.api, "PREFECT_API_AUTH_STRING": auth}

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


def seed(stack: PostgresStack, tmp_path: Path) -> dict[str, str]:
    """What a team has made on the SQLite stack: a registered model with an alias, its run
    (param, a metric's history, a tag, an artifact file); a Prefect variable, a global
    concurrency limit and a Secret block."""
    mlflow = registry.client(stack.settings)
    experiment = mlflow.create_experiment(
        "seeded", artifact_location=(stack.settings.artifact_root / "seeded").as_uri()
    )
    run = mlflow.create_run(experiment)
    mlflow.log_param(run.info.run_id, "alpha", "0.5")
    for step, loss in enumerate([0.3, 0.2, 0.1]):
        mlflow.log_metric(run.info.run_id, "loss", loss, step=step)
    mlflow.set_tag(run.info.run_id, "team", "ml")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(4096))
    mlflow.log_artifact(run.info.run_id, str(weights), "model")
    mlflow.set_terminated(run.info.run_id)
    mlflow.create_registered_model("seeded-model")
    version = mlflow.create_model_version(
        "seeded-model", f"{run.info.artifact_uri}/model", run.info.run_id
    )
    mlflow.set_registered_model_alias("seeded-model", "team-pick", version.version)
    stack.query("/variables/", {"name": "team_note", "value": "kept"})
    stack.query("/v2/concurrency_limits/", {"name": "team-limit", "limit": 3})
    saved = subprocess.run(
        [sys.executable, "-c", "from prefect.blocks.system import Secret; "
         "Secret(value='team-token-value').save('team-token')"],
        capture_output=True, text=True, env=stack.prefect_env(), timeout=120,
    )  # fmt: skip
    assert saved.returncode == 0, saved.stderr[-2000:]
    return {"run_id": run.info.run_id, "version": str(version.version), "weights": str(weights)}


@pytest.mark.e2e
def test_a_migrated_stack_on_postgres_releases_a_push_and_the_nightly_reads_it_over_http(
    stack: PostgresStack, sklearn_repo: Path, tmp_path: Path
) -> None:
    port = containers.free_port("127.0.0.1")
    with (sklearn_repo / "shipyard.yaml").open("a") as manifest:
        manifest.write(f"deploy: {{port: {port}, keep_blue_seconds: 1}}\n")
    sha = commit_all(sklearn_repo, "Serve on a test port")

    assert json.loads(stack.cli("stack", "up", "--json").splitlines()[-1])["backend"] == "sqlite"
    seeded = seed(stack, tmp_path)
    moved = stack.cli("stack", "migrate", "--to", "postgres", "--json")
    up = json.loads(moved.splitlines()[-1])
    assert up["backend"] == "postgres"
    assert {k: up["mlflow_rows"].get(k) for k in ("runs", "metrics", "model_versions")} == {
        "runs": 1,
        "metrics": 3,
        "model_versions": 1,
    }
    assert up["mlflow_artifact_files"] == 1
    assert up["prefect"] == {
        "variables": 1, "concurrency limits": 1, "blocks": 1, "automations": 0
    }  # fmt: skip
    status = json.loads(stack.cli("stack", "status"))
    assert status["backend"].startswith(f"postgres: 127.0.0.1:{stack.settings.postgres_port}")
    assert status["postgres"].startswith("healthy") and "started by shipyard" in status["postgres"]
    # The password is the stack's alone, and no status line or URL carries it.
    secret = postgres.password_file(stack.settings)
    assert secret.stat().st_mode & 0o077 == 0
    assert secret.read_text().strip() not in json.dumps([up, status]) + moved

    # What the team made came along: the registry (ids kept, artifacts served over HTTP) ...
    model = stack.mlflow_api("registered-models/get", name="seeded-model")["registered_model"]
    assert [(a["alias"], a["version"]) for a in model["aliases"]] == [
        ("team-pick", seeded["version"])
    ]
    run = stack.mlflow_api("runs/get", run_id=seeded["run_id"])["run"]
    assert run["info"]["artifact_uri"] == f"mlflow-artifacts:/seeded/{seeded['run_id']}/artifacts"
    assert run["data"]["params"] == [{"key": "alpha", "value": "0.5"}]
    assert {"key": "team", "value": "ml"} in run["data"]["tags"]
    history = stack.mlflow_api("metrics/get-history", run_id=seeded["run_id"], metric_key="loss")
    assert [m["value"] for m in sorted(history["metrics"], key=lambda m: m["step"])] == [
        0.3,
        0.2,
        0.1,
    ]
    weights = httpx.get(
        f"{stack.mlflow}/api/2.0/mlflow-artifacts/artifacts/seeded/{seeded['run_id']}/artifacts/model/weights.bin",
        timeout=30,
    )
    assert weights.status_code == 200 and weights.content == Path(seeded["weights"]).read_bytes()
    # ... and Prefect's variable, limit and Secret block; the deployments' trigger is made
    # again by `stack up`, not copied (a push releases once, below).
    assert stack.query("/variables/name/team_note")["value"] == "kept"
    assert stack.query("/v2/concurrency_limits/team-limit")["limit"] == 3
    token = stack.query(
        "/block_types/slug/secret/block_documents/name/team-token?include_secrets=true"
    )
    assert token["data"] == {"value": "team-token-value"}
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
    embedded = sqlite3.connect(stack.settings.state_dir / "mlflow.db")  # left as it was
    assert embedded.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    embedded.close()

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

    # A second migration is refused: the stack runs on Postgres now.
    again = subprocess.run(
        [SHIPYARD, "stack", "migrate", "--to", "postgres"],
        capture_output=True, text=True, env=stack.env, timeout=120,
    )  # fmt: skip
    assert again.returncode == 1 and "already runs on Postgres" in again.stderr


@pytest.mark.unit
def test_the_recorded_backend_plans_postgres_stores_and_http_clients(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shipyard.stack import services

    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "SHIPYARD_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "unit")
    settings = Settings(stack_dir=tmp_path / "stack", state_dir=tmp_path / "state")
    assert postgres.backend(settings) == "sqlite"
    sqlite_plan = {s.name: s for s in services.plan(settings)}
    assert "postgres" not in sqlite_plan
    assert "MLFLOW_TRACKING_URI" not in sqlite_plan["prefect-worker"].env

    postgres.record_backend(settings, "postgres")  # what `stack up --backend postgres` does
    later = Settings(stack_dir=tmp_path / "stack", state_dir=tmp_path / "state")
    plan = {s.name: s for s in services.plan(later)}
    assert next(iter(plan)) == "postgres" and plan["postgres"].user in (None, "postgres")
    mlflow = plan["mlflow-server"].args
    store = mlflow[mlflow.index("--backend-store-uri") + 1]
    assert store == f"postgresql+psycopg://shipyard@127.0.0.1:{later.postgres_port}/mlflow"
    assert "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--default-artifact-root") + 1] == "mlflow-artifacts:/"
    server = plan["prefect-server"].env
    assert server["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert server["PGPASSFILE"] == str(postgres.passfile(later))
    worker = plan["prefect-worker"].env
    assert worker["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{later.mlflow_port}"
    # The CLI is pointed at the same server; a tracking URI the user set is left alone.
    environ: dict[str, str] = {}
    assert postgres.use_stack_mlflow(later, environ) == worker["MLFLOW_TRACKING_URI"]
    mine = Settings(stack_dir=tmp_path / "stack", mlflow_tracking_uri="https://mlflow.team")
    assert postgres.use_stack_mlflow(mine, {}) is None
    with pytest.raises(StackError, match="Unknown backend 'mysql'"):
        postgres.record_backend(later, "mysql")


@pytest.mark.unit
def test_a_team_servers_credentials_reach_the_worker_through_its_program_file_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shipyard.stack import services, supervisor

    monkeypatch.setenv("PREFECT_API_URL", "https://prefect.team.example/api")
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_team_key")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.team.example")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "team-mlflow-password")
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "unit")
    settings = Settings(stack_dir=tmp_path / "stack", state_dir=tmp_path / "state")
    plan = {s.name: s for s in services.plan(settings)}
    worker, webhook = plan["prefect-worker"], plan["webhook"]
    assert worker.env["PREFECT_API_KEY"] == webhook.env["PREFECT_API_KEY"] == "pnu_team_key"
    assert worker.env["MLFLOW_TRACKING_PASSWORD"] == "team-mlflow-password"
    assert "MLFLOW_TRACKING_PASSWORD" not in webhook.env
    program = supervisor.Program(worker.name, worker.args, worker.env)
    rendered = supervisor.render_program(program, tmp_path / "worker.log")
    command = next(line for line in rendered.splitlines() if line.startswith("command="))
    assert "pnu_team_key" not in command and "team-mlflow-password" in rendered

    # The stack's own servers take no key of another's.
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name)
    settings = Settings(stack_dir=tmp_path / "stack", state_dir=tmp_path / "state")
    own = {s.name: s for s in services.plan(settings)}
    assert "PREFECT_API_KEY" not in own["prefect-worker"].env
    assert "MLFLOW_TRACKING_PASSWORD" not in own["prefect-worker"].env
