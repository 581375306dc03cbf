"""The operations half of the local stack: a Prefect server (with its UI), a process worker, an
MLflow tracking server (with its UI), the webhook receiver, and the deployments of prefect.yaml;
with `--backend postgres`, the Postgres both servers store in (`shipyard.stack.postgres`).

Like the engine and registry in `shipyard.stack.engine`, each is started only when nothing
answers at its address, as a program of the stack's supervisord (restarted when it dies, logs
rotated), and stopped by `stack down` only if this stack started it. On SQLite (the default)
the servers keep their stores in files; on Postgres, Prefect's server uses the `prefect`
database and MLflow's the `mlflow` one, and MLflow serves the artifacts (`mlflow-artifacts:`
URIs, over HTTP), so the worker and the CLI reach the registry only through its server. Teams
with their own servers point Shipyard at them with settings instead (PREFECT_API_URL,
MLFLOW_TRACKING_URI); nothing here starts them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from shipyard.deployments.webhook import WebhookSettings
from shipyard.engine import base_image, engine, registry_login
from shipyard.errors import StackError
from shipyard.processes import Started, short_socket_path
from shipyard.settings import Settings
from shipyard.stack import credentials, docker_pool, engine_client, postgres, supervisor
from shipyard.stack import state as stack_state
from shipyard.stack.engine import Say
from shipyard.waiting import TimedOut, wait_until

# By module, with this interpreter: whatever directory its scripts were installed in.
PREFECT = [sys.executable, "-m", "prefect"]
PREFECT_SERVER = [sys.executable, "-m", "shipyard.stack.prefect_server"]
"""`prefect`, with the server's SQLite write transactions begun IMMEDIATE (prefect_server.py)."""
PROMPT_WORKER = [sys.executable, "-m", "shipyard.stack.prompt_worker"]
"""Prefect's worker, woken by its pool's scheduled-run events as well as by its poll."""
WORKER_POLL_SECONDS = "5"
"""The workers' poll: the fallback for runs due later (cron) and for a dropped event stream."""
CRASH_LOOP_STARTS = 3
"""A service started this many times without answering has failed to start."""
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
MLFLOW = [sys.executable, "-m", "mlflow"]
SHIPYARD = [sys.executable, "-m", "shipyard"]
LAUNCH = [sys.executable, "-m", "shipyard.stack.launch"]
ENGINE_SERVER = [sys.executable, "-m", "shipyard.stack.engine_server"]
POOL_CREATE = ["work-pool", "create", "shipyard", "--type", "process", "--overwrite"]
PoolKind = Literal["process", "docker"]
POOLS: tuple[PoolKind, ...] = ("process", "docker")
DOCKER_WORKER = "prefect-docker-worker-"
"""The docker pool's workers are supervisord programs `prefect-docker-worker-1` … `-N`."""
DEFAULT_DOCKER_WORKERS = 2
PREFECT_YAML = files("shipyard.deployments").joinpath("prefect.yaml")
"""The deployments the stack registers: package data, with module entrypoints, so an installed
Shipyard needs no checkout."""


@dataclass(frozen=True)
class Service:
    name: str
    args: list[str]
    health: str
    url: str
    env: dict[str, str]
    umask: str | None = "077"
    """Files it writes (Prefect's database, the delivery ids) are its owner's only; not for the
    worker, whose flow runs write build contexts and checkouts that images copy, modes and
    all, for a non-root user to read."""
    ready: Callable[[], bool] | None = None
    """Whether it serves, for a service without an HTTP health URL (Postgres)."""
    hopeless: Callable[[], str | None] | None = None
    """Why it runs but will never serve, however long one waits (Postgres refusing the stack's
    password): `stack up` then stops it and fails with that reason."""
    user: str | None = None
    stop_signal: str = "TERM"
    stop_group: bool = True


