"""`shipyard stack up --pool docker --workers 2`, as an operator runs it: release runs in
containers of the stack's worker image, taken by two Prefect docker workers (prefect-docker),
with the serve API key carried as a Secret block and the host's pip settings (its index's CA);
two models release in parallel (one with its own requirements.lock, whose wheels its run
downloads), one model's two releases never overlap (its build lock is a
Prefect global concurrency limit, held across workers)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from shipyard import engine
from shipyard.deploy.containers import LABEL
from shipyard.sandbox import container as sandbox
from shipyard.settings import Settings
from shipyard.stack import credentials as control_plane
from shipyard.stack import docker_pool, pool_run
from tests.support.projects import commit_all, lock_of, make_repo
from tests.support.stacks import stack_env

SHIPYARD = str(Path(sys.executable).parent / "shipyard")
PREFECT = str(Path(sys.executable).parent / "prefect")
DONE = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
LOCKED = ("train", "export", "optimize", "validate", "register", "build_image", "push_image")
"""Stages under the model's build lock (data runs ahead of its task)."""


def _renamed(repo: Path, name: str) -> Path:
    manifest = repo / "shipyard.yaml"
    text = manifest.read_text()
    manifest.write_text(text.replace("name: digits-sklearn", f"name: {name}", 1))
    assert f"name: {name}" in manifest.read_text()
    commit_all(repo, f"Call it {name}")
    return repo


