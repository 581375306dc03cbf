"""The local stack a release needs: a Docker engine, an authenticated registry, a base image.

`ensure_*` functions bring up only what is missing and say what they did; what they start is
recorded in `<stack_dir>/stack.json` so `shipyard stack down` stops exactly that. Where an engine
and a registry already run (a laptop, a CI runner), nothing is installed or started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import docker
import httpx
from docker.errors import APIError, DockerException, ImageNotFound

from shipyard.errors import StackError
from shipyard.settings import Settings

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


@dataclass(frozen=True)
class Registry:
    address: str
    username: str
    password: str

    def auth(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


def read_state(settings: Settings) -> dict[str, Any]:
    path = settings.stack_dir / "stack.json"
    return json.loads(path.read_text()) if path.is_file() else {"started": {}}


def write_state(settings: Settings, state: dict[str, Any]) -> None:
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    (settings.stack_dir / "stack.json").write_text(json.dumps(state, indent=2, sort_keys=True))


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


def background(args: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # outlives this command
    return process.pid


def engine(settings: Settings | None = None) -> docker.DockerClient:
    """A client of the engine at DOCKER_HOST (or the default socket), or a `StackError`."""
    try:
        client = docker.from_env(timeout=300)
        client.ping()
        return client
    except DockerException as e:
        raise StackError(
            f"No Docker engine answers at {os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')} "
            f"({e}). Start one, or run `shipyard stack up` to start Debian's dockerd."
        ) from e


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
    pid = background(["dockerd"], log)
    say(f"engine: started dockerd (pid {pid}, log {log})")
    state = read_state(settings)
    state["started"]["dockerd"] = pid
    write_state(settings, state)
    deadline = time.monotonic() + 60
    while True:
        try:
            return engine(settings)
        except StackError:
            if time.monotonic() > deadline:
                raise StackError(f"dockerd did not answer within 60 s; see {log}") from None
            time.sleep(0.5)


def registry_credentials(settings: Settings) -> Registry:
    """The configured credentials, a Prefect Secret block's, or the local stack's generated ones."""
    if settings.registry_password is not None:
        return Registry(
            settings.registry,
            settings.registry_username,
            settings.registry_password.get_secret_value(),
        )
    if settings.registry_password_block:
        from prefect.blocks.system import Secret

        return Registry(
            settings.registry,
            settings.registry_username,
            str(Secret.load(settings.registry_password_block).get()),  # type: ignore[union-attr]
        )
    stored = settings.stack_dir / "registry-password"
    if stored.is_file():
        return Registry(settings.registry, settings.registry_username, stored.read_text().strip())
    raise StackError(
        f"No password for registry {settings.registry}: set SHIPYARD_REGISTRY_PASSWORD, "
        "SHIPYARD_REGISTRY_PASSWORD_BLOCK, or run `shipyard stack up` for a local registry."
    )


def _registry_answers(address: str) -> bool:
    try:
        return httpx.get(f"http://{address}/v2/", timeout=2).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def ensure_registry(settings: Settings, say: Say) -> Registry:
    if _registry_answers(settings.registry):
        say(f"registry: {settings.registry} answers; nothing started")
        return registry_credentials(settings)
    host, _, port = settings.registry.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise StackError(
            f"Registry {settings.registry} does not answer; only a local one (127.0.0.1) is started."
        )
    if shutil.which("docker-registry") is None:
        apt_install("docker-registry", say)
    stack = settings.stack_dir
    stack.mkdir(parents=True, exist_ok=True)
    password_file = stack / "registry-password"
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
    pid = background(["docker-registry", "serve", str(config)], stack / "registry.log")
    state = read_state(settings)
    state["started"]["registry"] = pid
    write_state(settings, state)
    deadline = time.monotonic() + 30
    while not _registry_answers(settings.registry):
        if time.monotonic() > deadline:
            raise StackError(
                f"docker-registry did not answer within 30 s; see {stack / 'registry.log'}"
            )
        time.sleep(0.3)
    say(
        f"registry: started docker-registry on {settings.registry} with htpasswd auth (pid {pid}); "
        f"user {settings.registry_username}, password in {password_file}"
    )
    return Registry(settings.registry, settings.registry_username, password)


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


def push(client: docker.DockerClient, repository: str, tag: str, registry: Registry) -> str:
    """Push `repository:tag`; return the manifest digest the registry stored."""
    digest = None
    for line in client.images.push(
        repository, tag, auth_config=registry.auth(), stream=True, decode=True
    ):
        if "error" in line:
            raise StackError(f"push of {repository}:{tag} failed: {line['error']}")
        digest = line.get("aux", {}).get("Digest", digest)
    if digest is None:
        raise StackError(f"push of {repository}:{tag} reported no digest")
    return str(digest)


def ensure_base(
    settings: Settings, client: docker.DockerClient, registry: Registry, say: Say
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
    state = read_state(settings)
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
    state["base_image"] = reference
    write_state(settings, state)
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


def base_image(settings: Settings) -> str:
    """The base a build uses: the configured image if the engine has it, else the stack's."""
    recorded = read_state(settings).get("base_image")
    if recorded:
        try:
            engine(settings).images.get(settings.base_image)
        except (ImageNotFound, APIError, StackError):
            return str(recorded)
    return settings.base_image


def status(settings: Settings) -> dict[str, Any]:
    try:
        client = engine(settings)
        engine_state = f"running ({client.version()['Version']})"
    except StackError as e:
        engine_state = f"down: {e}"
    state = read_state(settings)
    return {
        "engine": engine_state,
        "registry": f"{settings.registry} {'answers' if _registry_answers(settings.registry) else 'down'}",
        "base_image": state.get("base_image") or settings.base_image,
        "started_by_shipyard": state["started"],
    }


def down(settings: Settings, say: Say) -> None:
    """Stop what `up` started (and nothing else)."""
    state = read_state(settings)
    for name in ("registry", "dockerd"):
        pid = state["started"].pop(name, None)
        if pid is None:
            continue
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            command = ""
        if ("docker-registry" if name == "registry" else "dockerd") not in command:
            say(f"{name} (pid {pid}) is no longer running; nothing to stop")
            continue
        try:
            os.kill(pid, signal.SIGTERM)
            say(f"stopped {name} (pid {pid})")
        except ProcessLookupError:
            say(f"{name} (pid {pid}) was not running")
    write_state(settings, state)