def webhook_secret(settings: Settings) -> str:
    """SHIPYARD_WEBHOOK_SECRET, or one generated once into the stack directory (mode 600)."""
    if os.environ.get("SHIPYARD_WEBHOOK_SECRET"):
        return os.environ["SHIPYARD_WEBHOOK_SECRET"]
    path = settings.stack_dir / "webhook-secret"
    stack_state.private_dir(settings)
    stack_state.create_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def prefect_api(settings: Settings) -> str:
    """The Prefect API the stack's parts use: PREFECT_API_URL when the user set one (a team's
    server, which the stack then does not start), else the stack's own server."""
    return os.environ.get("PREFECT_API_URL", "").rstrip("/") or credentials.stack_api(settings)


def own_prefect(settings: Settings) -> bool:
    return prefect_api(settings) == credentials.stack_api(settings)


def own_mlflow(settings: Settings, backend: postgres.Backend | None = None) -> bool:
    """A tracking server the user configured (http[s]://) is used as it is, not started; on
    Postgres (`backend`, else the recorded one), the stack's own server's URL (which its
    clients are given) names the stack's."""
    if (backend or postgres.backend(settings)) == "postgres":
        configured = (settings.mlflow_tracking_uri or "").rstrip("/")
        return configured in ("", postgres.tracking_url(settings))
    return not settings.tracking_uri.startswith(("http://", "https://"))


def mlflow_ui(settings: Settings, backend: postgres.Backend | None = None) -> str:
    if own_mlflow(settings, backend):
        return f"http://{settings.services_host}:{settings.mlflow_port}"
    return settings.mlflow_ui_url or settings.tracking_uri


@dataclass(frozen=True)
class Pool:
    """Where release runs run: the process pool (one worker, runs forked on this host, the
    default) or the docker pool (`workers` workers, each run in a container)."""

    kind: PoolKind = "process"
    workers: int = 1

    @property
    def name(self) -> str:
        return "shipyard" if self.kind == "process" else docker_pool.POOL


def parse_pool(kind: str, workers: int | None) -> Pool:
    """`stack up --pool KIND [--workers N]` as a Pool, or an error naming the choices."""
    if kind not in POOLS:
        raise StackError(
            f"Unknown pool {kind!r}: expected one of {list(POOLS)} (`shipyard stack up --pool docker`)."
        )
    if kind == "process":
        if workers not in (None, 1):
            raise StackError(
                f"--workers {workers} with the process pool: it has one worker, whose runs are "
                "forked on this host. Use `--pool docker --workers N` for N workers."
            )
        return Pool()
    return Pool("docker", workers or DEFAULT_DOCKER_WORKERS)


def pool(settings: Settings) -> Pool:
    """The pool `stack up --pool` last recorded, else the process pool."""
    recorded = stack_state.read(settings).get("pool") or {}
    if recorded.get("kind") == "docker":
        return Pool("docker", int(recorded.get("workers", DEFAULT_DOCKER_WORKERS)))
    return Pool()


def record_pool(settings: Settings, chosen: Pool) -> None:
    state = stack_state.read(settings)
    state["pool"] = {"kind": chosen.kind, "workers": chosen.workers}
    stack_state.write(settings, state)


def _prefect_env(settings: Settings) -> dict[str, str]:
    """What every Prefect process of the stack gets: the API and its credentials."""
    api = prefect_api(settings)
    return {
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(settings.stack_dir / "prefect"),
        **credentials.client_env(settings, api),
        **(_passed_on(("PREFECT_API_KEY",)) if not own_prefect(settings) else {}),
    }


MLFLOW_CREDENTIALS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
"""A team's MLflow server's credentials (MLflow's own variables), passed on to the worker."""


