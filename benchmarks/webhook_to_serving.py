"""Webhook to serving: a signed push of a new commit until the endpoint answers with the new
version, split by stage.

Run: `make bench-webhook` (after `shipyard stack up`: it uses the stack's engine and registry).
Like the stack, it runs a Prefect server, `prefect deploy --all` of prefect.yaml, an MLflow
server on the state directory's SQLite store, the engine server and the stack's process worker
(woken by its pool's scheduled-run events, polling every services.WORKER_POLL_SECONDS besides)
on a pool whose command is the engine client,
and the webhook receiver, here on free ports with a state directory of their own. A git
repository holding examples/digits-sklearn gets a first commit, pushed and served (cold:
nothing cached), then RUNS commits that each change the seed (a new model: retrained, exported,
optimized, validated, registered, built, pushed, rolled out). For each it prints the receiver's
answer, the run's creation and start, every stage's start and duration, and the first answer
from the new version, all from the moment the push was sent. The last
DEFAULT_RUNS commits run on the pool with Prefect's own command (workspace supervisor, then
`python -m prefect.engine`), for the run start side by side.

All of it runs twice: Prefect's server on SQLite (the stack's default), then on a Postgres
cluster of its own (`stack up --backend postgres`'s way; MLflow stays on SQLite), and the new
commits' run creation, run start and serving times are printed side by side. The server is the
stack's command (`shipyard.stack.prefect_server`: SQLite write transactions begun IMMEDIATE);
`BENCH_PREFECT=prefect` runs Prefect's own `prefect server start`, on which a write that met
another on SQLite was answered 503 and retried by Prefect's client 2 s later.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release_variants import free_port, start_prefect

from shipyard.settings import Settings
from shipyard.stack import postgres, services

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "digits-sklearn"
REPOSITORY = "bench/digits-sklearn"
SECRET = "benchmark-webhook-secret"
RUNS = 3
DEFAULT_RUNS = 2
"""Commits released with Prefect's own process-pool command, after RUNS with the engine server
(on SQLite only)."""
BACKENDS = ("sqlite", "postgres")
"""Prefect's server on each in turn, each with a cold commit and RUNS new ones."""
LOG = Path(tempfile.gettempdir()) / "webhook_to_serving.services.log"
"""The worker's and the receiver's output, one file per backend (`….services.sqlite.log`), kept
after the run, to read where time went."""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.invalid", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def commit(repo: Path, seed: int, port: int) -> str:
    manifest = (ROOT / "examples" / MODEL / "shipyard.yaml").read_text()
    manifest = (
        manifest.replace("seed: 0", f"seed: {seed}")
        .replace("port: 8000", f"port: {port}")
        .replace("keep_blue_seconds: 30", "keep_blue_seconds: 1")  # retire is after serving
    )
    (repo / "shipyard.yaml").write_text(manifest)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"seed {seed}")
    return git(repo, "rev-parse", "HEAD")


def push(receiver: str, repo: Path, sha: str) -> httpx.Response:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": sha,
            "repository": {"clone_url": repo.as_uri(), "full_name": REPOSITORY},
            "pusher": {"name": "bench"},
            "commits": [{"id": sha, "added": [], "modified": ["shipyard.yaml"], "removed": []}],
        }
    ).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(
        f"{receiver}/hooks/git",
        content=body,
        headers={
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": str(uuid.uuid4()),
            "x-hub-signature-256": f"sha256={signature}",
        },
        timeout=10,
    )


def served_version(port: int) -> str | None:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/v2/models/{MODEL}", timeout=1)
        return str(answer.json()["versions"][0]) if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return None


def flow_run_of(api: str, sha: str) -> dict[str, Any] | None:
    runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 50}, timeout=10).json()
    mine = [r for r in runs if r["parameters"].get("ref") == sha]
    return mine[0] if mine else None


def task_runs(api: str, flow_run_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}
    return list(httpx.post(f"{api}/task_runs/filter", json=body, timeout=10).json())


def at(stamp: str | None, sent: float) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() - sent if stamp else None


