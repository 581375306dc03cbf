"""Run one stage of a model project's code in a locked-down container, and build its image.

The container gets: the project read-only at `/project`, Shipyard's own source read-only at
`/opt/shipyard`, the stage's inputs read-only at `/in`, and one writable directory, `/out`.
It gets no network (unless granted), no environment from the worker (so no secret), no Docker
socket, no capabilities, `no-new-privileges`, a read-only root with a small `/tmp`, a non-root
user and the memory/CPU/PID limits of the settings.

The image is the stack's base plus Shipyard's sandbox environment (`requirements.lock`),
installed offline from hash-checked wheels downloaded on the host; it is built once per lock
and base, and tagged by both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound
from docker.types import Mount
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ReadTimeout

import shipyard
from shipyard import errors, warmup
from shipyard.engine import base_image, engine
from shipyard.errors import ImageError, ProjectError, StackError
from shipyard.image.context import build_on_base, wheelhouse
from shipyard.locks import exclusive
from shipyard.settings import Settings

HERE = files("shipyard.sandbox")
LOCK = Path(str(HERE.joinpath("requirements.lock")))
DOCKERFILE = Path(str(HERE.joinpath("Dockerfile")))
REPOSITORY = "shipyard/sandbox"
SOURCE = Path(shipyard.__file__).parent
"""Shipyard's own package, mounted read-only: the runner and the project-facing core."""
NOBODY = 65534
LABEL = "ai.shipyard.sandbox"
MAX_RESULT_BYTES = 1 << 20
IGNORED = (".git", "__pycache__", ".shipyard", ".venv", ".pytest_cache", "*.pyc")

Say = Callable[[str], None]


def lock_digest() -> str:
    """The sandbox environment's identity: part of every sandboxed release's fingerprint."""
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]


def image_tag() -> str:
    """One sandbox image per lock, built on the stack's base (recorded in its label): a
    process that would pick another base for release images (another HOME, another
    SHIPYARD_BASE_IMAGE) still runs project code in the same environment."""
    return f"{REPOSITORY}:{lock_digest()}"


PROJECT_LOCK = "requirements.lock"
"""A project's own hash-locked requirements (pip-compile --generate-hashes), installed on top of
Shipyard's sandbox environment. The file is part of the project's tree, so of the fingerprint."""

PROJECT_DOCKERFILE = """ARG BASE
FROM ${BASE}
COPY requirements.lock /build/requirements.lock
COPY wheels/ /build/wheels/
RUN /opt/venv/bin/pip install --quiet --no-index --no-deps --require-hashes \\
      --find-links /build/wheels -r /build/requirements.lock && rm -rf /build
"""


def project_image(
    client: docker.DockerClient, settings: Settings, project_dir: Path, say: Say
) -> str:
    """The sandbox image for a project: Shipyard's environment, plus the project's own locked
    wheels when it has a `requirements.lock` (built once per lock)."""
    image = environment_image(client, settings, say)
    lock = project_dir / PROJECT_LOCK
    if not lock.is_file() or lock.is_symlink():
        return image
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    tag = f"{image}-p{digest}"
    with contextlib.suppress(ImageNotFound):
        client.images.get(tag)
        return tag
    with exclusive(settings.stack_dir / "sandbox-build.lock"):
        say(f"sandbox: adding the project's {PROJECT_LOCK} ({digest}) to {image}")
        try:
            wheels = wheelhouse(settings.wheelhouse_dir, lock)
        except ImageError as e:
            raise ProjectError(
                f"The project's {PROJECT_LOCK} cannot be installed: {e} It must pin every "
                "package with --hash (pip-compile --generate-hashes), wheels only."
            ) from e
        _build(
            client,
            {"Dockerfile": PROJECT_DOCKERFILE.encode(), "requirements.lock": lock.read_bytes()},
            wheels,
            tag,
            image,
        )
    return tag