def _passed_on(names: tuple[str, ...]) -> dict[str, str]:
    """The credentials of a team's server set in this environment, for the stack's programs:
    they reach them through the program files (mode 600), never a command line."""
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def worker_env(settings: Settings, backend: postgres.Backend | None = None) -> dict[str, str]:
    """What the stack's workers run with (and, on the process pool, the runs they start)."""
    backend = backend or postgres.backend(settings)
    on_postgres = backend == "postgres"
    base_env = _prefect_env(settings)
    prefect_url = prefect_api(settings).removesuffix("/api")
    return {
        **base_env,
        # A scheduled run wakes the worker (shipyard.stack.prompt_worker); the poll is the
        # fallback. Each poll also writes the pool's and deployments' last-polled time: on
        # SQLite, every write may collide with another, so it is not every second.
        "PREFECT_WORKER_QUERY_SECONDS": WORKER_POLL_SECONDS,
        "SHIPYARD_STATE_DIR": str(settings.state_dir.resolve()),
        "SHIPYARD_MLFLOW_UI_URL": mlflow_ui(settings, backend),
        "PREFECT_UI_URL": prefect_url,
        # On Postgres the registry is reachable only through the tracking server.
        **(
            {"MLFLOW_TRACKING_URI": postgres.tracking_url(settings)}
            if on_postgres and own_mlflow(settings, backend)
            else {}
        ),
        # On SQLite the runs reach the same file through the server while it answers.
        **(
            {"SHIPYARD_MLFLOW_SERVER_URL": postgres.tracking_url(settings)}
            if not on_postgres and own_mlflow(settings, backend)
            else {}
        ),
        **(_passed_on(MLFLOW_CREDENTIALS) if not own_mlflow(settings, backend) else {}),
    }


def _workers(settings: Settings, chosen: Pool, env: dict[str, str]) -> list[Service]:
    """The process pool's worker and the engine server that forks its runs (the engine server
    only with the stack's own Prefect), or the docker pool's workers."""
    if chosen.kind == "docker":
        host = socket.gethostname()
        return [
            Service(
                f"{DOCKER_WORKER}{i}",
                [
                    *PROMPT_WORKER,
                    "--pool",
                    docker_pool.POOL,
                    "--type",
                    "docker",
                    "--name",
                    f"{host}-docker-{i}",
                    "--limit",
                    "1",
                ],
                "",
                f"pool {docker_pool.POOL}",
                env,
            )
            for i in range(1, chosen.workers + 1)
        ]
    return [
        *(
            [
                Service(
                    "engine-server",
                    [*ENGINE_SERVER, str(engine_socket(settings))],
                    "",
                    str(engine_socket(settings)),
                    env,
                    umask=None,  # the worker's: a run forked from it writes what images copy
                )
            ]
            if own_prefect(settings)
            else []
        ),
        Service(
            "prefect-worker",
            [*PROMPT_WORKER, "--pool", "shipyard", "--type", "process"],
            "",
            "pool shipyard",
            env,
            umask=None,
        ),
    ]


