"""The operations half of the local stack: a Prefect server (with its UI), a process worker, an
MLflow tracking server (with its UI), the webhook receiver, and the deployments of prefect.yaml.

Like the engine and registry in `shipyard.stack.engine`, each is started only when nothing
answers at its address, as a program of the stack's supervisord (restarted when it dies, logs
rotated), and stopped by `stack down` only if this stack started it. Teams point Shipyard at Postgres-backed servers with settings instead
(PREFECT_API_URL, MLFLOW_TRACKING_URI); nothing here changes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

import httpx

from shipyard.deployments.webhook import WebhookSettings
from shipyard.errors import StackError
from shipyard.processes import Started
from shipyard.settings import Settings
from shipyard.stack import credentials, supervisor
from shipyard.stack import state as stack_state
from shipyard.stack.engine import Say
from shipyard.waiting import TimedOut, wait_until

# By module, with this interpreter: whatever directory its scripts were installed in.
PREFECT = [sys.executable, "-m", "prefect"]
MLFLOW = [sys.executable, "-m", "mlflow"]
SHIPYARD = [sys.executable, "-m", "shipyard"]
LAUNCH = [sys.executable, "-m", "shipyard.stack.launch"]
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


def _own_prefect(settings: Settings) -> bool:
    return prefect_api(settings) == credentials.stack_api(settings)


def _own_mlflow(settings: Settings) -> bool:
    """A tracking server the user configured (http[s]://) is used as it is, not started."""
    return not settings.tracking_uri.startswith(("http://", "https://"))


def mlflow_ui(settings: Settings) -> str:
    if _own_mlflow(settings):
        return f"http://{settings.services_host}:{settings.mlflow_port}"
    return settings.mlflow_ui_url or settings.tracking_uri


def _prefect_env(settings: Settings) -> dict[str, str]:
    """What every Prefect process of the stack gets: the API and its credentials."""
    api = prefect_api(settings)
    return {
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(settings.stack_dir / "prefect"),
        **credentials.client_env(settings, api),
    }


def plan(settings: Settings) -> list[Service]:
    """What the stack runs here: the servers it owns (not those the user configured), the
    worker and the webhook receiver."""
    host = settings.services_host
    api = prefect_api(settings)
    prefect_url = api.removesuffix("/api")
    base_env = _prefect_env(settings)
    webhook = WebhookSettings()
    services = [
        Service(
            "prefect-server",
            [
                *PREFECT,
                "server",
                "start",
                "--host",
                host,
                "--port",
                str(settings.prefect_port),
            ],
            f"{api}/health",
            prefect_url,
            {**base_env, **credentials.server_env(settings), "PREFECT_UI_API_URL": api},
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
                "--backend-store-uri",
                settings.tracking_uri,
                "--default-artifact-root",
                settings.artifact_root.as_uri(),
                "--workers",
                "1",
            ],
            f"http://{host}:{settings.mlflow_port}/health",
            f"http://{host}:{settings.mlflow_port}",
            # Its job runner (seven huey consumers) serves MLflow's GenAI jobs, which Shipyard
            # does not use.
            {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ),
        Service(
            "prefect-worker",
            [*PREFECT, "worker", "start", "--pool", "shipyard", "--type", "process"],
            "",
            "pool shipyard",
            {
                **base_env,
                # Prefect's default is 10 s: a pushed commit would wait that long to start.
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "SHIPYARD_STATE_DIR": str(settings.state_dir.resolve()),
                "SHIPYARD_MLFLOW_UI_URL": mlflow_ui(settings),
                "PREFECT_UI_URL": prefect_url,
            },
            umask=None,
        ),
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
        if (service.name != "prefect-server" or _own_prefect(settings))
        and (service.name != "mlflow-server" or _own_mlflow(settings))
    ]


def _answers(url: str) -> bool:
    if not url:
        return False
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start(settings: Settings, service: Service, say: Say) -> None:
    ours = service.name in supervisor.programs(settings)
    if not ours and _answers(service.health):
        say(f"{service.name}: {service.url} answers; nothing started")
        return
    _adopt_bare(settings, service.name, say)
    log = settings.stack_dir / f"{service.name}.log"
    supervisor.ensure(settings, say)
    changed = supervisor.add(
        settings,
        supervisor.Program(
            service.name, service.args, service.env, directory=Path.cwd(), umask=service.umask
        ),
    )
    try:
        wait_until(
            lambda: not service.health or _answers(service.health),
            90,
            0.5,
            give_up=lambda: (
                supervisor.info(settings, service.name).get("statename") in ("FATAL", "BACKOFF")
            ),
        )
    except TimedOut:
        raise StackError(
            f"{service.name} did not come up ({service.health}); see {log}: "
            + log.read_text(errors="replace")[-600:]
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


def register_deployments(settings: Settings, say: Say) -> None:
    """`prefect deploy --all` from prefect.yaml, on a `shipyard` process pool."""
    # prefect.yaml's pull step is `{{ $PWD }}`, filled in at deploy time: the directory
    # `stack up` was started from, where the worker's runs resolve relative sources.
    env = {**os.environ, **_prefect_env(settings), "PWD": str(Path.cwd())}
    with as_file(PREFECT_YAML) as prefect_yaml:
        for args in (
            ["work-pool", "create", "shipyard", "--type", "process", "--overwrite"],
            ["--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_yaml)],
        ):
            done = subprocess.run([*PREFECT, *args], env=env, capture_output=True, text=True)
            if done.returncode:
                raise StackError(
                    f"prefect {' '.join(args)} failed: {done.stdout[-800:]}{done.stderr[-800:]}"
                )
    say("deployments: release (webhook trigger), nightly-rebuild (cron), rollback, promote")


def up(settings: Settings, say: Say) -> dict[str, str]:
    """Start what is missing; return the URLs."""
    services = plan(settings)
    api = prefect_api(settings)
    if not _own_prefect(settings):
        say(f"prefect-server: using PREFECT_API_URL {api}; nothing started")
        register_deployments(settings, say)
    if not _own_mlflow(settings):
        say(f"mlflow-server: using the tracking server {settings.tracking_uri}; nothing started")
    elif not _loopback(settings.services_host):
        say(
            f"mlflow-server: WARNING: it has no authentication and binds {settings.services_host} "
            "(SHIPYARD_SERVICES_HOST), not loopback: anyone who reaches it reads and changes the "
            "registry. Set SHIPYARD_SERVICES_HOST=127.0.0.1, or put an authenticating proxy in front."
        )
    for service in services:
        _start(settings, service, say)
        if service.name == "prefect-server":
            register_deployments(settings, say)
    by_name = {s.name: s.url for s in services}
    return {
        "prefect_ui": api.removesuffix("/api"),
        "prefect_api": api,
        "mlflow_ui": mlflow_ui(settings),
        "webhook": by_name["webhook"],
        "webhook_secret_file": str(settings.stack_dir / "webhook-secret"),
        **(
            {"prefect_auth_file": str(credentials.auth_file(settings))}
            if _own_prefect(settings)
            else {}
        ),
    }


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def status(settings: Settings) -> dict[str, str]:
    out = {}
    for service in plan(settings):
        supervised = service.name in supervisor.programs(settings)
        if service.health:
            health = "healthy" if _answers(service.health) else "down"
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


def down(settings: Settings, say: Say) -> None:
    """Stop the services this stack started, clients first; they do not come back."""
    order = ["webhook", "prefect-worker", "prefect-server", "mlflow-server"]
    for name in order:
        if name in supervisor.programs(settings):
            supervisor.remove(settings, name)
            say(f"stopped {name}")
