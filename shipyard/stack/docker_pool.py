"""Release runs in containers, on any number of workers: a Prefect docker work pool
(`prefect-docker`), chosen with `shipyard stack up --pool docker --workers N`.

Each worker is Prefect's docker worker (`shipyard.stack.prompt_worker --type docker`: woken by
its pool's scheduled runs, polling besides) under the stack's supervisord and takes one
run at a time (`--limit 1`): N workers run N releases at once. A run is a container of the
worker image, which the stack builds offline on its base: git from Debian, the hash-locked
environment (`worker/requirements.lock`, the same versions as the host's, so a release's
fingerprint and cache hits do not depend on which worker ran it), and Shipyard's own wheel, the
only layer a new Shipyard changes. It is pushed to the stack's registry, and the template names
the `shipyard-registry` credentials block to pull it with.

What every run's container gets, from the pool's base job template (the UI shows it):
- the host's network: the stack's Prefect, MLflow and registry answer on 127.0.0.1 there;
- the engine's socket, and the state, stack and working directories at the same paths: the
  engine is the host's, so a path a run hands it (a sandbox's mounts, HAProxy's directory) must
  mean the same in the run and on the host. Workers therefore run on the stack's machine: a
  run that does not see the stack's directory or engine stops at once, saying so
  (`pool_run.check_stack`, against the engine id `mark_engine` records);
- pip's index, trust and proxy settings of the host that ran `stack up` (`pip_env`), so that a
  run downloads a project's own locked wheels from the index the host uses, trusting its CA;
- Shipyard's settings from `stack up`'s environment. Secrets are not written into the template:
  the registry password is a Prefect Secret block (`SHIPYARD_REGISTRY_PASSWORD_BLOCK`), and
  every other secret setting a run needs (`SHIPYARD_SERVE_API_KEY`, `MLFLOW_TRACKING_PASSWORD`
  or `_TOKEN`) one of its own (`shipyard-env-<name>`), which the run's command reads into its
  environment (`shipyard.stack.pool_run`). Prefect's own settings (the API and its credentials)
  the worker passes itself.

Per-model exclusion holds across workers because it is Prefect's global concurrency limits
(`build-<model>`, `deploy-<model>`), kept by the server; the caches are the state directory and
MLflow, which every run shares.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
from docker.errors import ImageNotFound
from pydantic import SecretStr

import shipyard
import shipyard_serving
from shipyard.deploy.containers import LABEL
from shipyard.engine import RegistryLogin, push
from shipyard.errors import StackError
from shipyard.image.context import build_on_base, server_wheel, source_wheel, wheelhouse
from shipyard.processes import RUNTIME_DIR
from shipyard.settings import Settings
from shipyard.stack.pool_run import ENGINE_FILE, ENV_FROM_BLOCKS, POOL_ENGINE

Say = Callable[[str], None]

POOL = "shipyard-docker"
REPOSITORY = "shipyard/worker"
HERE = files("shipyard.stack").joinpath("worker")
LOCK = Path(str(HERE.joinpath("requirements.lock")))
DOCKERFILE = Path(str(HERE.joinpath("Dockerfile")))
PASSWORD_BLOCK = "shipyard-registry-password"
CREDENTIALS_BLOCK = "shipyard-registry"
ROLE = "release-run"
CARRIED = ("SHIPYARD_", "MLFLOW_")
"""The environment a run gets from `stack up`'s: Shipyard's settings and MLflow's client's."""
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|_KEY$")
HANDLED = frozenset({"SHIPYARD_REGISTRY_PASSWORD", "SHIPYARD_WEBHOOK_SECRET"})
"""Secrets a run does not need in its environment: the registry password reaches it as the
registry's own Secret block; the webhook's secret is the receiver's only."""