def _when(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_server")
def test_two_docker_workers_run_two_models_at_once_and_one_model_in_turn(
    tmp_path: Path, docker_stack: dict[str, str]
) -> None:
    first = make_repo(tmp_path / "a", "digits-sklearn")
    second = _renamed(make_repo(tmp_path / "b", "digits-sklearn"), "digits-second")
    # The second project has its own lock: its run (in a container, with none of the host's pip
    # files) downloads those wheels with the pip settings `stack up` carried. Here the index's
    # CA is trusted only on the host: without them the download fails. A comment unique to
    # this test makes the lock new to the engine, so the run builds that sandbox image.
    lock = f"# {os.urandom(4).hex()}\n" + lock_of("tabulate", tmp_path)
    (second / sandbox.PROJECT_LOCK).write_text(lock)
    train = second / "train.py"
    train.write_text("import tabulate  # from the project's lock\n" + train.read_text())
    commit_all(second, "Train with a package of its own lock")
    lock_image = f"{sandbox.image_tag()}-p{hashlib.sha256(lock.encode()).hexdigest()[:16]}"
    credentials = engine.registry_login(Settings())
    env, ports = stack_env(tmp_path, docker_stack["base_image"])
    # A secret the runs need reaches them as a Secret block, never in the pool's template.
    api_key = "k-not-in-any-template-" + os.urandom(4).hex()
    env["SHIPYARD_SERVE_API_KEY"] = api_key

    def shipyard(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        # From the directory the projects are in: the runs see it at the same path.
        done = subprocess.run(
            [SHIPYARD, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done

    urls = json.loads(
        shipyard("stack", "up", "--pool", "docker", "--workers", "2", "--json").stdout.splitlines()[
            -1
        ]
    )
    api = urls["prefect_api"]
    stack = Settings(stack_dir=tmp_path / "stack", prefect_port=ports["prefect"])
    prefect = control_plane.http_client(stack)
    client = docker.from_env()
    try:
        status = json.loads(shipyard("stack", "status").stdout)
        assert status["pool"].startswith("docker: shipyard-docker, 2 workers")
        assert "prefect-worker" not in status and "engine-server" not in status
        pool = prefect.get(f"{api}/work_pools/{docker_pool.POOL}").json()
        assert pool["type"] == "docker"
        defaults = {
            name: spec.get("default")
            for name, spec in pool["base_job_template"]["variables"]["properties"].items()
        }
        assert defaults["network_mode"] == "host"
        assert defaults["image"].startswith(f"{Settings().registry}/{docker_pool.REPOSITORY}:")
        # The template carries no secret: the password is a Secret block, not an env value.
        template = json.dumps(pool["base_job_template"])
        assert credentials.password not in template and api_key not in template
        assert defaults["env"][pool_run.ENV_FROM_BLOCKS] == (
            "SHIPYARD_SERVE_API_KEY=shipyard-env-shipyard-serve-api-key"
        )
        assert defaults["command"] == "python -m shipyard.stack.pool_run"
        # Runs check they see this stack's directory and engine before they start.
        engine_id = client.info()["ID"]
        assert defaults["env"][pool_run.POOL_ENGINE] == engine_id
        assert (tmp_path / "stack" / pool_run.ENGINE_FILE).read_text().strip() == engine_id
        assert defaults["env"]["SHIPYARD_REGISTRY_PASSWORD_BLOCK"] == docker_pool.PASSWORD_BLOCK
        deployment = prefect.get(f"{api}/deployments/name/release/release").json()
        assert deployment["work_pool_name"] == docker_pool.POOL

        def start(repo: Path, ref: str = "main") -> str:
            started = subprocess.run(
                [PREFECT, "deployment", "run", "release/release", "--param",
                 f"source={repo.as_uri()}", "--param", f"ref={ref}", "--param", "until=push"],
                capture_output=True, text=True, timeout=120,
                env={**env, "PREFECT_API_URL": api,
                     "PREFECT_API_AUTH_STRING": control_plane.prefect_auth(stack)},
            )  # fmt: skip
            assert started.returncode == 0, started.stdout + started.stderr
            return next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)

        def finished(run_ids: list[str], timeout_s: float = 600) -> list[dict[str, Any]]:
            deadline = time.monotonic() + timeout_s
            seen_containers: set[str] = set()
            while True:
                runs = [prefect.get(f"{api}/flow_runs/{i}").json() for i in run_ids]
                for c in client.containers.list(
                    filters={"label": f"{LABEL}.role={docker_pool.ROLE}"}
                ):
                    seen_containers.add(c.id)
                if all(r["state"]["type"] in DONE for r in runs):
                    break
                assert time.monotonic() < deadline, [r["state"] for r in runs]
                time.sleep(1)
            for r in runs:
                if r["state"]["type"] != "COMPLETED":
                    logs = prefect.post(
                        f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [r["id"]]}}}
                    ).json()
                    pytest.fail(
                        f"{r['state']}: " + "\n".join(log["message"] for log in logs)[-3000:]
                    )
            assert seen_containers, "no run ran in a container of the worker image"
            return runs

        def locked_span(run_id: str) -> tuple[float, float]:
            tasks = prefect.post(
                f"{api}/task_runs/filter",
                json={"flow_runs": {"id": {"any_": [run_id]}}},
            ).json()
            ours = [t for t in tasks if t["name"].rpartition("-")[0] in LOCKED and t["start_time"]]
            assert ours, [t["name"] for t in tasks]
            return min(_when(t["start_time"]) for t in ours), max(
                _when(t["end_time"]) for t in ours
            )

        # Both workers poll the pool (each starts in seconds under supervisord).
        deadline = time.monotonic() + 120
        while True:
            online = prefect.post(f"{api}/work_pools/{docker_pool.POOL}/workers/filter").json()
            if sum(w["status"] == "ONLINE" for w in online) == 2:
                break
            assert time.monotonic() < deadline, online
            time.sleep(1)

        # Two models at once: each worker takes one (each runs one at a time), both overlap.
        a, b = start(first), start(second)
        runs = finished([a, b])
        (a_start, a_end), (b_start, b_end) = (
            (_when(r["start_time"]), _when(r["end_time"])) for r in runs
        )
        assert a_start < b_end and b_start < a_end, "the two models' releases did not overlap"
        assert all(r["infrastructure_pid"] for r in runs)
        client.images.get(lock_image)  # the second run built its lock's sandbox image

        # One model twice (a new commit each): its build lock holds across the two workers.
        (first / "README.md").write_text("a second commit\n")
        c = start(first, commit_all(first, "Second commit"))
        (first / "README.md").write_text("a third commit\n")
        d = start(first, commit_all(first, "Third commit"))
        finished([c, d])
        spans = sorted([locked_span(c), locked_span(d)])
        assert spans[0][1] <= spans[1][0], f"one model's releases overlapped: {spans}"

        # What they registered is in the stack's MLflow; no run's container is left.
        for model, count in (("digits-sklearn", 3), ("digits-second", 1)):
            versions = httpx.get(
                f"{urls['mlflow_ui']}/api/2.0/mlflow/model-versions/search",
                params={"filter": f"name='{model}'"},
                timeout=10,
            ).json()["model_versions"]
            assert len(versions) == count, versions
        # A run's state is final before its process exits; the engine then removes it.
        deadline = time.monotonic() + 60
        while left := client.containers.list(
            all=True, filters={"label": f"{LABEL}.role={docker_pool.ROLE}"}
        ):
            assert time.monotonic() < deadline, [(c.name, c.status) for c in left]
            time.sleep(1)

        # Back to the process pool: the docker workers stop, the process worker and its engine
        # server run, and the deployments are on the `shipyard` pool again.
        shipyard("stack", "up", "--pool", "process")
        status = json.loads(shipyard("stack", "status").stdout)
        assert status["pool"].startswith("process: shipyard"), status["pool"]
        assert not any(name.startswith("prefect-docker-worker") for name in status), status
        deadline = time.monotonic() + 60
        while not status["prefect-worker"].startswith("running"):
            assert time.monotonic() < deadline, status["prefect-worker"]
            time.sleep(1)
            status = json.loads(shipyard("stack", "status").stdout)
        assert status["engine-server"].startswith("running"), status["engine-server"]
        deployment = prefect.get(f"{api}/deployments/name/release/release").json()
        assert deployment["work_pool_name"] == "shipyard"
    finally:
        prefect.close()
        subprocess.run([SHIPYARD, "stack", "down"], env=env, capture_output=True, timeout=120)
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(lock_image)
        client.close()


