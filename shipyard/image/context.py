"""What goes into a release image.

The runtime image's build context: Dockerfile, hash-locked wheelhouse (the server's
dependencies and the server itself, `shipyard_serving`, as a wheel). Every file in it has the
same modification time, so `COPY` layers depend on content only. The template, the lock and the
server come from the installed packages (package data), never from a checkout.

A release's own layer (the model) and labels are described by `ImageSpec`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

import shipyard_serving
from shipyard.errors import ImageError, StackError

TEMPLATE = files("shipyard.image").joinpath("Dockerfile.template")
SERVER = Path(shipyard_serving.__file__).parent
"""The server package as installed: what the image's wheel of it is built from."""
LOCK = SERVER / "requirements.lock"
SERVER_DIST = "shipyard-serving"
NO_COMMIT_EPOCH = 315532800  # 1980-01-01, for working trees outside git


@dataclass(frozen=True)
class ImageSpec:
    """What goes into the image and its labels: derived from content only."""

    model: str
    fingerprint: str
    onnx_sha256: str
    base: str
    revision: str
    source: str
    epoch: int

    @property
    def created(self) -> str:
        return datetime.fromtimestamp(self.epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def labels(self) -> dict[str, str]:
        """The image's labels (OCI annotations and Shipyard's own)."""
        return {
            "org.opencontainers.image.title": self.model,
            "org.opencontainers.image.revision": self.revision,
            "org.opencontainers.image.version": self.fingerprint,
            "org.opencontainers.image.created": self.created,
            "org.opencontainers.image.source": self.source,
            "ai.shipyard.model.name": self.model,
            "ai.shipyard.onnx.sha256": self.onnx_sha256,
        }


def dockerfile(base: str, epoch: int = NO_COMMIT_EPOCH) -> str:
    """The runtime image's Dockerfile on `base`."""
    return Template(TEMPLATE.read_text()).substitute(base=base, epoch=epoch)


def wheelhouse(cache_dir: Path, lock: Path = LOCK) -> Path:
    """The locked wheels, downloaded on this host (containers need no index), cached by lock hash."""
    target = cache_dir / hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    if (target / ".complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
            "--dest",
            str(target),
            "-r",
            str(lock),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith("ERROR:")), -3)
        errors = " ".join(line.strip() for line in lines[first:])
        raise ImageError(
            f"Downloading the wheels locked in {lock} failed: {errors[-800:]} "
            "Check that the package index is reachable with this host's pip settings (a "
            "docker-pool run gets them from `shipyard stack up --pool docker`), and that the "
            "lock is current."
        )
    (target / ".complete").touch()
    return target


def _sources(root: Path, data: bool) -> list[Path]:
    """A package's files: its modules, and with `data` its package data too (not bytecode)."""
    pattern = "*" if data else "*.py"
    return sorted(
        p
        for p in root.rglob(pattern)
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def server_wheel(cache_dir: Path, epoch: int = NO_COMMIT_EPOCH) -> Path:
    """The server package as a wheel, built once per content (and cached): the image installs it
    hash-checked like its dependencies, instead of copying source onto a PYTHONPATH."""
    return source_wheel(cache_dir, SERVER_DIST, shipyard_serving.__version__, [SERVER], epoch=epoch)


def source_wheel(
    cache_dir: Path,
    dist: str,
    version: str,
    packages: list[Path],
    data: bool = False,
    epoch: int = NO_COMMIT_EPOCH,
) -> Path:
    """A wheel named `dist` of the installed `packages` (their directories), built without an
    index once per content and cached under `cache_dir`; with `data`, their package data too."""
    digest = hashlib.sha256()
    sources = [(root, path) for root in packages for path in _sources(root, data)]
    for root, path in sources:
        name = (Path(root.name) / path.relative_to(root)).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes())
    target = cache_dir / f"{dist}-{digest.hexdigest()[:16]}"
    wheels = sorted(target.glob("*.whl"))
    if wheels:
        return wheels[0]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        for root, path in sources:
            dest = source / root.name / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest)
        names = ", ".join(repr(root.name) for root in packages)
        (source / "pyproject.toml").write_text(
            "[build-system]\nrequires = ['setuptools']\nbuild-backend = 'setuptools.build_meta'\n"
            f"[project]\nname = '{dist}'\nversion = '{version}'\n"
            "requires-python = '>=3.11'\n"
            + (
                f"[tool.setuptools.packages.find]\ninclude = [{names}, "
                + ", ".join(f"'{root.name}.*'" for root in packages)
                + "]\nnamespaces = true\n[tool.setuptools.package-data]\n'*' = ['*']\n"
                if data
                else f"[tool.setuptools]\npackages = [{names}]\n"
            )
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--wheel-dir",
                str(Path(tmp) / "out"),
                str(source),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
        )
        if done.returncode:
            raise ImageError(f"Building the wheel of {dist} failed: {done.stderr.strip()[-800:]}")
        target.mkdir(parents=True, exist_ok=True)
        (built,) = (Path(tmp) / "out").glob("*.whl")
        return Path(shutil.copy(built, target / built.name))


def build_on_base(
    client: Any,
    what: str,
    tag: str,
    base: str,
    files: dict[str, bytes],
    folders: dict[str, list[Path]],
    labels: dict[str, str],
) -> None:
    """`docker build` (with `client`) a context of `files` and `folders` (their files linked,
    not copied, where the filesystem allows), FROM `base` (the build argument BASE), tagged
    `tag`; a failure is a StackError naming `what` with the end of the build's log."""
    from docker.errors import APIError, BuildError, DockerException

    with tempfile.TemporaryDirectory(prefix="shipyard-build-") as tmp:
        context = Path(tmp)
        for name, content in files.items():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            (context / name).write_bytes(content)
        for folder, paths in folders.items():
            (context / folder).mkdir(parents=True, exist_ok=True)
            for path in paths:
                try:
                    os.link(path, context / folder / path.name)
                except OSError:
                    shutil.copy(path, context / folder / path.name)
        try:
            client.images.build(
                path=str(context),
                tag=tag,
                buildargs={"BASE": base},
                labels=labels,
                rm=True,
                forcerm=True,
                pull=False,
            )
        except BuildError as e:
            log = "".join(str(line.get("stream", line.get("error", ""))) for line in e.build_log)
            raise StackError(f"Building the {what} {tag} failed: {e.msg}\n{log[-1500:]}") from e
        except (APIError, DockerException) as e:
            raise StackError(f"The Docker engine refused the {what} build ({tag}): {e}") from e


def locked_requirements(lock: Path, server: Path) -> str:
    """The lock plus the server's wheel, pinned by its sha256: every install is hash-checked."""
    sha = hashlib.sha256(server.read_bytes()).hexdigest()
    pin = f"{SERVER_DIST}=={shipyard_serving.__version__} --hash=sha256:{sha}\n"
    return lock.read_text().rstrip("\n") + "\n" + pin


def runtime_context(
    dockerfile_text: str, requirements: str, wheels: Path, server: Path, out: Path
) -> Path:
    """Write the runtime image's build context into `out` and return it."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "Dockerfile").write_text(dockerfile_text)
    (out / "requirements.lock").write_text(requirements)
    shutil.copytree(wheels, out / "wheels", ignore=shutil.ignore_patterns(".complete"))
    shutil.copy(server, out / "wheels" / server.name)
    for path in [out, *out.rglob("*")]:
        os.utime(path, (NO_COMMIT_EPOCH, NO_COMMIT_EPOCH), follow_symlinks=False)
    return out