def plan(
    settings: Settings, backend: postgres.Backend | None = None, chosen: Pool | None = None
) -> list[Service]:
    """What the stack runs here on `backend` and `chosen` pool (else the recorded ones): the
    servers it owns (not those the user configured), the workers and the webhook receiver."""
    host = settings.services_host
    api = prefect_api(settings)
    prefect_url = api.removesuffix("/api")
    base_env = _prefect_env(settings)
    webhook = WebhookSettings()
    backend = backend or postgres.backend(settings)
    on_postgres = backend == "postgres"
    services = [
        *([_postgres_service(settings)] if on_postgres else []),
        Service(
            "prefect-server",
            [
                *PREFECT_SERVER,
                "server",
                "start",
                "--host",
                host,
                "--port",
                str(settings.prefect_port),
            ],
            f"{api}/health",
            prefect_url,
            {
                **base_env,
                **credentials.server_env(settings),
                "PREFECT_UI_API_URL": api,
                # Concurrency slots' leases on disk (PREFECT_HOME): the default keeps them in
                # memory, so a server restart lost the lease of a run holding `build-<model>`:
                # its release found no lease and freed nothing, and every later release of the
                # model waited for the slot (LOCK_WAIT_S, 30 min) and failed.
                "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
                **(_prefect_database_env(settings) if on_postgres else {}),
            },
        ),
        Service(
            "mlflow-server",
            [
                # Its uvicorn child would outlive a killed server and keep the port.
                *LAUNCH,
                str(settings.stack_dir / "mlflow-server.group"),
                "--",
                *MLFLOW,
                "server",
                "--host",
                host,
                "--port",
                str(settings.mlflow_port),
                *(_mlflow_stores(settings) if on_postgres else _mlflow_files(settings)),
                "--workers",
                "1",
            ],
            f"http://{host}:{settings.mlflow_port}/health",
            f"http://{host}:{settings.mlflow_port}",
            # Its job runner (seven huey consumers) serves MLflow's GenAI jobs, which Shipyard
            # does not use.
            {
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                **({"PGPASSFILE": str(postgres.passfile(settings))} if on_postgres else {}),
            },
        ),
        *_workers(settings, chosen or pool(settings), worker_env(settings, backend)),
        Service(
            "webhook",
            [*SHIPYARD, "webhook", "serve"],
            f"http://{webhook.host}:{webhook.port}/health",
            f"http://{webhook.host}:{webhook.port}/hooks/git",
            {
                **base_env,
                "SHIPYARD_WEBHOOK_SECRET": webhook_secret(settings),
                # Delivery ids outlive a restart: a captured push cannot be replayed after one.
                "SHIPYARD_WEBHOOK_DELIVERIES_FILE": os.environ.get(
                    "SHIPYARD_WEBHOOK_DELIVERIES_FILE",
                    str(settings.stack_dir / "webhook-deliveries"),
                ),
            },
        ),
    ]
    return [
        service
        for service in services
        if (service.name != "prefect-server" or own_prefect(settings))
        and (service.name != "mlflow-server" or own_mlflow(settings, backend))
        and (service.name != "postgres" or own_prefect(settings) or own_mlflow(settings, backend))
    ]


def _postgres_service(settings: Settings) -> Service:
    address = f"127.0.0.1:{settings.postgres_port}"
    return Service(
        "postgres",
        # `stack up` installs Postgres before it plans; `stack status` only reads the plan.
        postgres.server_args(settings, postgres.installed_bin_dir() or Path()),
        "",
        f"postgresql://{address} (cluster {postgres.data_dir(settings)})",
        {},
        ready=lambda: postgres.answers(settings),
        hopeless=lambda: postgres.refusal(settings),
        user=postgres.system_user(),
        # Its fast shutdown; the postmaster stops its own backends.
        stop_signal="INT",
        stop_group=False,
    )


def _prefect_database_env(settings: Settings) -> dict[str, str]:
    return {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.url(settings, "prefect", "asyncpg"),
        "PGPASSFILE": str(postgres.passfile(settings)),
    }


def _mlflow_files(settings: Settings) -> list[str]:
    """SQLite under the state directory, artifacts written by the clients themselves."""
    return [
        "--backend-store-uri",
        settings.tracking_uri,
        "--default-artifact-root",
        settings.artifact_root.as_uri(),
    ]


def _mlflow_stores(settings: Settings) -> list[str]:
    """Postgres, and artifacts the server keeps and serves: clients on other machines read and
    write them over HTTP (`mlflow-artifacts:/` URIs)."""
    return [
        "--backend-store-uri",
        postgres.url(settings, "mlflow", "psycopg"),
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts_dir(settings)),
        "--default-artifact-root",
        "mlflow-artifacts:/",
    ]


def artifacts_dir(settings: Settings) -> Path:
    """Where the stack's MLflow server keeps the artifacts it serves (Postgres backend)."""
    return settings.stack_dir / "mlflow-artifacts"


def start_postgres(settings: Settings, say: Say) -> None:
    """The stack's Postgres runs (installed, its cluster made, started) with its databases."""
    postgres.bin_dir(say)  # installed if missing
    postgres.init_cluster(settings, say)
    postgres.write_passfile(settings)
    stack_state.make_private_dir(artifacts_dir(settings))
    _start(settings, _postgres_service(settings), say)
    postgres.ensure_databases(settings, say)