def environment_image(
    client: docker.DockerClient, settings: Settings, say: Say, base: str | None = None
) -> str:
    """The sandbox image for this lock and `base` (default: the one releases build on), built
    once (about a minute with PyTorch): `stack up` builds it, else the first release does."""
    tag = image_tag()
    with contextlib.suppress(ImageNotFound):
        client.images.get(tag)
        return tag
    base = base or base_image(settings)
    with exclusive(settings.stack_dir / "sandbox-build.lock"):
        with contextlib.suppress(ImageNotFound):
            client.images.get(tag)
            return tag
        say(f"sandbox: building {tag} from {base} and the locked wheels (once per lock)")
        wheels = wheelhouse(settings.wheelhouse_dir, LOCK)
        files_ = {"Dockerfile": DOCKERFILE.read_bytes(), "requirements.lock": LOCK.read_bytes()}
        _build(client, files_, wheels, tag, base)
    return tag


def _build(
    client: docker.DockerClient, files_: dict[str, bytes], wheels: Path, tag: str, base: str
) -> None:
    """`docker build` a context of `files_` plus the wheels, FROM `base`, tagged `tag`."""
    build_on_base(
        client,
        "sandbox image",
        tag,
        base,
        files_,
        {"wheels": sorted(wheels.glob("*.whl"))},
        {LABEL: lock_digest(), f"{LABEL}.base": base},
    )


@dataclass(frozen=True)
class Run:
    """One sandboxed stage: what it reads, where it writes, what it may reach."""

    stage: str
    project_dir: Path
    out_dir: Path
    request: dict[str, Any]
    inputs: dict[str, Path]
    """Files copied into `/in` under these names."""
    network: bool = False
    ahead: Path | None = None
    """Where the stages after this one run ahead, in the same container, for `adopt` (the data
    stage of a release whose inputs are new: one container start and one interpreter for data,
    train and export)."""
    ahead_stages: tuple[str, ...] = ()


def _user(*writable: Path | None) -> str:
    """Not root: `nobody` (owning the writable directories) when the worker is root, else the
    worker's own unprivileged user."""
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    for directory in writable:
        if directory is not None:
            os.chown(directory, NOBODY, NOBODY)
    return f"{NOBODY}:{NOBODY}"


def _give_back(out_dir: Path) -> None:
    """What the sandbox wrote, reduced to plain files and directories, belongs to the worker
    again. Symlinks, FIFOs and devices are removed first, never followed: the worker, or a later
    stage writing beside a graph, would otherwise read or write wherever they point."""
    for top, directories, names in os.walk(out_dir, followlinks=False):
        for name in [*directories, *names]:
            path = Path(top) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                path.unlink()
    if os.getuid() != 0:
        return  # others own them already
    for top, directories, names in os.walk(out_dir, followlinks=False):
        for name in ["", *directories, *names]:
            os.chown(Path(top) / name, 0, 0, follow_symlinks=False)


def _raise_failure(stage: str, result: dict[str, Any]) -> None:
    kind = getattr(errors, str(result.get("kind")), ProjectError)
    if not (isinstance(kind, type) and issubclass(kind, errors.ShipyardError)):
        kind = ProjectError
    raise kind(str(result.get("error", "(no message)"))[:4000])