@pytest.mark.docker
def test_a_run_away_from_the_stacks_directory_or_engine_stops_saying_why(tmp_path: Path) -> None:
    """A docker-pool run whose worker is on another machine (it does not see the stack's
    directory) or talks to another engine stops before Prefect's engine starts, saying why. A
    run on the stack's machine gets what it checks from the template, whatever its home."""
    client = docker.from_env()
    engine_id = client.info()["ID"]
    stack = tmp_path / "stack"
    stack.mkdir()
    template = docker_pool.mark_engine(Settings(stack_dir=stack), client)
    assert template[pool_run.POOL_ENGINE] == engine_id
    mark = stack / pool_run.ENGINE_FILE
    assert mark.read_text().strip() == engine_id

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        # Only what the template carries: the run's user may have another home.
        env = {k: v for k, v in os.environ.items() if k != "SHIPYARD_STACK_DIR"}
        env.update({"HOME": str(tmp_path / "the-runs-home"), **template, **extra})
        return subprocess.run(
            [sys.executable, "-m", "shipyard.stack.pool_run", "--", "true"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert run().returncode == 0, run().stderr

    mark.unlink()  # as on a machine without the stack's directory
    away = run()
    assert away.returncode == 1
    assert f"does not see the stack's directory: {mark} is missing" in away.stderr
    assert "its worker must run on the stack's machine" in away.stderr

    mark.write_text("0000:another-engine\n")
    assert "names another engine" in run().stderr
    mark.write_text(engine_id + "\n")
    no_engine = run(DOCKER_HOST=f"unix://{tmp_path}/no.sock")
    assert no_engine.returncode == 1
    assert f"(unix://{tmp_path}/no.sock, id none answers) is not the stack's" in no_engine.stderr

    # The directory is the stack's, the engine another: as a worker whose socket is another's.
    mark.write_text("0000:another-engine\n")
    other = run(**{pool_run.POOL_ENGINE: "0000:another-engine"})
    assert other.returncode == 1
    assert f"id {engine_id}) is not the stack's (id 0000:another-engine)" in other.stderr
