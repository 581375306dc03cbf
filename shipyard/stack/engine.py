"""Provisioning the engine side of the stack: Debian's dockerd, an htpasswd registry on
127.0.0.1 (both under the stack's supervisord), the base image, and the endpoint proxy's image.

`ensure_*` functions bring up only what is missing and say what they did; what they start is a
supervisord program (`shipyard.stack.supervisor`), restarted when it dies, and `shipyard stack
down` stops exactly that. Where an engine and a registry already run (a laptop, a CI runner),
nothing is installed or started.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import docker
import httpx
from docker.errors import APIError, DockerException, ImageNotFound

from shipyard.deploy import targets
from shipyard.deploy.containers import LABEL
from shipyard.deploy.proxy import PROXY_IMAGE
from shipyard.engine import RegistryLogin, engine, registry_login
from shipyard.errors import ShipyardError, StackError
from shipyard.image.runtime import ensure_runtime
from shipyard.processes import Started
from shipyard.sandbox import container as sandbox_container
from shipyard.settings import Settings
from shipyard.stack import base as stack_base
from shipyard.stack import state as stack_state
from shipyard.stack import supervisor
from shipyard.waiting import TimedOut, wait_until

Say = Callable[[str], None]


def apt_install(package: str, say: Say) -> None:
    if os.geteuid() != 0:
        raise StackError(
            f"{package} is not installed and installing needs root: apt-get install {package}"
        )
    say(f"installing Debian's {package}")
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if done.returncode:
            raise StackError(f"{' '.join(args)} failed: {done.stderr.strip()[-500:]}")


def _engine_answers(settings: Settings) -> docker.DockerClient | None:
    try:
        return engine(settings)
    except StackError:
        return None


def _adopt(settings: Settings, name: str, say: Say) -> bool:
    """Stop `name` if an older `stack up` started it as a bare (unsupervised) process, so it
    can run under supervisord; returns whether it did."""
    state = stack_state.read(settings)
    entry = state["started"].pop(name, None)
    stack_state.write(settings, state)
    started = Started.from_json(entry)
    if started is None or not started.alive():
        return False
    say(
        f"{name}: moving pid {started.pid} (started unsupervised by an older stack up) under supervisord"
    )
    os.kill(started.pid, signal.SIGTERM)
    try:
        wait_until(lambda: not started.alive(), 60, 0.2)
    except TimedOut:
        raise StackError(
            f"{name} (pid {started.pid}) did not stop within 60 s of SIGTERM"
        ) from None
    return True


def ensure_engine(settings: Settings, say: Say) -> docker.DockerClient:
    """The engine that answers; else dockerd started under the stack's supervisord (which
    restarts it if it dies; its containers come back by their restart policy)."""
    ours = "dockerd" in supervisor.programs(settings)
    client = _engine_answers(settings)
    if client is not None and not ours and not _adopt(settings, "dockerd", say):
        say("engine: a Docker engine answers; nothing started")
        return client
    if client is None and not ours and os.environ.get("DOCKER_HOST"):
        engine(settings)  # the user chose an engine: starting another one would not be it: raise
    if shutil.which("dockerd") is None:
        apt_install("docker.io", say)
    supervisor.ensure(settings, say)
    supervisor.add(
        settings, supervisor.Program("dockerd", ["dockerd"], stop_group=False, stop_wait_s=60)
    )
    log = settings.stack_dir / "dockerd.log"
    try:
        client = wait_until(lambda: _engine_answers(settings), 60, 0.5)
    except TimedOut:
        raise StackError(f"dockerd did not answer within 60 s; see {log}") from None
    say(
        f"engine: dockerd runs under supervisord ({supervisor.describe(settings, 'dockerd')}, log {log})"
    )
    return client


def _registry_answers(address: str) -> bool:
    try:
        return httpx.get(f"http://{address}/v2/", timeout=2).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def ensure_registry(settings: Settings, say: Say) -> RegistryLogin:
    """The registry that answers; else Debian's docker-registry under the stack's supervisord."""
    ours = "registry" in supervisor.programs(settings)
    if not ours and _registry_answers(settings.registry) and not _adopt(settings, "registry", say):
        say(f"registry: {settings.registry} answers; nothing started")
        return registry_login(settings)
    host, _, port = settings.registry.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise StackError(
            f"Registry {settings.registry} does not answer; only a local one (127.0.0.1) is started."
        )
    if shutil.which("docker-registry") is None:
        apt_install("docker-registry", say)
    stack = settings.stack_dir
    stack_state.private_dir(settings)
    password_file = settings.registry_password_file
    if settings.registry_password is not None:
        password = settings.registry_password.get_secret_value()
    elif password_file.is_file():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(24)
        stack_state.create_private(password_file, password)  # never world-readable
    # The registry checks the hash on every request (a push makes a dozen): bcrypt's default cost
    # (12) took 2 s of a push of one small layer. The password is 24 random bytes, not a
    # guessable word, so cost 5 (htpasswd -B's default) loses nothing.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    stack_state.write_private(stack / "htpasswd", f"{settings.registry_username}:{hashed}\n")
    config = stack / "registry.yml"
    stack_state.write_private(
        config,
        json.dumps(
            {  # YAML is a superset of JSON
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {
                    "filesystem": {"rootdirectory": str(stack / "registry")},
                    "delete": {"enabled": True},
                },
                "http": {
                    "addr": f"127.0.0.1:{port}",
                    "headers": {"X-Content-Type-Options": ["nosniff"]},
                },
                "auth": {"htpasswd": {"realm": "shipyard", "path": str(stack / "htpasswd")}},
            },
            indent=2,
        ),
    )
    supervisor.ensure(settings, say)
    supervisor.add(
        settings, supervisor.Program("registry", ["docker-registry", "serve", str(config)])
    )
    try:
        wait_until(lambda: _registry_answers(settings.registry), 30, 0.3)
    except TimedOut:
        raise StackError(
            f"docker-registry did not answer within 30 s; see {stack / 'registry.log'}"
        ) from None
    say(
        f"registry: docker-registry on {settings.registry} with htpasswd auth runs under "
        f"supervisord; user {settings.registry_username}, password in {password_file}"
    )
    return RegistryLogin(settings.registry, settings.registry_username, password)


def build_base(
    settings: Settings,
    client: docker.DockerClient,
    registry: RegistryLogin,
    say: Say,
    debs: Path | None = None,
) -> stack_base.Base:
    """Build the base (`shipyard.stack.base`) in the stack directory, with Debian's mmdebstrap
    (installed if missing), push it, and record it and its package set in the stack state.
    `debs`: the .deb cache (default the stack directory's `debs/`, kept between builds)."""
    if shutil.which("mmdebstrap") is None:
        apt_install("mmdebstrap", say)
    stack_state.private_dir(settings)
    built = stack_base.build(
        client, registry, settings.stack_dir, debs or settings.stack_dir / "debs", say
    )
    state = stack_state.read(settings)
    state["base_image"] = built.reference
    state["base_packages"] = [list(p) for p in built.packages]
    stack_state.write(settings, state)
    return built


def ensure_base(
    settings: Settings, client: docker.DockerClient, registry: RegistryLogin, say: Say
) -> str:
    """The base image reference, by digest: the configured one if it can be had, else ours."""
    try:
        client.images.get(settings.base_image)
        say(f"base: {settings.base_image} is present")
        return settings.base_image
    except ImageNotFound:
        pass
    try:
        client.images.pull(settings.base_image)
        say(f"base: pulled {settings.base_image}")
        return settings.base_image
    except (APIError, DockerException):
        say(f"base: {settings.base_image} cannot be pulled here")
    state = stack_state.read(settings)
    recorded = state.get("base_image")
    if recorded and "base_packages" not in state:
        say(
            f"base: the recorded {recorded} was built before bases were reproducible "
            "(no package set recorded); building it again, once"
        )
        recorded = None
    if recorded:
        try:
            client.images.pull(recorded, auth_config=registry.auth())
            say(f"base: using the stack's {recorded}")
            return str(recorded)
        except (APIError, DockerException):
            say(f"base: the recorded {recorded} is gone from the registry; building it again")
    built = build_base(settings, client, registry, say)
    say(
        f"base: built and pushed {built.reference} ({built.size_bytes / 1e6:.0f} MB, "
        f"{len(built.packages)} Debian packages, recorded in {settings.stack_file})"
    )
    return built.reference


def ensure_proxy_image(client: docker.DockerClient, base: str, say: Say) -> None:
    """The endpoint proxy's image: Debian's haproxy on the stack's base (built once per base)."""
    with contextlib.suppress(ImageNotFound):
        if client.images.get(PROXY_IMAGE).labels.get(f"{LABEL}.base") == base:
            return
    say(f"proxy image: installing Debian's haproxy on {base} ({PROXY_IMAGE})")
    dockerfile = "\n".join(
        [
            f"FROM {base}",
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            "--no-install-recommends haproxy >/dev/null && rm -rf /var/lib/apt/lists/* /var/cache/apt",
            f'LABEL {LABEL}.base="{base}"',
            "",
        ]
    )
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=PROXY_IMAGE, rm=True)
    except (APIError, DockerException) as e:
        raise StackError(f"Building {PROXY_IMAGE} failed: {e}") from e