def run(run: Run, settings: Settings, say: Say) -> dict[str, Any]:
    """Run the stage; return what its `result.json` says, or raise the error it reported."""
    try:
        client = engine(settings)
    except StackError as e:
        raise StackError(
            f"{e} The sandbox (SHIPYARD_SANDBOX=container) runs project code on the engine."
        ) from e
    image = project_image(client, settings, run.project_dir, say)
    # Fresh output directories: nothing a previous run left (a result, a symlink) is read back.
    for directory in (run.out_dir, run.ahead):
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix=".sandbox-", dir=run.out_dir.parent) as tmp:
        inputs, project = _stage_inputs(run, Path(tmp))
        container = _start(client, image, run, inputs, project, settings)
        warmup.idle()  # this process waits now: the later stages' imports load meanwhile
        try:
            exit_code, oom = _wait(container, run, settings)
            logs = container.logs().decode(errors="replace")
        finally:
            with contextlib.suppress(APIError, DockerException):
                container.remove(force=True)
            _give_back(run.out_dir)
            if run.ahead is not None:
                _give_back(run.ahead)
            warmup.settle()  # from here on this process imports for itself
    own, later = _split_logs(logs)
    for line in own.splitlines()[-50:]:
        say(f"[{run.stage}] {line}")
    if run.ahead is not None:
        for stage, text in later.items():
            # Written by the worker, beside (not in) what the stage wrote.
            (run.ahead / f".{stage}.log").write_text(text)
    result = read_result(run.out_dir)
    ended_early = oom or exit_code is None or exit_code not in (0, 3)
    if run.ahead is not None and ended_early:
        # The stage itself may have finished: what ran after it did not, and is run again, on
        # its own, by its stage (which then names the limit it hit).
        shutil.rmtree(run.ahead, ignore_errors=True)
        run.ahead.mkdir()
    if run.ahead is None or result is None:
        if oom:
            raise ProjectError(
                f"The {run.stage} stage ran out of memory in its sandbox (limit "
                f"{settings.sandbox_memory_mb} MiB): raise SHIPYARD_SANDBOX_MEMORY_MB, or use less."
            )
        if exit_code is None:
            raise ProjectError(
                f"The {run.stage} stage did not finish within {settings.sandbox_timeout_s:.0f} s "
                "in its sandbox (SHIPYARD_SANDBOX_TIMEOUT_S)."
            )
    # The protocol's file is not an output: the stage's directory holds only what it made.
    (run.out_dir / "result.json").unlink(missing_ok=True)
    if result is None:
        raise ProjectError(
            f"The {run.stage} stage's sandbox exited with code {exit_code} and no result. "
            f"Its last output:\n{logs[-1500:]}"
        )
    if not result.get("ok"):
        _raise_failure(run.stage, result)
    return result