def release_once(api: str, receiver: str, repo: Path, port: int, seed: int) -> dict[str, Any]:
    sha = commit(repo, seed, port)
    before = served_version(port)
    sent = time.time()
    answer = push(receiver, repo, sha)
    answered = time.time() - sent
    if answer.status_code != 202:
        raise SystemExit(f"the receiver answered {answer.status_code}: {answer.text}")
    deadline, serving = sent + 600, None
    while time.time() < deadline:
        version = served_version(port)
        if version is not None and version != before:
            serving = time.time() - sent
            break
        run = flow_run_of(api, sha)
        if run and run["state_type"] in ("FAILED", "CRASHED", "CANCELLED"):
            raise SystemExit(f"the release of {sha[:12]} ended {run['state_name']}")
        time.sleep(0.05)
    if serving is None:
        raise SystemExit(f"{sha[:12]} was not served within 600 s")
    run = flow_run_of(api, sha)
    assert run is not None
    while run["state_type"] not in ("COMPLETED", "FAILED", "CRASHED"):
        time.sleep(0.5)
        run = flow_run_of(api, sha)
        assert run is not None
    stages = sorted(
        (
            (t["task_key"].split("-")[0], at(t["start_time"], sent), t["total_run_time"])
            for t in task_runs(api, run["id"])
            if t["start_time"]
        ),
        key=lambda s: s[1] or 0,
    )
    return {
        "answered": answered,
        "created": at(run["created"], sent),
        "started": at(run["start_time"], sent),
        "stages": stages,
        "serving": serving,
        "ended": at(run["end_time"], sent),
    }


