"""Provisioning the engine side of the stack: Debian's dockerd, an htpasswd registry on
127.0.0.1, the base image, and HAProxy for the deploy target.

`ensure_*` functions bring up only what is missing and say what they did; what they start is
recorded in `stack.json` (pid plus start time) so `shipyard stack down` stops exactly that. Where
an engine and a registry already run (a laptop, a CI runner), nothing is installed or started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import docker
import httpx
from docker.errors import APIError, DockerException, ImageNotFound

from shipyard.engine import RegistryLogin, engine, push, registry_login
from shipyard.errors import StackError
from shipyard.processes import Started, background
from shipyard.settings import Settings
from shipyard.stack import state as stack_state
from shipyard.waiting import TimedOut, wait_until

Say = Callable[[str], None]
BASE_REPOSITORY = "shipyard/base"
BASE_TAG = "bookworm-python3.11"
# Not needed at run time, and most of a Debian root's size: docs, locales, caches, bytecode.
_STRIP = (
    "var/cache",
    "var/lib/apt/lists",
    "var/log",
    "usr/share/doc",
    "usr/share/locale",
    "usr/share/man",
    "usr/share/info",
    "usr/lib/x86_64-linux-gnu/gconv",
)


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


def _record(settings: Settings, name: str, started: Started) -> None:
    state = stack_state.read(settings)
    state["started"][name] = started.to_json()
    stack_state.write(settings, state)


def _engine_answers(settings: Settings) -> docker.DockerClient | None:
    try:
        return engine(settings)
    except StackError:
        return None


def ensure_engine(settings: Settings, say: Say) -> docker.DockerClient:
    try:
        client = engine(settings)
        say("engine: a Docker engine answers; nothing started")
        return client
    except StackError:
        if os.environ.get("DOCKER_HOST"):
            raise  # the user chose an engine: starting another one would not be it
    if shutil.which("dockerd") is None:
        apt_install("docker.io", say)
    log = settings.stack_dir / "dockerd.log"
    started = background(["dockerd"], log)
    _record(settings, "dockerd", started)
    say(f"engine: started dockerd (pid {started.pid}, log {log})")
    try:
        return wait_until(lambda: _engine_answers(settings), 60, 0.5)
    except TimedOut:
        raise StackError(f"dockerd did not answer within 60 s; see {log}") from None


def _registry_answers(address: str) -> bool:
    try:
        return httpx.get(f"http://{address}/v2/", timeout=2).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def ensure_registry(settings: Settings, say: Say) -> RegistryLogin:
    if _registry_answers(settings.registry):
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
        fd = os.open(
            password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )  # never world-readable
        with os.fdopen(fd, "w") as out:
            out.write(password)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    (stack / "htpasswd").write_text(f"{settings.registry_username}:{hashed}\n")
    config = stack / "registry.yml"
    config.write_text(
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
        )
    )
    started = background(["docker-registry", "serve", str(config)], stack / "registry.log")
    _record(settings, "registry", started)
    try:
        wait_until(lambda: _registry_answers(settings.registry), 30, 0.3)
    except TimedOut:
        raise StackError(
            f"docker-registry did not answer within 30 s; see {stack / 'registry.log'}"
        ) from None
    say(
        f"registry: started docker-registry on {settings.registry} with htpasswd auth "
        f"(pid {started.pid}); "
        f"user {settings.registry_username}, password in {password_file}"
    )
    return RegistryLogin(settings.registry, settings.registry_username, password)


def _debian_rootfs(root: Path, say: Say) -> Path:
    if shutil.which("debootstrap") is None:
        apt_install("debootstrap", say)
    rootfs = root / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    say("base: building a Debian bookworm root with python3 (debootstrap, about a minute)")
    done = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise StackError(f"debootstrap failed: {done.stdout[-800:]}{done.stderr[-800:]}")
    for relative in _STRIP:
        for child in (rootfs / relative).glob("*") if (rootfs / relative).is_dir() else []:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    for cache in rootfs.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    return rootfs


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
    if recorded:
        try:
            client.images.pull(recorded, auth_config=registry.auth())
            say(f"base: using the stack's {recorded}")
            return str(recorded)
        except (APIError, DockerException):
            say(f"base: the recorded {recorded} is gone from the registry; building it again")
    rootfs = _debian_rootfs(settings.stack_dir, say)
    archive = settings.stack_dir / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(rootfs.iterdir()):
            tar.add(path, arcname=path.name)
    repository = f"{registry.address}/{BASE_REPOSITORY}"
    client.api.import_image_from_file(
        str(archive),
        repository=repository,
        tag=BASE_TAG,
        changes=[
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
        ],
    )
    archive.unlink()
    shutil.rmtree(rootfs, ignore_errors=True)
    digest = push(client, repository, BASE_TAG, registry)
    reference = f"{repository}@{digest}"
    state = stack_state.read(settings)
    state["base_image"] = reference
    stack_state.write(settings, state)
    size = client.images.get(reference).attrs["Size"] / 1e6
    say(f"base: built and pushed {reference} ({size:.0f} MB)")
    return reference


def up(settings: Settings, say: Say) -> dict[str, str]:
    """Bring up engine, registry and base image; return what a release uses."""
    client = ensure_engine(settings, say)
    if shutil.which("haproxy") is None:  # the deploy target's proxy
        apt_install("haproxy", say)
    registry = ensure_registry(settings, say)
    client.login(registry.username, registry.password, registry=registry.address, reauth=True)
    base = ensure_base(settings, client, registry, say)
    return {"engine": client.api.base_url, "registry": registry.address, "base_image": base}


def status(settings: Settings) -> dict[str, Any]:
    try:
        client = engine(settings)
        engine_state = f"running ({client.version()['Version']})"
    except StackError as e:
        engine_state = f"down: {e}"
    state = stack_state.read(settings)
    answers = _registry_answers(settings.registry)
    return {
        "engine": engine_state,
        "registry": f"{settings.registry} {'answers' if answers else 'down'}",
        "base_image": state.get("base_image") or settings.base_image,
        "started_by_shipyard": {
            name: entry for name, entry in state["started"].items() if _ours(entry) is not None
        },
    }


def _not_ours(entry: object) -> str:
    if Started.from_json(entry) is None:  # a bare pid, as Shipyard 0.1 recorded processes
        return f"recorded as pid {entry} only, which cannot tell it from a reused pid: check it and stop it by hand"
    return "no longer the process the stack started"


def _ours(entry: object) -> Started | None:
    started = Started.from_json(entry)
    return started if started is not None and started.alive() else None


def down(settings: Settings, say: Say) -> None:
    """Stop what `up` started (and nothing else: a pid is ours only with its start time)."""
    state = stack_state.read(settings)
    for name in ("registry", "dockerd"):
        entry = state["started"].pop(name, None)
        if entry is None:
            continue
        started = _ours(entry)
        if started is None:
            say(f"{name}: {_not_ours(entry)}; nothing to stop")
            continue
        os.kill(started.pid, signal.SIGTERM)
        say(f"stopped {name} (pid {started.pid})")
    stack_state.write(settings, state)