def secrets(
    environ: Mapping[str, str], worker_env: Mapping[str, str], pip: Mapping[str, str] = {}
) -> dict[str, str]:
    """The secret settings a run needs (`SHIPYARD_SERVE_API_KEY`, MLflow's password or token,
    pip's index and proxy URLs): carried as Secret blocks, never as values in the pool's
    template."""
    given = {**environ, **worker_env}
    found = {
        name: value
        for name, value in given.items()
        if name.startswith(CARRIED) and SECRET.search(name) and name not in HANDLED and value
    }
    found.update({name: value for name, value in pip.items() if name in PIP_SECRETS})
    return dict(sorted(found.items()))


BLOCK_PREFIX = "shipyard-env-"


def block_name(variable: str) -> str:
    """The Secret block carrying `variable` (block names are lower-case, digits and dashes)."""
    return BLOCK_PREFIX + variable.lower().replace("_", "-")


def worker_image(
    settings: Settings, client: docker.DockerClient, base: str, login: RegistryLogin, say: Say
) -> str:
    """The worker image for this base, lock and Shipyard, built and pushed once each (its tag is
    a digest of those inputs); returns its reference in the registry."""
    own = source_wheel(
        settings.wheelhouse_dir,
        "shipyard",
        version("shipyard"),
        [Path(shipyard.__file__).parent, Path(shipyard_serving.__file__).parent],
        data=True,
    )
    digest = hashlib.sha256()
    for part in (base.encode(), DOCKERFILE.read_bytes(), LOCK.read_bytes(), own.read_bytes()):
        digest.update(hashlib.sha256(part).digest())
    repository, tag = f"{settings.registry}/{REPOSITORY}", digest.hexdigest()[:16]
    reference = f"{repository}:{tag}"
    try:
        client.images.get(reference)
        return reference
    except ImageNotFound:
        pass
    say(
        f"docker pool: building the worker image {reference} on {base} (once per lock and Shipyard)"
    )
    wheels = wheelhouse(settings.wheelhouse_dir, LOCK)
    sha = hashlib.sha256(own.read_bytes()).hexdigest()
    build_on_base(
        client,
        "worker image",
        reference,
        base,
        {
            "Dockerfile": DOCKERFILE.read_bytes(),
            "requirements.lock": LOCK.read_bytes(),
            "shipyard/requirements.txt": f"shipyard=={version('shipyard')} --hash=sha256:{sha}\n".encode(),
        },
        {"wheels": sorted(wheels.glob("*.whl")), "shipyard": [own]},
        {f"{LABEL}.role": "release-worker", f"{LABEL}.base": base},
    )
    push(client, repository, tag, login)
    say(f"docker pool: built and pushed {reference}")
    return reference


def fetch_for_runs(settings: Settings) -> None:
    """What a release fetches from the package index, fetched here on the host: the serving
    image's locked wheels and the server's wheel, into the stack directory the runs share (a
    run's container may not reach the index: here its CA is trusted only on the host)."""
    wheelhouse(settings.wheelhouse_dir)
    server_wheel(settings.wheelhouse_dir)


PIP_SETTINGS = {
    "index_url": "PIP_INDEX_URL",
    "extra_index_urls": "PIP_EXTRA_INDEX_URL",
    "trusted_hosts": "PIP_TRUSTED_HOST",
    "proxy": "PIP_PROXY",
    "cert": "PIP_CERT",
}
"""pip's options that say where `pip download` fetches from and what it trusts, by the
environment variable a run gets each in."""
PIP_SECRETS = frozenset({"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_PROXY"})
"""Carried as Secret blocks whatever they hold: an index or proxy URL may hold a token in its
user, its path (`https://dl.cloudsmith.io/<token>/…`) or its query."""
PIP_CA = "pip-ca.pem"
"""The copy of the host's `cert` bundle in the stack directory, which every run mounts."""
PIP_OPTIONS = """
import json
from pip._internal.commands import create_command

options, _ = create_command("download").parse_args([])
print(json.dumps({name: getattr(options, name) for name in %r}))
"""
"""What `pip download` would use here, resolved by pip itself: its environment variables, then
the configuration files in pip's own order (global, user, site, PIP_CONFIG_FILE), each file's
`[download]` section over its `[global]`, empty values skipped."""
URL_CREDENTIALS = re.compile(r"//[^/@\s]+@")
PYPI = "https://pypi.org/simple"