def report(name: str, r: dict[str, Any]) -> None:
    print(f"\n== {name}: new version serving after {r['serving']:.1f} s")
    print(f"  receiver answered        {r['answered'] * 1000:6.0f} ms")
    print(f"  flow run created at      {r['created']:6.2f} s")
    print(f"  flow run running at      {r['started']:6.2f} s")
    for stage, start, seconds in r["stages"]:
        print(f"  {stage:<24} {start:6.2f} s  +{seconds:5.2f} s")
    print(f"  first answer, new version {r['serving']:5.2f} s")
    print(f"  run ended at             {r['ended']:6.2f} s")


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def prefect_database(root: Path, backend: str) -> Iterator[dict[str, str]]:
    """The environment that puts Prefect's server on `backend`: SQLite in its home (Prefect's
    default, the stack's default), or a Postgres cluster of its own, run as `shipyard stack up
    --backend postgres` runs the stack's (Debian's postgresql, installed if missing)."""
    if backend == "sqlite":
        yield {}
        return
    (root / "pg-stack").mkdir(mode=0o700)
    settings = Settings(stack_dir=root / "pg-stack", postgres_port=free_port())
    server: subprocess.Popen[bytes] | None = None
    try:
        programs = postgres.bin_dir(print)
        postgres.init_cluster(settings, print)
        postgres.write_passfile(settings)
        server = subprocess.Popen(
            postgres.server_args(settings, programs),
            user=postgres.system_user(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not postgres.answers(settings):
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"Postgres did not start on port {settings.postgres_port}")
            time.sleep(0.2)
        postgres.ensure_databases(settings, print)
        yield {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.url(settings, "prefect", "asyncpg"),
            "PGPASSFILE": str(postgres.passfile(settings)),
        }
    finally:
        try:
            if server is not None:
                server.send_signal(signal.SIGINT)  # Postgres's fast shutdown
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait(timeout=30)
        finally:
            shutil.rmtree(postgres.cluster_dir(settings), ignore_errors=True)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up on kill too
    runs: dict[str, list[dict[str, Any]]] = {}
    for backend in BACKENDS:
        print(f"\n#### Prefect's server on {backend}")
        runs[backend] = run(backend, DEFAULT_RUNS if backend == "sqlite" else 0)
    print("\nPrefect on SQLite and on Postgres, side by side (new commits, engine server pool):")
    print(
        "  backend    push → run created       push → run running       push → new version serving"
    )
    for backend, results in runs.items():
        row = [
            "  ".join(f"{r[key]:5.2f}" for r in results)
            for key in ("created", "started", "serving")
        ]
        print((f"  {backend:9}  " + "   ".join(f"{cell:22}" for cell in row)).rstrip())


def run(backend: str, default_runs: int) -> list[dict[str, Any]]:
    """A cold commit, then RUNS new commits with the engine server's pool, then `default_runs`
    with Prefect's own command; returns the new commits' figures on the engine server's pool."""
    new: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, prefect_database(Path(tmp), backend) as database:
        root = Path(tmp)
        server, api = start_prefect(
            root / "prefect",
            database,
            None if os.environ.get("BENCH_PREFECT") == "prefect" else services.PREFECT_SERVER,
        )
        repo = root / "repo"
        shutil.copytree(ROOT / "examples" / MODEL, repo)
        git(repo, "init", "-q", "-b", "main")
        entry = {"repository": REPOSITORY, "url": repo.as_uri(), "models": [MODEL]}
        env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "SHIPYARD_STATE_DIR": str(root / "state"),
            "SHIPYARD_ALLOWED_SOURCES": json.dumps([entry]),
            "SHIPYARD_ALLOWED_FILE_ROOT": str(root),
            "SHIPYARD_WEBHOOK_SECRET": SECRET,
            "SHIPYARD_WEBHOOK_DELIVERIES_FILE": str(root / "deliveries"),
            "PREFECT_WORKER_QUERY_SECONDS": services.WORKER_POLL_SECONDS,
        }
        processes: list[subprocess.Popen[bytes]] = [server]
        port = free_port()
        try:
            # The stack's pool and engine server; the last commits run with Prefect's own command
            # (`use_pool_command`), side by side.
            stack = Settings(stack_dir=root / "stack", state_dir=root / "state")
            templates = {}
            for name, forked in (("engine server", True), ("prefect default", False)):
                templates[name] = root / f"pool-{name.replace(' ', '-')}.json"
                templates[name].write_text(
                    json.dumps(services.process_pool_template(stack, forked))
                )
            # The stack's deployments, as `stack up` registers them on its forked pool.
            spec = root / "prefect.yaml"
            spec.write_text(json.dumps(services.deployment_spec("shipyard", fork_from=ROOT)))
            for args in (
                [*services.POOL_CREATE, "--base-job-template", str(templates["engine server"])],
                ["--no-prompt", "deploy", "--all", "--prefect-file", str(spec)],
            ):
                subprocess.run(
                    [str(BIN / "prefect"), *args],
                    cwd=ROOT,
                    env={**env, "PWD": str(ROOT)},
                    check=True,
                    capture_output=True,
                )
            log = LOG.with_name(f"{LOG.stem}.{backend}{LOG.suffix}").open("w")
            # The stack's MLflow server on the same SQLite store: the runs reach it through it.
            state = root / "state"
            state.mkdir()
            mlflow_port = free_port()
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                        "--port", str(mlflow_port), "--workers", "1",
                        "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
                        "--default-artifact-root", (state / "mlartifacts").as_uri(),
                    ],
                    env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
            env["SHIPYARD_MLFLOW_SERVER_URL"] = f"http://127.0.0.1:{mlflow_port}"
            wait_for(f"{env['SHIPYARD_MLFLOW_SERVER_URL']}/health")
            stack.stack_dir.mkdir()
            processes.append(
                subprocess.Popen(
                    [*services.ENGINE_SERVER, str(services.engine_socket(stack))],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            processes.append(
                subprocess.Popen(
                    [*services.PROMPT_WORKER, "--pool", "shipyard", "--type", "process"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            hook_port = free_port()
            processes.append(
                subprocess.Popen(
                    [str(BIN / "shipyard"), "webhook", "serve", "--port", str(hook_port)],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            receiver = f"http://127.0.0.1:{hook_port}"
            wait_for(f"{receiver}/health")
            report("cold (first commit)", release_once(api, receiver, repo, port, 0))
            starts: dict[str, list[float]] = {name: [] for name in templates}
            for seed in range(1, RUNS + default_runs + 1):
                name = "engine server" if seed <= RUNS else "prefect default"
                if seed == RUNS + 1:
                    subprocess.run(
                        [str(BIN / "prefect"), "work-pool", "update", "shipyard",
                         "--base-job-template", str(templates[name])],
                        env=env, check=True, capture_output=True,
                    )  # fmt: skip
                r = release_once(api, receiver, repo, port, seed)
                starts[name].append(r["started"] - r["created"])
                if name == "engine server":
                    new.append(r)
                report(f"new commit {seed} (seed {seed}, run started by the {name})", r)
            print("\nflow run created to running, new commits:")
            for name, seconds in starts.items():
                if seconds:
                    print(f"  {name:16} " + "  ".join(f"{s:.2f} s" for s in seconds))
        finally:
            subprocess.run(
                [str(BIN / "shipyard"), "undeploy", MODEL],
                env=env,
                cwd=ROOT,
                capture_output=True,
                check=False,
            )
            for process in reversed(processes):
                process.terminate()
                process.wait(timeout=30)
    return new


if __name__ == "__main__":
    main()