def up(settings: Settings, say: Say) -> dict[str, Any]:
    """Bring up engine, registry, base, proxy, sandbox and runtime images; return what a
    release uses."""
    private = stack_state.tighten(settings)
    say(f"modes: {' and '.join(map(str, private))} and what they hold are their owner's only")
    client = ensure_engine(settings, say)
    registry = ensure_registry(settings, say)
    client.login(registry.username, registry.password, registry=registry.address, reauth=True)
    base = ensure_base(settings, client, registry, say)
    ensure_proxy_image(client, base, say)
    sandbox = sandbox_container.environment_image(client, settings, say, base)
    # Every release image is this plus its model layer: built here once, not by the first release.
    runtime = ensure_runtime(client, base, settings.wheelhouse_dir, say)
    return {
        "engine": client.api.base_url,
        "registry": registry.address,
        "base_image": base,
        "sandbox_image": sandbox,
        "runtime_image": runtime.reference,
    }


def recover_endpoints(settings: Settings, say: Say) -> dict[str, str]:
    """Every recorded endpoint serves again what it served (see `endpoint.recover`); run once
    the Prefect server is up, so the deploy lock of a rollout that was cut off is freed."""
    out = {}
    for recorded in sorted(settings.deploy_dir.glob("*/state.json")):
        model = recorded.parent.name
        try:
            out[model] = targets.recover(settings, model, say)  # by deploy.target
        except ShipyardError as e:
            out[model] = f"not recovered: {e}"
        if "cut off" in out[model] and os.environ.get("PREFECT_API_URL"):
            from shipyard.flows.rollout import free_rollout_lock  # Prefect and MLflow: seconds

            free_rollout_lock(model)  # its dead process's lease would hold it for 5 minutes
            out[model] += "; its deploy lock freed"
        say(f"endpoint {model}: {out[model]}")
    return out


def status(settings: Settings) -> dict[str, Any]:
    try:
        client = engine(settings)
        engine_state = f"running ({client.version()['Version']})"
    except StackError as e:
        engine_state = f"down: {e}"
    state = stack_state.read(settings)
    answers = _registry_answers(settings.registry)
    out = {
        "engine": engine_state,
        "registry": f"{settings.registry} {'answers' if answers else 'down'}",
        "base_image": state.get("base_image") or settings.base_image,
    }
    for name in ("dockerd", "registry"):
        if name in supervisor.programs(settings):
            out[f"{name} supervised"] = supervisor.describe(settings, name)
    return out


def down(settings: Settings, say: Say) -> None:
    """Stop what `up` started (and nothing else), and supervisord once nothing is left in it."""
    for name in ("registry", "dockerd"):
        if name in supervisor.programs(settings):
            supervisor.remove(settings, name)
            say(f"stopped {name}")
    if not supervisor.programs(settings):
        supervisor.shutdown(settings, say)