def pip_env(settings: Settings, say: Say) -> dict[str, str]:
    """This host's pip settings as the variables a run's `pip download` reads: the indexes over
    HTTP(S), their trusted hosts, the proxy, and the CA bundle, copied into the stack directory
    (which runs mount) and named there. A run's container has none of the host's pip files:
    without these it reaches only pypi.org, trusting its image's CAs. Local indexes (`file://`)
    are not on a run's filesystem: they are left out, and said so; `find-links` is not carried
    either."""
    done = subprocess.run(
        [sys.executable, "-c", PIP_OPTIONS % (list(PIP_SETTINGS),)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        # pip's configuration errors quote the line they stopped at: no credentials in ours.
        shown = URL_CREDENTIALS.sub("//…@", done.stderr.strip()[-400:])
        raise StackError(f"Reading pip's configuration failed: {shown}")
    options: dict[str, Any] = json.loads(done.stdout)
    env: dict[str, str] = {}
    for name, value in options.items():
        variable = PIP_SETTINGS[name]
        if not value or (name == "index_url" and value == PYPI):
            continue  # unset, or pip's default, which a run's pip has too
        if name == "cert":
            bundle = Path(value)
            if not bundle.is_file():
                say(f"docker pool: pip's cert {value} is not a file: runs use their image's CAs")
                continue
            copy = settings.stack_dir / PIP_CA
            if not copy.is_file() or copy.read_bytes() != bundle.read_bytes():
                partial = copy.with_suffix(".partial")
                partial.write_bytes(bundle.read_bytes())
                partial.chmod(0o644)
                partial.replace(copy)
            env[variable] = str(copy.resolve())
            continue
        values = [value] if isinstance(value, str) else list(value)
        if name.endswith(("index_url", "index_urls")):
            remote = [url for url in values if urlsplit(url).scheme in ("http", "https")]
            for url in values:
                if url not in remote:
                    option = name.replace("_", "-").removesuffix("s")
                    say(
                        f"docker pool: pip's {option} {_shown(url)} is not HTTP(S): runs do not use it"
                    )
            values = remote
        if values:
            env[variable] = " ".join(values)
    return env


def _shown(url: str) -> str:
    """`url` without its user and password, to print."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def mark_engine(settings: Settings, client: docker.DockerClient) -> dict[str, str]:
    """The stack's engine id written to its directory (`pool_run.ENGINE_FILE`), and the
    variables that name it, the stack directory and the engine's socket to every run, which
    checks them before it starts (`pool_run.check_stack`): a run started where it cannot work
    stops at once, saying why. (A run's user may have another home: the directory is named.)"""
    engine_id = str(client.info()["ID"])
    mark = settings.stack_dir / ENGINE_FILE
    if not mark.is_file() or mark.read_text().strip() != engine_id:
        mark.write_text(engine_id + "\n")
        mark.chmod(0o644)
    host = os.environ.get("DOCKER_HOST")
    return {
        POOL_ENGINE: engine_id,
        "SHIPYARD_STACK_DIR": str(settings.stack_dir.resolve()),
        **({"DOCKER_HOST": host} if host else {}),
    }


def run_env(
    environ: Mapping[str, str], worker_env: Mapping[str, str], pip: Mapping[str, str] = {}
) -> dict[str, str]:
    """The environment the pool's template gives every run: the worker's Shipyard and MLflow
    settings and those of `environ` (`stack up`'s), and the host's `pip` settings (`pip_env`),
    with no secret in it (the template is stored in Prefect's database and shown in its UI): a
    secret is named, with its block."""
    given = {**environ, **worker_env}
    carried = secrets(environ, worker_env, pip)
    env = {
        name: value
        for name, value in given.items()
        if name.startswith(CARRIED) and not SECRET.search(name)
    }
    env.update({name: value for name, value in pip.items() if name not in carried})
    blocks = ",".join(f"{name}={block_name(name)}" for name in carried)
    return {
        **env,
        **({ENV_FROM_BLOCKS: blocks} if blocks else {}),
        "PREFECT_UI_URL": worker_env.get("PREFECT_UI_URL", ""),
        "SHIPYARD_REGISTRY_PASSWORD_BLOCK": PASSWORD_BLOCK,
        # The engine is the host's: the sandbox mounts a copy of Shipyard under the builds
        # directory, not the image's own install path.
        "SHIPYARD_SANDBOX_COPY_SOURCE": "true",
    }


def volumes(settings: Settings, cwd: Path) -> list[str]:
    """The engine's socket and the directories a run shares with the host, at the same paths."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise StackError(
            f"DOCKER_HOST is {host}: the docker pool mounts the engine's unix socket into its "
            "runs; point DOCKER_HOST at a unix:// socket."
        )
    RUNTIME_DIR.mkdir(mode=0o700, exist_ok=True)  # the short sockets' directory
    socket = host.removeprefix("unix://")
    shared = {settings.state_dir.resolve(), settings.stack_dir.resolve(), cwd, RUNTIME_DIR}
    return [f"{socket}:{socket}", *(f"{path}:{path}" for path in sorted(shared))]


def save_blocks(
    api_env: Mapping[str, str],
    login: RegistryLogin,
    carried: Mapping[str, str],
    say: Say,
) -> str:
    """On the Prefect API in `api_env`: the registry's password as a Secret block (for the
    runs' pushes) and its credentials as a DockerRegistryCredentials block (which the pool's
    template names, to pull the worker image with); each `carried` secret as the Secret block its run reads (`block_name`), and the
    blocks of secrets no longer set deleted. Returns the credentials block's id."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
    from prefect_docker.credentials import DockerRegistryCredentials

    updates: dict[Any, Any] = {PREFECT_API_URL: api_env["PREFECT_API_URL"]}
    if api_env.get("PREFECT_API_AUTH_STRING"):
        updates[PREFECT_API_AUTH_STRING] = api_env["PREFECT_API_AUTH_STRING"]
    with temporary_settings(updates=updates):
        Secret(value=SecretStr(login.password)).save(PASSWORD_BLOCK, overwrite=True)
        kept = {block_name(variable) for variable in carried}
        for variable, value in carried.items():
            Secret(value=SecretStr(value)).save(block_name(variable), overwrite=True)
        # A secret unset since the last `stack up --pool docker` reaches no run; its value
        # should not stay in Prefect's database either.
        with get_client(sync_client=True) as client:
            for document in client.read_block_documents_by_type("secret", include_secrets=False):
                name = document.name or ""
                if name.startswith(BLOCK_PREFIX) and name not in kept:
                    client.delete_block_document(document.id)
                    say(f"docker pool: deleted the Secret block {name} (its setting is not set)")
        credentials = DockerRegistryCredentials(
            username=login.username, password=login.password, registry_url=login.address
        )
        return str(credentials.save(CREDENTIALS_BLOCK, overwrite=True))


def pool_template(image: str, env: dict[str, str], mounts: list[str], credentials: str) -> Any:
    """Prefect's docker pool template with the stack's defaults (a deployment's or a run's own
    job variables still win)."""
    from prefect_docker.worker import DockerWorker

    template = DockerWorker.get_default_base_job_template()
    defaults = {
        "image": image,
        "image_pull_policy": "IfNotPresent",
        "registry_credentials": {"$ref": {"block_document_id": credentials}},
        "network_mode": "host",
        "volumes": mounts,
        "env": env,
        "labels": {f"{LABEL}.role": ROLE},
        "auto_remove": True,
        "stream_output": True,
        # Reads the carried secrets from their blocks, then runs Prefect's engine.
        "command": "python -m shipyard.stack.pool_run",
    }
    for name, value in defaults.items():
        template["variables"]["properties"][name]["default"] = value
    return template