def adopt(
    ahead: Path, stage: str, out_dir: Path, say: Say, made_from: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """What `stage` wrote when it ran ahead in an earlier stage's sandbox, moved into `out_dir`
    as if it had run on its own; None (then it runs now, on its own) when it did not run ahead,
    did not finish, failed there (a failure is only believed from a stage's own sandbox), or
    was made from other inputs than `made_from` says (fields its result must hold)."""
    done = ahead / stage
    result = read_result(done) if done.is_dir() and not done.is_symlink() else None
    if (
        result is None
        or not result.get("ok")
        or any(result.get(key) != value for key, value in (made_from or {}).items())
    ):
        return None
    log = ahead / f".{stage}.log"
    for line in (log.read_text().splitlines() if log.is_file() else [])[-50:]:
        say(f"[{stage}] {line}")
    say(f"{stage}: ran in the data stage's sandbox, right after it (one container, one start)")
    (done / "result.json").unlink()
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The sandbox has exited, and `_give_back` left only plain files and directories: nothing
    # changes them any more.
    shutil.move(done, out_dir)
    return result


AHEAD_MARK = re.compile(r"^== (\w+) \(in the data stage's sandbox\) ==$", re.MULTILINE)
"""The runner's line before each stage it runs ahead (`runner._ahead`)."""


def _split_logs(logs: str) -> tuple[str, dict[str, str]]:
    """The stage's own log lines, and those of each stage run ahead after it, by stage."""
    parts = AHEAD_MARK.split(logs)
    return parts[0], dict(zip(parts[1::2], parts[2::2], strict=True))


def _stage_inputs(run: Run, tmp: Path) -> tuple[Path, Path]:
    """`/in` (the request and input files) and a copy of the project readable by the sandbox's
    user whatever the checkout's modes; neither is writable from inside."""
    inputs, project = tmp / "in", tmp / "project"
    inputs.mkdir()
    request = {"stage": run.stage, **run.request, "ahead": list(run.ahead_stages)}
    (inputs / "request.json").write_text(json.dumps(request))
    for name, path in run.inputs.items():
        shutil.copy(path, inputs / name)
    shutil.copytree(
        run.project_dir,
        project,
        symlinks=True,
        ignore=shutil.ignore_patterns(*IGNORED),
        copy_function=shutil.copy,
    )
    for path in [tmp, *tmp.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return inputs, project


def _source(settings: Settings) -> Path:
    """Shipyard's package as the engine sees it: its install path, or with
    `sandbox_copy_source` (a docker pool run, whose engine is the host's) a copy under the
    builds directory, which the run shares with the host at the same path; one per content."""
    if not settings.sandbox_copy_source:
        return SOURCE
    paths = sorted(p for p in SOURCE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(SOURCE).as_posix().encode() + b"\0" + path.read_bytes())
    target = settings.builds_dir / ".shipyard-source" / digest.hexdigest()[:16]
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=target.parent))
        shutil.copytree(SOURCE, staging / "shipyard", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [staging, *staging.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            staging.rename(target)
        except OSError:  # another run made it first
            shutil.rmtree(staging, ignore_errors=True)
    return target / "shipyard"


def _start(
    client: docker.DockerClient,
    image: str,
    run: Run,
    inputs: Path,
    project: Path,
    settings: Settings,
) -> Any:
    mounts = [
        Mount("/project", str(project), type="bind", read_only=True),
        Mount("/opt/shipyard/shipyard", str(_source(settings)), type="bind", read_only=True),
        Mount("/in", str(inputs), type="bind", read_only=True),
        Mount("/out", str(run.out_dir), type="bind", read_only=False),
    ]
    if run.ahead is not None:
        mounts.append(Mount("/ahead", str(run.ahead), type="bind", read_only=False))
    memory = f"{settings.sandbox_memory_mb}m"
    try:
        return client.containers.run(
            image,
            ["/in/request.json"],
            detach=True,
            user=_user(run.out_dir, run.ahead),
            network_mode="bridge" if run.network else "none",
            read_only=True,
            tmpfs={"/tmp": "size=1g,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=memory,
            memswap_limit=memory,
            # The engine refuses more CPUs than the host has.
            nano_cpus=int(min(settings.sandbox_cpus, os.cpu_count() or 1) * 1e9),
            pids_limit=settings.sandbox_pids,
            mounts=mounts,
            # Nothing of the worker's. One BLAS thread: numpy's sums come out in the same
            # order on every machine and every run, so training is bit-reproducible.
            environment={"OPENBLAS_NUM_THREADS": "1"},
            labels={LABEL: run.stage, f"{LABEL}.state": str(settings.state_dir.resolve())},
            log_config={"type": "json-file", "config": {"max-size": "10m"}},
        )
    except (APIError, DockerException) as e:
        raise StackError(f"The engine could not start the {run.stage} sandbox: {e}") from e


def _wait(container: Any, run: Run, settings: Settings) -> tuple[int | None, bool]:
    """The container's exit code (None: killed at the time limit) and whether it was OOM-killed.

    The limit is per stage: the stage itself must have written its result within one; the
    stages it runs ahead get one more each."""
    limit = settings.sandbox_timeout_s
    try:
        status = container.wait(timeout=limit)
    except (ReadTimeout, RequestsConnectionError):
        status = None
    if status is None and run.ahead_stages and read_result(run.out_dir) is not None:
        try:
            status = container.wait(timeout=limit * len(run.ahead_stages))
        except (ReadTimeout, RequestsConnectionError):
            status = None
    if status is None:
        with contextlib.suppress(APIError, DockerException):
            container.kill()
        return None, False
    container.reload()
    return int(status.get("StatusCode", -1)), bool(container.attrs["State"].get("OOMKilled"))


def read_result(out_dir: Path) -> dict[str, Any] | None:
    """`result.json`, if the sandbox wrote a plain, small one."""
    path = out_dir / "result.json"
    if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_RESULT_BYTES:
        return None
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    return result if isinstance(result, dict) else None


def output(out_dir: Path, name: str, stage: str, max_bytes: int = 4 << 30) -> Path:
    """A file the sandbox wrote, checked to be a regular file inside `out_dir`: never a symlink
    (which would make the worker read its own files, e.g. the registry password)."""
    path = out_dir / name
    if out_dir.is_symlink() or path.is_symlink() or not path.is_file():
        raise ProjectError(f"The {stage} stage's sandbox did not write {name} as a regular file.")
    if path.stat().st_size > max_bytes:
        raise ProjectError(f"The {stage} stage's {name} is over {max_bytes} bytes.")
    return path