def _healthy(service: Service) -> bool:
    if service.ready is not None:
        return service.ready()
    return _answers(service.health)


def _answers(url: str) -> bool:
    if not url:
        return False
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start(settings: Settings, service: Service, say: Say) -> None:
    ours = service.name in supervisor.programs(settings)
    if not ours and _healthy(service):
        say(f"{service.name}: {service.url} answers; nothing started")
        return
    _adopt_bare(settings, service.name, say)
    log = settings.stack_dir / f"{service.name}.log"
    supervisor.ensure(settings, say)
    changed = supervisor.add(
        settings,
        supervisor.Program(
            service.name,
            service.args,
            service.env,
            directory=Path.cwd() if service.user is None else None,
            umask=service.umask,
            stop_group=service.stop_group,
            user=service.user,
            stop_signal=service.stop_signal,
        ),
    )
    hopeless: list[str] = []
    pids: set[int] = set()

    def give_up() -> bool:
        if service.hopeless is not None and (reason := service.hopeless()):
            hopeless.append(reason)
            return True
        info = supervisor.info(settings, service.name)
        if info.get("pid"):
            pids.add(int(info["pid"]))
        # A program that exits after its first seconds is started again for ever, never FATAL:
        # its third start is a crash loop (e.g. Prefect's server refused by its database).
        return info.get("statename") in ("FATAL", "BACKOFF") or len(pids) >= CRASH_LOOP_STARTS

    try:
        wait_until(
            lambda: (not service.health and service.ready is None) or _healthy(service),
            90,
            0.5,
            give_up=give_up,
        )
    except TimedOut:
        if hopeless:
            supervisor.remove(settings, service.name)
            raise StackError(
                f"{hopeless[0]} ({service.name} is stopped: restarting it would not help.)"
            ) from None
        looped = f", started {len(pids)} times" if len(pids) >= CRASH_LOOP_STARTS else ""
        raise StackError(
            f"{service.name} did not come up ({service.health or service.url}{looped}); see "
            f"{log}: " + log.read_text(errors="replace")[-600:].strip()
        ) from None
    state = supervisor.describe(settings, service.name)
    say(
        f"{service.name}: {'started' if changed else 'runs'} on {service.url} under supervisord ({state}, log {log})"
    )


def start(settings: Settings, name: str, say: Say) -> Service:
    """Start one service of the plan (`prefect-server`, …) if nothing answers at its address."""
    service = next((s for s in plan(settings) if s.name == name), None)
    if service is None:
        raise StackError(
            f"No service {name!r} in this stack's plan: expected one of "
            f"{[s.name for s in plan(settings)]} (a server configured in the environment, "
            "PREFECT_API_URL or MLFLOW_TRACKING_URI, is not started)."
        )
    _start(settings, service, say)
    return service


def _adopt_bare(settings: Settings, name: str, say: Say) -> None:
    """A service an older `stack up` started as a bare process is stopped, to be supervised."""
    state = stack_state.read(settings)
    started = Started.from_json(state["services"].pop(name, None))
    stack_state.write(settings, state)
    if started is not None and started.alive():
        os.killpg(started.pid, signal.SIGTERM)
        with contextlib.suppress(TimedOut):
            wait_until(lambda: not started.alive(), 30, 0.2)
        say(f"{name}: stopped pid {started.pid} (unsupervised, from an older stack up)")


def engine_socket(settings: Settings) -> Path:
    return short_socket_path(settings.stack_dir, "engine.sock")


def process_pool_template(settings: Settings, forked: bool = True) -> dict[str, Any]:
    """Prefect's process pool template, whose runs are forked by the stack's engine server.

    With no command, Prefect 3.8's process worker starts a workspace supervisor (an interpreter
    importing Prefect), which starts `python -m prefect.engine` (a second, importing Prefect and
    the flow): 4-6 s from Pending to Running here. The command is `engine_client.py`, a
    standard-library script that has `shipyard.stack.engine_server` fork the run's engine with
    everything imported (under 1 s), or runs `python -m prefect.engine` itself when that server
    does not answer. A run's own `command` job variable still wins; `forked=False` keeps
    Prefect's own."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    if forked:
        client = Path(engine_client.__file__).resolve()
        command = f"{sys.executable} -I -S {client} {engine_socket(settings)}"
        template["variables"]["properties"]["command"]["default"] = command
    return template


def docker_pool_template(settings: Settings, say: Say) -> Any:
    """The docker pool's base job template: its worker image built and pushed (once per
    Shipyard and lock), the registry's blocks saved on the Prefect API."""
    workers = worker_env(settings)
    pip = docker_pool.pip_env(settings, say)
    env = docker_pool.run_env(os.environ, workers, pip)
    client, login = engine(settings), registry_login(settings)
    env.update(docker_pool.mark_engine(settings, client))
    image = docker_pool.worker_image(settings, client, base_image(settings), login, say)
    docker_pool.fetch_for_runs(settings)
    carried = docker_pool.secrets(os.environ, workers, pip)
    credentials = docker_pool.save_blocks(_prefect_env(settings), login, carried, say)
    return docker_pool.pool_template(
        image, env, docker_pool.volumes(settings, Path.cwd()), credentials
    )


def deployment_spec(pool_name: str, fork_from: Path | None = None) -> dict[str, Any]:
    """The stack's deployments (package prefect.yaml) on work pool `pool_name`.

    With `fork_from` (the stack's own forked process pool, where `stack up` ran), each also
    names its entrypoint in its runs' environment (`PREFECT__FLOW_ENTRYPOINT`, from which
    Prefect's engine loads the flow, as Prefect's own workspace supervisor has it do) and starts
    its runs in `fork_from` (`working_dir`, the directory the pull step changes to). A run's
    engine then imports the flow at once, without reading the deployment and running the pull
    step: about 0.1 s before the run is Running. Only these deployments' runs start there;
    other deployments on the pool keep Prefect's temporary directory per run. Elsewhere (the
    docker pool, a team's Prefect) the pull step stays."""
    spec: dict[str, Any] = yaml.safe_load(PREFECT_YAML.read_text())
    for deployment in spec["deployments"]:
        deployment["work_pool"] = {**deployment["work_pool"], "name": pool_name}
        if fork_from is not None:
            deployment["work_pool"]["job_variables"] = {
                "env": {"PREFECT__FLOW_ENTRYPOINT": deployment["entrypoint"]},
                "working_dir": str(fork_from),
            }
    return spec


def register_deployments(settings: Settings, say: Say, chosen: Pool | None = None) -> None:
    """`prefect deploy --all` from prefect.yaml, on the `chosen` pool (else the recorded one):
    the `shipyard` process pool, or the `shipyard-docker` docker pool."""
    chosen = chosen or pool(settings)
    # prefect.yaml's pull step is `{{ $PWD }}`, filled in at deploy time: the directory
    # `stack up` was started from, where the worker's runs resolve relative sources.
    env = {**os.environ, **_prefect_env(settings), "PWD": str(Path.cwd())}
    stack_state.private_dir(settings)
    template = settings.stack_dir / f"{chosen.kind}-pool-template.json"
    # A team's pool may have workers on other machines: it keeps Prefect's own command.
    forked = chosen.kind == "process" and own_prefect(settings)
    if chosen.kind == "docker":
        create = ["work-pool", "create", chosen.name, "--type", "docker", "--overwrite"]
        template.write_text(json.dumps(docker_pool_template(settings, say)))
    else:
        create = POOL_CREATE
        template.write_text(json.dumps(process_pool_template(settings, forked)))
    prefect_yaml = settings.stack_dir / "prefect.yaml"
    spec = deployment_spec(chosen.name, Path.cwd() if forked else None)
    prefect_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))
    for args in (
        [*create, "--base-job-template", str(template)],
        ["--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_yaml)],
    ):
        done = subprocess.run([*PREFECT, *args], env=env, capture_output=True, text=True)
        if done.returncode:
            raise StackError(
                f"prefect {' '.join(args)} failed: {done.stdout[-800:]}{done.stderr[-800:]}"
            )
    say(
        "deployments: release (webhook trigger), nightly-rebuild (cron), rollback, promote, "
        f"on the {chosen.kind} pool {chosen.name}"
    )


def worker_programs(settings: Settings) -> list[str]:
    """The worker programs this stack's supervisord runs or may run, whichever the pool."""
    docker = sorted(p for p in supervisor.programs(settings) if p.startswith(DOCKER_WORKER))
    return ["prefect-worker", "engine-server", *docker]


STORE_SERVERS = ("postgres", "prefect-server", "mlflow-server")
"""What keeps and serves the stores: a backend is recorded once these answer on it."""


def up(
    settings: Settings,
    say: Say,
    backend: postgres.Backend | None = None,
    runs_on: Pool | None = None,
) -> dict[str, str]:
    """Start what is missing on `backend` and the `runs_on` pool (else the recorded ones),
    recording them once the servers answer and the deployments are on the pool; return the
    URLs."""
    chosen = backend or postgres.backend(settings)
    runs_on = runs_on or pool(settings)
    services = plan(settings, chosen, runs_on)
    api = prefect_api(settings)
    if not own_prefect(settings):
        say(f"prefect-server: using PREFECT_API_URL {api}; nothing started")
        register_deployments(settings, say, runs_on)
    if not own_mlflow(settings, chosen):
        say(f"mlflow-server: using the tracking server {settings.tracking_uri}; nothing started")
    elif not _loopback(settings.services_host):
        say(
            f"mlflow-server: WARNING: it has no authentication and binds {settings.services_host} "
            "(SHIPYARD_SERVICES_HOST), not loopback: anyone who reaches it reads and changes the "
            "registry. Set SHIPYARD_SERVICES_HOST=127.0.0.1, or put an authenticating proxy in front."
        )
    embedded = settings.state_dir.resolve() / "mlflow.db"
    if chosen == "postgres" and own_mlflow(settings, chosen) and embedded.is_file():
        say(
            f"mlflow-server: on Postgres; the SQLite store {embedded} is not read (it stays as "
            "it was: `shipyard stack migrate --to postgres` moves a store that Postgres does not "
            "hold yet, `shipyard stack up --backend sqlite` goes back to it)"
        )
    start_stores(settings, [s for s in services if s.name in STORE_SERVERS], chosen, say, runs_on)
    if runs_on != pool(settings):
        record_pool(settings, runs_on)
        say(
            f"pool: {runs_on.kind} ({runs_on.workers} worker(s)), recorded in {settings.stack_file}"
        )
    planned = {service.name for service in services}
    for name in supervisor.programs(settings):
        if name in worker_programs(settings) and name not in planned:
            supervisor.remove(settings, name)
            say(f"{name}: stopped (the deployments run on the {runs_on.kind} pool now)")
    for service in services:
        if service.name not in STORE_SERVERS:
            _start(settings, service, say)
    by_name = {s.name: s.url for s in services}
    return {
        "prefect_ui": api.removesuffix("/api"),
        "prefect_api": api,
        "mlflow_ui": mlflow_ui(settings, chosen),
        "webhook": by_name["webhook"],
        "webhook_secret_file": str(settings.stack_dir / "webhook-secret"),
        "backend": postgres.backend(settings),
        "pool": _pool_line(runs_on),
        **(
            {"prefect_auth_file": str(credentials.auth_file(settings))}
            if own_prefect(settings)
            else {}
        ),
    }


def start_stores(
    settings: Settings,
    stores: list[Service],
    chosen: postgres.Backend,
    say: Say,
    runs_on: Pool | None = None,
) -> None:
    """Start `stores` (Postgres, then the servers on it) and only then record `chosen`: a
    start that fails leaves the recorded backend as it was, starts the servers it had already
    moved (and the one that failed) on that backend again, and says how to retry or go back."""
    previous = postgres.backend(settings)
    moved: list[str] = []
    try:
        for service in stores:
            if service.name == "postgres":
                start_postgres(settings, say)
                continue
            moved.append(service.name)  # its program is rewritten first: started or not
            _start(settings, service, say)
            if service.name == "prefect-server":
                register_deployments(settings, say, runs_on)
    except StackError as e:
        if chosen != previous:
            back = _move_back(settings, moved, previous, say, runs_on)
            then = f"{back} " if back else ""
            raise StackError(
                f"The stack did not start on {chosen}, so it stays on {previous} (recorded in "
                f"{settings.stack_file}): {e} {then}Once that is fixed, run `shipyard stack up "
                f"--backend {chosen}` again; `shipyard stack up --backend {previous}` goes back."
            ) from e
        if chosen == "postgres":
            raise StackError(
                f"{e} Once that is fixed, run `shipyard stack up` again; `shipyard stack up "
                "--backend sqlite` runs the stack on SQLite meanwhile."
            ) from e
        raise
    if chosen != previous:
        postgres.record_backend(settings, chosen)
        say(f"backend: {chosen}, recorded in {settings.stack_file} (was {previous})")


def _move_back(
    settings: Settings, moved: list[str], backend: postgres.Backend, say: Say, runs_on: Pool | None
) -> str:
    """Start the servers named in `moved` on `backend` again (a switch that failed half-way
    leaves none on the new one); what happened, for the error."""
    back: list[str] = []
    by_name = {service.name: service for service in plan(settings, backend, runs_on)}
    for name in moved:
        if name not in by_name:  # a team's own server: nothing of ours to move back
            continue
        try:
            _start(settings, by_name[name], say)  # its deployments are in its database still
        except StackError as e:
            return (
                f"Starting {name} on {backend} again failed too ({e}); `shipyard stack status` "
                "shows what runs."
            )
        back.append(name)
    return f"{' and '.join(back)} run on {backend} again." if back else ""


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def status(settings: Settings) -> dict[str, str]:
    out = {"backend": _backend_line(settings), "pool": _pool_line(pool(settings))}
    for service in plan(settings):
        supervised = service.name in supervisor.programs(settings)
        if service.health or service.ready is not None:
            health = "healthy" if _healthy(service) else "down"
        else:
            running = supervisor.info(settings, service.name).get("statename") == "RUNNING"
            health = "running" if running else "down"
        mine = (
            f" (started by shipyard, {supervisor.describe(settings, service.name)})"
            if supervised
            else ""
        )
        out[service.name] = f"{health}: {service.url}{mine}"
    return out


def _pool_line(chosen: Pool) -> str:
    if chosen.kind == "docker":
        return f"docker: {chosen.name}, {chosen.workers} workers, one run each in a container"
    return f"process: {chosen.name}, one worker, runs forked on this host"


def _backend_line(settings: Settings) -> str:
    """Where the stack's Prefect and MLflow servers store, as `stack status` says it."""
    if postgres.backend(settings) == "postgres":
        return (
            f"postgres: 127.0.0.1:{settings.postgres_port}, databases "
            f"{' and '.join(postgres.DATABASES)}, cluster {postgres.data_dir(settings)}; "
            f"MLflow artifacts served from {artifacts_dir(settings)}"
        )
    return f"sqlite: Prefect under {settings.stack_dir / 'prefect'}, MLflow {settings.tracking_uri}"


def down(settings: Settings, say: Say) -> None:
    """Stop the services this stack started, clients first; they do not come back."""
    order = ["webhook", *worker_programs(settings), "prefect-server", "mlflow-server", "postgres"]
    for name in order:
        if name in supervisor.programs(settings):
            supervisor.remove(settings, name)
            say(f"stopped {name}")
